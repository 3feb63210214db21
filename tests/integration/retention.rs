//! Retention: forget by policy, prune what nothing references, and kill -9
//! during prune without losing anything committed.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::util::*;

fn pack_bytes(t: &TestRepo) -> u64 {
    files_under(&t.objects().join("packs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Two restore points of one source whose data differs entirely, and one
/// of another source.
fn repository_with_garbage(t: &TestRepo, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let a = t.path("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("data"), random_bytes(&mut rng, 12_000_000)).unwrap();
    t.backup_at(&a, "a", "2026-01-01T00:00:00Z");
    std::fs::write(a.join("data"), random_bytes(&mut rng, 12_000_000)).unwrap();
    t.backup_at(&a, "a", "2026-01-02T00:00:00Z");
    let b = t.path("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("other"), text_bytes(&mut rng, 3_000_000)).unwrap();
    t.backup(&b, "b");
    (a, b)
}

#[test]
fn forget_then_prune_frees_exactly_the_unreferenced_data() {
    let t = TestRepo::new();
    let (a, b) = repository_with_garbage(&t, 31);
    let dry = t.json(&["forget", "--source", "a", "--keep-last", "1", "--dry-run"]);
    assert_eq!(
        dry.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false)
            .count(),
        1
    );
    assert_eq!(
        t.json(&["list"]).as_array().unwrap().len(),
        3,
        "dry run removed something"
    );

    let decisions = t.json(&["forget", "--source", "a", "--keep-last", "1"]);
    let removed: Vec<_> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["time"], "2026-01-01T00:00:00Z");
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 2);

    let before = pack_bytes(&t);
    let report = t.json(&["prune"]);
    let after = pack_bytes(&t);
    assert!(
        report["bytes_freed"].as_u64().unwrap() >= 11_000_000,
        "{report}"
    );
    assert!(
        before - after >= 11_000_000,
        "packs shrank by {}",
        before - after
    );
    t.ok(&["check", "--read-data"]);
    for (source, dir) in [("a", &a), ("b", &b)] {
        let target = t.path(&format!("restore-{source}"));
        t.restore(&format!("{source}@latest"), &target);
        assert_same_tree(dir, &under(&target, dir));
    }
    // A second prune finds nothing to do.
    let again = t.json(&["prune"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    let out = t.run(&["forget"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "forget without a policy must refuse"
    );
}

#[test]
fn kill_9_during_prune_loses_nothing() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(32);
    let (a, b) = repository_with_garbage(&t, 33);
    t.ok(&["forget", "--source", "a", "--keep-last", "1"]);
    for round in 0..6 {
        let mut child = t
            .command(&["prune", "--repack-below", "0.99"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..400)));
        let _ = child.kill();
        let _ = child.wait();
        let check = t.run(&["check"]);
        assert!(
            check.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        for (source, dir) in [("a", &a), ("b", &b)] {
            let target = t.path(&format!("r{round}-{source}"));
            t.restore(&format!("{source}@latest"), &target);
            assert_same_tree(dir, &under(&target, dir));
            std::fs::remove_dir_all(&target).unwrap();
        }
    }
    t.ok(&["prune"]);
    t.ok(&["check", "--read-data"]);
}
