//! Warm and cold tiers: old restore points move to cold, stay browsable,
//! refuse data reads until thawed, read byte for byte after thaw, and lose
//! nothing to kill -9 during tier run or thaw.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::util::*;

struct Tiered {
    t: TestRepo,
    src: std::path::PathBuf,
    old_copy: std::path::PathBuf,
}

/// A repository with a cold tier, an old restore point (400 days ago) and
/// a new one sharing a file with it.
fn tiered(seed: u64) -> Tiered {
    let t = TestRepo::with_cold();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("shared"), random_bytes(&mut rng, 4_000_000)).unwrap();
    std::fs::write(src.join("old-only"), random_bytes(&mut rng, 3_000_000)).unwrap();
    t.backup_at(&src, "s", &time_days_ago(400));
    let old_copy = t.path("old-copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&old_copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(src.join("old-only")).unwrap();
    std::fs::write(src.join("new-only"), random_bytes(&mut rng, 2_000_000)).unwrap();
    t.backup(&src, "s");
    Tiered { t, src, old_copy }
}

fn old_selector(t: &TestRepo) -> String {
    t.json(&["list"])[0]["id"].as_str().unwrap()[..12].to_string()
}

#[test]
fn old_restore_points_go_cold_and_thaw_back() {
    let Tiered { t, src, old_copy } = tiered(41);
    let old = old_selector(&t);
    let report = t.json(&["tier", "run"]);
    assert_eq!(report["restore_points_cold"], 1, "{report}");
    assert!(
        report["bytes_moved"].as_u64().unwrap() >= 3_000_000,
        "{report}"
    );
    assert!(
        report["bytes_moved"].as_u64().unwrap() < 4_000_000,
        "shared data must stay warm: {report}"
    );
    let status = t.json(&["tier", "status"]);
    assert!(status["cold_packs"].as_u64().unwrap() >= 1, "{status}");

    // Browsing needs no thaw; reading data does, and says so.
    let ls = t.ok(&["ls", &old, src.to_str().unwrap()]);
    assert!(ls.contains("old-only"), "{ls}");
    let out = t.run(&[
        "restore",
        "files",
        &old,
        "--to",
        t.path("r1").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cold tier") && err.contains("strata thaw"),
        "{err}"
    );
    // The new restore point, sharing the warm file, restores as usual.
    let r2 = t.path("r2");
    t.restore("s@latest", &r2);
    assert_same_tree(&src, &under(&r2, &src));

    // Thaw: plan, notification, byte-identical reads.
    let plan = t.json(&["thaw", &old, "--plan"]);
    assert!(plan["bytes"].as_u64().unwrap() > 0, "{plan}");
    // The notifier runs from argv, after the writer lock is released: a
    // backup it starts itself succeeds.
    let hook_out = t.path("hook.txt");
    let hook = write_script(
        &t.path("hook.sh"),
        &format!(
            "echo \"$STRATA_RESTORE_POINT $STRATA_THAW_RESULT\" > \"$1\"\n\
             {} --repo {} backup files {} --source during-notify\n\
             echo \"backup status $?\" >> \"$1\"\n",
            strata_bin(),
            t.repo.display(),
            src.display()
        ),
    );
    let thawed = if bucket_backend() {
        // A bucket's configuration chooses no program: the command line does.
        let hook_out = hook_out.to_str().unwrap();
        t.json(&["thaw", &old, "--notify", &hook, "--notify-arg", hook_out])
    } else {
        set_notify_command(&t, serde_json::json!([hook, hook_out]), None);
        t.json(&["thaw", &old])
    };
    assert!(thawed["packs_fetched"].as_u64().unwrap() >= 1, "{thawed}");
    let hook = std::fs::read_to_string(&hook_out).unwrap();
    assert!(
        hook.starts_with(&old) && hook.contains(" ok\n") && hook.ends_with("backup status 0\n"),
        "{hook}"
    );
    let r3 = t.path("r3");
    t.restore(&old, &r3);
    assert_same_tree(&old_copy, &under(&r3, &src));
    t.ok(&["check", "--read-data"]);

    // An expired thaw copy is removed by the next tier run.
    t.ok(&["thaw", &old, "--days", "0"]);
    let report = t.json(&["tier", "run"]);
    assert!(
        report["thaw_copies_expired"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let out = t.run(&[
        "restore",
        "files",
        &old,
        "--to",
        t.path("r4").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // The index can be rebuilt with cold packs in it.
    std::fs::remove_dir_all(t.state().join("index")).unwrap();
    t.ok(&["repair", "index"]);
    t.ok(&["thaw", &old]);
    let r5 = t.path("r5");
    t.restore(&old, &r5);
    assert_same_tree(&old_copy, &under(&r5, &src));

    // Forgetting the cold restore point lets prune empty the cold tier.
    t.ok(&["forget", "--keep-last", "1"]);
    let pruned = t.json(&["prune"]);
    assert!(pruned["packs_deleted"].as_u64().unwrap() >= 1, "{pruned}");
    assert_eq!(t.json(&["tier", "status"])["cold_packs"], 0);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn mount_browses_cold_restore_points_and_refuses_their_data() {
    if !is_root() || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let Tiered { t, src, .. } = tiered(44);
    t.ok(&["tier", "run"]);
    let mnt = t.path("mnt");
    let _guard = crate::mount::MountGuard::mount(&t, &mnt);
    let points: Vec<_> = std::fs::read_dir(mnt.join("files/s"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut times: Vec<_> = points.into_iter().filter(|n| n != "latest").collect();
    times.sort();
    let old_dir = under(&mnt.join("files/s").join(&times[0]), &src);
    // Metadata stays warm: listing and stat work without a thaw.
    assert_eq!(
        std::fs::metadata(old_dir.join("old-only")).unwrap().len(),
        3_000_000
    );
    let err = std::fs::read(old_dir.join("old-only")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Data shared with a warm restore point reads as usual.
    assert_eq!(
        std::fs::read(old_dir.join("shared")).unwrap(),
        std::fs::read(src.join("shared")).unwrap()
    );
}

#[test]
fn new_backups_store_cold_data_warm_again() {
    let Tiered { t, src, old_copy } = tiered(45);
    t.ok(&["tier", "run"]);
    std::fs::copy(old_copy.join("old-only"), src.join("old-only")).unwrap();
    let summary = t.backup(&src, "s");
    assert!(
        summary["bytes_new"].as_u64().unwrap() >= 3_000_000,
        "cold data must be stored warm again: {summary}"
    );
    let restored = t.path("restored");
    t.restore("s@latest", &restored);
    assert_same_tree(&src, &under(&restored, &src));
    t.ok(&["check", "--read-data"]);
}

#[test]
fn kill_9_during_tier_run_and_thaw_loses_nothing() {
    let Tiered { t, src, old_copy } = tiered(42);
    let old = old_selector(&t);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(43);
    let verify = |t: &TestRepo, round: usize| {
        let check = t.run(&["check"]);
        assert!(
            check.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let r = t.path(&format!("new-{round}"));
        t.restore("s@latest", &r);
        assert_same_tree(&src, &under(&r, &src));
        std::fs::remove_dir_all(&r).unwrap();
    };
    for round in 0..5 {
        let mut child = t
            .command(&["tier", "run"])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..300)));
        let _ = child.kill();
        let _ = child.wait();
        verify(&t, round);
    }
    t.ok(&["tier", "run"]);
    for round in 5..10 {
        let mut child = t
            .command(&["thaw", &old])
            .env("STRATA_COLD_DELAY_MS", "50")
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..300)));
        let _ = child.kill();
        let _ = child.wait();
        verify(&t, round);
    }
    t.ok(&["thaw", &old]);
    let r = t.path("old");
    t.restore(&old, &r);
    assert_same_tree(&old_copy, &under(&r, &src));
    t.ok(&["check", "--read-data"]);
}

/// A file whose first chunks stay warm (shared with a new restore point)
/// but whose later chunks went cold is refused before anything is written.
#[test]
fn partly_cold_files_are_refused_before_writing() {
    let Tiered { t, src, old_copy } = tiered(46);
    // The new restore point shares only the beginning of old-only: more
    // than the largest chunk (2 MiB), so that whatever the repository's
    // chunker seed, old-only's first chunk lies wholly inside it.
    let old_only = std::fs::read(old_copy.join("old-only")).unwrap();
    let prefix_len = 2_200_000;
    std::fs::write(src.join("prefix"), &old_only[..prefix_len]).unwrap();
    let shared = t.backup(&src, "s");
    // Precondition: the prefix really shares old-only's first chunk(s),
    // which therefore stay warm while the rest of old-only goes cold.
    assert!(
        shared["bytes_new"].as_u64().unwrap() < prefix_len as u64,
        "prefix shares no chunk: {shared}"
    );
    t.ok(&["tier", "run"]);
    let old = old_selector(&t);
    let target = t.path("target");
    let out = t.run(&["restore", "files", &old, "--to", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cold tier"));
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "nothing may be written"
    );
}

fn set_notify_command(t: &TestRepo, argv: serde_json::Value, timeout_secs: Option<u64>) {
    let config_path = t.repo.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["tiers"]["notify_command"] = argv;
    if let Some(secs) = timeout_secs {
        config["tiers"]["notify_timeout_secs"] = serde_json::json!(secs);
    }
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// A notifier that hangs is killed, with what it started, after its
/// timeout; one given as a shell command line is not run through a shell;
/// and one in a `config.json` that others may write is not run at all.
#[test]
fn thaw_notification_is_bounded_and_never_a_shell_line() {
    if directory_only("tiers.notify_command in a local config.json") {
        return;
    }
    let Tiered { t, .. } = tiered(45);
    t.ok(&["tier", "run", "--warm-days", "30"]);
    let old = t.json(&["list"])[0]["id"].as_str().unwrap().to_string();

    let pid_file = t.path("sleeper.pid");
    let hang = write_script(&t.path("hang.sh"), "sleep 300 &\necho $! > \"$1\"\nwait\n");
    set_notify_command(&t, serde_json::json!([hang, pid_file]), Some(1));
    let started = std::time::Instant::now();
    t.ok(&["thaw", &old]);
    assert!(started.elapsed() < Duration::from_secs(60));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    // SIGKILL is delivered asynchronously: give the kernel a moment.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    for _ in 0..100 {
        if gone() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone(), "the notifier's child {pid} outlived its timeout");

    let marker = t.path("shell-ran");
    set_notify_command(
        &t,
        serde_json::json!(format!("touch {}", marker.display())),
        None,
    );
    t.ok(&["thaw", &old]);
    assert!(!marker.exists(), "a command line ran through a shell");

    let touched = t.path("touched");
    let touch = write_script(&t.path("touch.sh"), "touch \"$1\"\n");
    set_notify_command(&t, serde_json::json!([touch, touched]), None);
    let config_path = t.repo.join("config.json");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    t.ok(&["thaw", &old]);
    assert!(
        !touched.exists(),
        "ran a notifier from a world-writable config"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    t.ok(&["thaw", &old]);
    assert!(touched.exists(), "the notifier did not run");
}

#[test]
fn a_cold_tier_in_the_repository_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let out = strata_command()
        .arg("--repo")
        .arg(&repo)
        .args(init_args())
        .arg("--cold")
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("is the repository's own directory"),
        "{}",
        stderr_of(&out)
    );
    assert!(!repo.join("config.json").exists(), "nothing was created");
}
