//! Damaged repositories: `repair index` salvages what still verifies, sets
//! damaged manifests aside, keeps tiers and thaws; `check` and `prune`
//! name damage instead of failing forever; long commands stop on SIGTERM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::SeedableRng;

use crate::util::*;

fn pack_files(t: &TestRepo) -> BTreeSet<PathBuf> {
    // A bucket has no `packs/` before its first pack.
    let packs = t.objects().join("packs");
    if !packs.exists() {
        return BTreeSet::new();
    }
    files_under(&packs).into_iter().collect()
}

/// Backs up `dir` and returns the largest pack the backup wrote: its data
/// pack (trees go to a separate, smaller metadata pack).
fn backup_data_pack(t: &TestRepo, dir: &Path, source: &str) -> PathBuf {
    let before = pack_files(t);
    t.backup(dir, source);
    pack_files(t)
        .difference(&before)
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .cloned()
        .expect("the backup wrote a pack")
}

/// `count` compressible files, each below the chunker's minimum, so each
/// is one chunk stored as one zstd frame.
fn text_files(dir: &Path, count: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        std::fs::write(dir.join(format!("f{i}")), text_bytes(&mut rng, 60_000)).unwrap();
    }
}

fn pack_stem(path: &Path) -> String {
    path.file_stem().unwrap().to_str().unwrap().to_string()
}

/// Runs `strata repair index --json`; returns its exit code and report.
fn repair(t: &TestRepo) -> (Option<i32>, serde_json::Value) {
    let out = t.run(&["repair", "index", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "repair printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn salvaged_of<'a>(report: &'a serde_json::Value, pack: &Path) -> &'a serde_json::Value {
    report["salvaged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pack"] == pack_stem(pack).as_str())
        .unwrap_or_else(|| panic!("{} not in {report}", pack.display()))
}

/// How many files of `src` restore one by one, byte for byte.
fn restorable_files(t: &TestRepo, selector: &str, src: &Path) -> usize {
    let mut restored = 0;
    for (i, file) in files_under(src).iter().enumerate() {
        let target = t.path(&format!("one-by-one-{selector}-{i}").replace('@', "-"));
        let out = t.run(&[
            "restore",
            "files",
            selector,
            file.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
        ]);
        let copy = under(&target, file);
        if out.status.success() && std::fs::read(&copy).ok() == Some(std::fs::read(file).unwrap()) {
            restored += 1;
        }
    }
    restored
}

fn trailer_start(bytes: &[u8]) -> usize {
    let count = u32::from_le_bytes(bytes[bytes.len() - 48..][..4].try_into().unwrap()) as usize;
    bytes.len() - 48 - 56 * count
}

#[test]
fn repair_salvages_every_chunk_that_verifies_and_prune_runs_after() {
    let t = TestRepo::new();
    let a = t.path("a");
    let b = t.path("b");
    text_files(&a, 8, 91);
    text_files(&b, 8, 92);
    let pack_a = backup_data_pack(&t, &a, "a");
    let pack_b = backup_data_pack(&t, &b, "b");

    // One flipped byte in a's trailer (the first entry's id); b's pack cut
    // in the middle of its data.
    let mut bytes = std::fs::read(&pack_a).unwrap();
    let at = trailer_start(&bytes);
    bytes[at] ^= 0x01;
    std::fs::write(&pack_a, &bytes).unwrap();
    let bytes = std::fs::read(&pack_b).unwrap();
    std::fs::write(&pack_b, &bytes[..bytes.len() / 2]).unwrap();

    // Prune leaves packs it cannot read as they are.
    t.ok(&["prune"]);
    assert!(pack_a.is_file() && pack_b.is_file());

    let (code, report) = repair(&t);
    assert_eq!(code, Some(3), "b lost data: {report}");
    assert_eq!(salvaged_of(&report, &pack_a)["chunks_salvaged"], 8);
    let b_salvaged = salvaged_of(&report, &pack_b)["chunks_salvaged"]
        .as_u64()
        .unwrap();
    assert!((1..8).contains(&b_salvaged), "{report}");
    let affected = report["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{report}");
    assert!(affected[0].as_str().unwrap().contains("(b at "), "{report}");
    assert_eq!(files_under(&t.objects().join("damaged/packs")).len(), 2);

    // All of a restores; of b, exactly the files whose chunk was salvaged.
    let target = t.path("restored-a");
    t.restore("a@latest", &target);
    assert_same_tree(&a, &under(&target, &a));
    assert_eq!(restorable_files(&t, "b@latest", &b), b_salvaged as usize);
    // A whole restore of b restores those same files and names the rest.
    let whole_b = t.path("restored-b");
    let out = t.run(&[
        "restore",
        "files",
        "b@latest",
        "--to",
        whole_b.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_under(&under(&whole_b, &b)).len(), b_salvaged as usize);

    // The repository works again: prune runs and keeps the data, check
    // names only b's missing files.
    t.ok(&["prune"]);
    let target = t.path("restored-a-after-prune");
    t.restore("a@latest", &target);
    assert_same_tree(&a, &under(&target, &a));
    let check = t.run(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(4), "{text}");
    assert!(!text.contains("trailer checksum"), "{text}");
    assert!(text.contains("damaged objects set aside"), "{text}");
}

#[test]
fn repair_without_an_index_finds_the_compressed_chunks_of_a_cut_pack() {
    let t = TestRepo::new();
    let a = t.path("a");
    text_files(&a, 8, 93);
    let pack = backup_data_pack(&t, &a, "a");
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() * 6 / 10]).unwrap();
    std::fs::remove_dir_all(t.state().join("index")).unwrap();

    let (code, report) = repair(&t);
    assert_eq!(code, Some(3), "{report}");
    let salvaged = salvaged_of(&report, &pack)["chunks_salvaged"]
        .as_u64()
        .unwrap();
    if encrypted() {
        // Sealed chunks show no zstd frames: without a trailer or an index
        // nothing delimits them, and they are reported, not guessed at.
        assert_eq!(salvaged, 0, "{report}");
        assert!(salvaged_of(&report, &pack)["bytes_unaccounted"].as_u64().unwrap() > 0);
        return;
    }
    assert!(salvaged >= 4, "{report}");
    assert_eq!(restorable_files(&t, "a@latest", &a), salvaged as usize);
}

fn manifest_ids(t: &TestRepo) -> Vec<(String, String)> {
    t.json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|rp| {
            (
                rp["source"].as_str().unwrap().to_string(),
                rp["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_damaged_manifest_is_named_by_check_and_set_aside_by_repair() {
    let t = TestRepo::new();
    let src = t.path("src");
    text_files(&src, 3, 94);
    for source in ["one", "two", "three"] {
        t.backup(&src, source);
    }
    let ids = manifest_ids(&t);
    let id_of = |source: &str| ids.iter().find(|(s, _)| s == source).unwrap().1.clone();
    let (one, two) = (id_of("one"), id_of("two"));
    let path_one = t.objects().join("manifests").join(&one);
    let mut bytes = std::fs::read(&path_one).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path_one, &bytes).unwrap();
    let path_two = t.objects().join("manifests").join(&two);
    let bytes = std::fs::read(&path_two).unwrap();
    std::fs::write(&path_two, &bytes[..bytes.len() / 2]).unwrap();

    for args in [&["check"][..], &["check", "--read-data"][..]] {
        let out = t.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {text}");
        for id in [&one, &two] {
            assert!(
                text.contains(&format!("manifest manifests/{id}")),
                "{args:?}: {text}"
            );
        }
    }
    // Prune would see the data only these manifests use as garbage.
    let out = t.run(&["prune"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        (err.contains(&format!("manifests/{one}")) || err.contains(&format!("manifests/{two}")))
            && err.contains("strata repair index"),
        "{err}"
    );

    let out = t.run(&["repair", "index"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    for id in [&one, &two] {
        assert!(
            text.contains(&format!("damaged manifest manifests/{id}")),
            "{text}"
        );
        assert!(t.objects().join("damaged/manifests").join(id).is_file());
    }

    // Every other restore point works: list, restore, backup, check, prune.
    assert_eq!(manifest_ids(&t), vec![("three".into(), id_of("three"))]);
    let target = t.path("restored");
    t.restore("three@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    t.backup(&src, "four");
    t.ok(&["check", "--read-data"]);
    t.ok(&["prune"]);
}

#[test]
fn repair_keeps_warm_data_warm_and_live_thaws() {
    let t = TestRepo::with_cold();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(95);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept"), random_bytes(&mut rng, 3_000_000)).unwrap();
    std::fs::write(src.join("old-only"), random_bytes(&mut rng, 2_000_000)).unwrap();
    let old_src = t.path("old-src");
    std::fs::create_dir_all(&old_src).unwrap();
    for name in ["kept", "old-only"] {
        std::fs::copy(src.join(name), old_src.join(name)).unwrap();
    }
    t.backup_at(&src, "s", &time_days_ago(400));
    t.ok(&["tier", "run"]);
    // The same data backed up again is stored warm again.
    std::fs::remove_file(src.join("old-only")).unwrap();
    t.backup(&src, "s");

    let (code, report) = repair(&t);
    assert_eq!(code, Some(0), "{report}");
    let target = t.path("newest");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    t.ok(&["prune"]);
    let target = t.path("newest-after-prune");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    t.ok(&["check", "--read-data"]);

    // A thaw made before a repair is still in force after it.
    let old = t.json(&["list"])[0]["id"].as_str().unwrap()[..12].to_string();
    t.ok(&["thaw", &old]);
    let (code, report) = repair(&t);
    assert_eq!(code, Some(0), "{report}");
    assert!(report["thawed_packs"].as_u64().unwrap() >= 1, "{report}");
    let status = t.json(&["tier", "status"]);
    assert_eq!(status["thawed"].as_array().unwrap().len(), 1, "{status}");
    let target = t.path("old");
    t.restore(&old, &target);
    let restored = under(&target, &src);
    for name in ["kept", "old-only"] {
        assert_eq!(
            std::fs::read(restored.join(name)).unwrap(),
            std::fs::read(old_src.join(name)).unwrap()
        );
    }
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_stops_cleanly_on_sigterm() {
    let t = TestRepo::with_cold();
    let src = t.path("src");
    text_files(&src, 4, 96);
    t.backup_at(&src, "s", &time_days_ago(400));
    t.ok(&["tier", "run"]);
    // Every cold-tier request waits, so the check takes many seconds.
    let mut child = ChildGuard(
        t.command(&["check", "--read-data"])
            .env("STRATA_COLD_DELAY_MS", "1500")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Only a guard against a hang, not a timing assertion.
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = child.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.expect("check ignored SIGTERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // Nothing is left locked or half-done.
    t.backup(&src, "s");
    t.ok(&["check"]);
}
