//! Incremental backups: unchanged files are not read, renamed data is not
//! stored again, and files that could not be read are retried.

use std::os::unix::fs::PermissionsExt;

use rand::SeedableRng;

use crate::util::*;

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn unchanged_files_are_not_read_again() {
    let t = TestRepo::new();
    let src = t.path("src");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    std::fs::create_dir_all(src.join("keep")).unwrap();
    for i in 0..20 {
        std::fs::write(
            src.join(format!("keep/file{i}")),
            random_bytes(&mut rng, 200_000),
        )
        .unwrap();
    }
    std::fs::write(src.join("change-me"), random_bytes(&mut rng, 300_000)).unwrap();
    let first = t.backup(&src, "s");
    assert_eq!(u(&first, "bytes_read"), 20 * 200_000 + 300_000);

    std::fs::write(src.join("change-me"), random_bytes(&mut rng, 123_456)).unwrap();
    std::fs::write(src.join("new-file"), random_bytes(&mut rng, 7_777)).unwrap();
    let second = t.backup(&src, "s");
    assert_eq!(
        u(&second, "bytes_read"),
        123_456 + 7_777,
        "only changed and new files are read"
    );
    assert_eq!(u(&second, "bytes_total"), 20 * 200_000 + 123_456 + 7_777);

    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
}

#[test]
fn renamed_directory_is_deduplicated() {
    let t = TestRepo::new();
    let src = t.path("src");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(10);
    std::fs::create_dir_all(src.join("project")).unwrap();
    for i in 0..10 {
        std::fs::write(
            src.join(format!("project/part{i}")),
            random_bytes(&mut rng, 1_000_000),
        )
        .unwrap();
    }
    let first = t.backup(&src, "s");
    assert!(u(&first, "bytes_new") >= 10_000_000);

    std::fs::rename(src.join("project"), src.join("project-renamed")).unwrap();
    let second = t.backup(&src, "s");
    // A rename changes paths, so files are read, but no data is stored:
    // only the changed parent directory's tree is new.
    assert_eq!(u(&second, "bytes_read"), 10_000_000);
    assert!(
        u(&second, "bytes_new") < 16_384,
        "stored {} new bytes",
        u(&second, "bytes_new")
    );
}

#[test]
fn unreadable_files_are_missed_then_retried() {
    if !is_root() {
        eprintln!("skipped: needs root to run the backup as an unprivileged user");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"top secret").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // Let user `nobody` into the test directory and the repository.
    for path in [t.dir.path().to_path_buf(), src.clone()] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(t.state())
        .status()
        .unwrap();
    assert!(chown.success());

    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            strata_bin(),
        ])
        .args(args)
        .env("STRATA_REPO", &t.repo)
        .envs(t.env.iter().map(|(k, v)| (k, v)))
        .env("STRATA_PASSWORD", TEST_PASSWORD)
        .env("RUST_LOG", "error");
        cmd.output().unwrap()
    };
    let out = as_nobody(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--source",
        "s",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial backup exits with 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let missed = summary["missed"].as_array().unwrap();
    assert_eq!(missed.len(), 1);
    assert!(missed[0]["path"].as_str().unwrap().ends_with("/secret"));
    assert_eq!(missed[0]["reason"], "permission denied");
    let shown = t.json(&["show", "s@latest"]);
    assert_eq!(shown["missed"].as_array().unwrap().len(), 1);

    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--source",
        "s",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["bytes_read"], 10,
        "only the previously missed file is read"
    );
    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_eq!(
        std::fs::read(under(&target, &src).join("secret")).unwrap(),
        b"top secret"
    );
}
