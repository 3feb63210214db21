//! Repositories in a bucket, against a real S3-compatible server (s3s-fs,
//! which checks request signatures) started by each test on 127.0.0.1
//! and stopped by its guard, also when the test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use strata::storage::{BucketStore, ObjectStore};

use crate::mount::{fuse_available, MountGuard};
use crate::util::*;

pub use crate::servers::S3Server;
use crate::servers::S3S_SECRET;

/// What these tests ask of an s3s-fs server beyond starting and stopping
/// it (`crate::servers`): its objects as files, and how to reach it.
impl S3Server {
    /// The files s3s-fs keeps for objects below `prefix` of `bucket`.
    fn objects(&self, bucket: &str, prefix: &str) -> Vec<PathBuf> {
        files_under(&self.objects_dir(bucket, prefix))
    }

    /// The environment a command needs to reach the server with the
    /// right credentials.
    pub fn client_env(&self) -> Vec<(String, String)> {
        self.env(S3S_SECRET)
    }

    /// The store at `url`, for a test that looks at objects directly.
    pub fn store(&self, url: &str, staging: &Path) -> BucketStore {
        crate::servers::bucket_store(url, &self.access(), staging, None)
    }
}

/// A test repository at `url` in `server`, its state in the test's
/// temporary directory.
fn bucket_repo(server: &S3Server, url: &str) -> TestRepo {
    bucket_repo_with(server, url, &[])
}

fn bucket_repo_with(server: &S3Server, url: &str, init: &[&str]) -> TestRepo {
    TestRepo::in_bucket(server.client_env(), url, init)
}

#[test]
fn a_bucket_repository_backs_up_restores_checks_and_mounts() {
    let Some(server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo(&server, "s3://backups/site-a");
    let src = backs_up_restores_and_checks(&t, 31, 5 << 20);
    assert!(t.state().join("index").is_dir(), "the index lives in the state directory");
    assert!(!t.path("s3:").exists());
    mount_reads_the_latest_backup(&t, &src);
}

/// A tree with a file of `extra` random bytes backed up twice to `t` (the
/// second run incremental), restored byte for byte and checked; returns
/// the tree.
pub fn backs_up_restores_and_checks(t: &TestRepo, seed: u64, extra: usize) -> PathBuf {
    let src = t.path("src");
    make_full_tree(&src, seed);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    std::fs::write(src.join("big.bin"), random_bytes(&mut rng, extra)).unwrap();
    t.backup(&src, "web");
    std::fs::write(src.join("added.txt"), b"second run").unwrap();
    let second = t.backup(&src, "web");
    assert!(second["bytes_read"].as_u64().unwrap() < 1 << 20, "not incremental: {second}");
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 2);

    let target = t.path("restored");
    t.restore("web@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    t.ok(&["check", "--read-data"]);
    src
}

/// The latest backup of `src` (by [`backs_up_restores_and_checks`]), read
/// through a mount, where FUSE is available.
pub fn mount_reads_the_latest_backup(t: &TestRepo, src: &Path) {
    if !fuse_available() {
        return;
    }
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(t, &mnt);
    let mounted = under(&mnt.join("files/web/latest"), src);
    assert_eq!(std::fs::read(mounted.join("big.bin")).unwrap(), std::fs::read(src.join("big.bin")).unwrap());
    assert_eq!(std::fs::read(mounted.join("added.txt")).unwrap(), b"second run");
}

#[test]
fn a_new_machine_rebuilds_its_index_from_the_bucket_alone() {
    let Some(server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo(&server, "s3://backups/shared");
    let src = t.path("src");
    make_full_tree(&src, 32);
    t.backup(&src, "db");
    std::fs::remove_dir_all(t.state()).unwrap();

    let out = t.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("strata repair index"), "{}", stderr_of(&out));
    t.ok(&["repair", "index"]);
    let target = t.path("restored");
    t.restore("db@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
}

#[test]
fn the_lock_object_keeps_a_second_writer_out_and_a_stale_one_is_reported() {
    let Some(server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo(&server, "s3://backups/locked");
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let staging = t.path("probe-staging");
    let store = server.store("s3://backups/locked", &staging);
    let lock = |expires: i64| {
        let record = serde_json::json!({
            "token": "elsewhere",
            "holder": "`strata backup files` (pid 7 on other-host)",
            "since": "2026-01-01T00:00:00Z",
            "expires": expires,
        });
        store.put("lock", record.to_string().as_bytes()).unwrap();
    };

    lock(i64::MAX / 2);
    let out = t.run(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("busy") && err.contains("other-host"), "{err}");
    t.ok(&["list"]);

    lock(1);
    let err = stderr_of(&t.run(&["backup", "files", src.to_str().unwrap()]));
    assert!(err.contains("stale") && err.contains("strata unlock"), "{err}");
    assert!(t.ok(&["unlock"]).contains("other-host"));
    t.backup(&src, "s");
    assert!(store.get("lock").unwrap_err().is_not_found(), "the writer removed its lock");
}

#[test]
fn wrong_credentials_are_a_clear_error_before_any_work() {
    let Some(server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo(&server, "s3://backups/creds");
    let wrong_secret = "not-the-secret-at-all";
    let mut cmd = t.command(&["list"]);
    cmd.envs(server.env(wrong_secret));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("s3://backups/creds/config.json"), "{err}");
    assert!(err.contains("SignatureDoesNotMatch") || err.contains("PermissionDenied"), "{err}");
    assert!(!err.contains(wrong_secret), "the secret in a message: {err}");

    let fresh = tempfile::tempdir().unwrap();
    let out = strata_command()
        .args(["--repo", "s3://backups/elsewhere", "--state"])
        .arg(fresh.path().join("state"))
        .args(init_args())
        .envs(server.env(wrong_secret))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(!fresh.path().join("state").exists(), "init wrote state before reaching the bucket");
}

#[test]
fn old_restore_points_go_to_a_cold_bucket_and_thaw_back() {
    let Some(server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo_with(&server, "s3://backups/warm", &["--cold", "s3://backups/cold"]);
    let staging = t.path("probe-staging");
    let cold = server.store("s3://backups/cold", &staging);
    old_restore_points_go_cold_and_thaw_back(&t, &cold, 33);
}

/// A restore point of 200 days ago and a young one in `t`; `tier run`
/// moves the old one's data to `cold`, where restores refuse it until
/// `thaw` brings it back, byte for byte; the young one stays warm.
pub fn old_restore_points_go_cold_and_thaw_back(t: &TestRepo, cold: &dyn ObjectStore, seed: u64) {
    let (src, old, old_data) = old_and_young_backups(t, seed);
    let report = t.json(&["tier", "run"]);
    assert_eq!(report["restore_points_cold"], 1, "{report}");
    assert!(!cold.list_all("packs/").unwrap().is_empty(), "no pack in the cold bucket");
    let target = t.path("before-thaw");
    let out = t.run(&["restore", "files", &old, "--to", target.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "a cold restore point restored without a thaw");

    t.ok(&["thaw", &old]);
    let target = t.path("thawed");
    t.restore(&old, &target);
    assert_eq!(std::fs::read(under(&target, &src).join("old-only")).unwrap(), old_data);
    let target = t.path("young");
    t.restore("s@latest", &target);
    assert_eq!(std::fs::read(under(&target, &src).join("new-only")).unwrap(), b"young");
}

/// Two restore points of source `s` in `t`: one 200 days old holding
/// `old-only` (3 MB no other restore point has), and a young one holding
/// `new-only`. Returns the source, the old restore point and its data.
pub fn old_and_young_backups(t: &TestRepo, seed: u64) -> (PathBuf, String, Vec<u8>) {
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let old_data = random_bytes(&mut rng, 3_000_000);
    std::fs::write(src.join("old-only"), &old_data).unwrap();
    let old = t.backup_at(&src, "s", &time_days_ago(200));
    std::fs::remove_file(src.join("old-only")).unwrap();
    std::fs::write(src.join("new-only"), b"young").unwrap();
    t.backup(&src, "s");
    (src, old, old_data)
}

/// The server dies while a backup uploads its packs: the backup fails with
/// an error naming the bucket, no restore point refers to what did not
/// arrive, the restore point made before survives, and after a restart
/// the next backup (taking over the lock its dead predecessor left on
/// this host) completes.
#[test]
fn a_server_killed_during_a_backup_loses_nothing_and_the_next_run_completes() {
    let Some(mut server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo(&server, "s3://backups/faults");
    let first = t.path("first");
    make_full_tree(&first, 34);
    t.backup(&first, "first");
    let packs_before = server.objects("backups", "faults/packs").len();

    let src = t.path("big");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(34);
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(&mut rng, 4 << 20)).unwrap();
    }
    let backup = spawn_with_one_retry(&t, &["backup", "files", src.to_str().unwrap(), "--source", "big"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.objects("backups", "faults/packs").len() == packs_before {
        assert!(Instant::now() < deadline, "no pack was uploaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let out = backup.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "the backup succeeded without its server");
    let err = stderr_of(&out);
    assert!(err.contains("s3://backups/faults"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    server.restart();
    nothing_committed_was_lost_and_a_retry_completes(&t, &first, &src);
}

/// After a server died during a backup of `big` and came back: only the
/// restore point of `first` is listed and restores whole, and the backup
/// run again completes and verifies.
pub fn nothing_committed_was_lost_and_a_retry_completes(t: &TestRepo, first: &Path, big: &Path) {
    let listed = t.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let target = t.path("first-restored");
    t.restore("first@latest", &target);
    assert_same_tree(first, &under(&target, first));
    t.backup(big, "big");
    let target = t.path("big-restored");
    t.restore("big@latest", &target);
    assert_same_tree(big, &under(&target, big));
    t.ok(&["check", "--read-data"]);
}

/// Runs `args` with one retry per request (a dead server fails the run
/// in seconds), kills the server as soon as `started` sees the run's
/// first writes, and returns the run's output.
fn kill_server_during(
    server: &mut S3Server,
    t: &TestRepo,
    args: &[&str],
    started: impl Fn(&S3Server) -> bool,
) -> std::process::Output {
    let run = spawn_with_one_retry(t, args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started(server) {
        assert!(Instant::now() < deadline, "{args:?} wrote nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let out = run.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{args:?} succeeded without its server");
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
    out
}

/// How many objects s3s-fs holds below `prefix` of `bucket` (none when
/// the prefix does not exist yet).
fn object_count(server: &S3Server, bucket: &str, prefix: &str) -> usize {
    if server.objects_dir(bucket, prefix).exists() {
        server.objects(bucket, prefix).len()
    } else {
        0
    }
}

/// The server dies while `tier run` moves packs to the cold bucket, and
/// again while `thaw` copies them back: each run fails cleanly, nothing
/// is lost, and the same command after a restart completes.
#[test]
fn a_server_killed_during_tier_run_and_thaw_loses_nothing() {
    let Some(mut server) = S3Server::start("backups") else {
        return;
    };
    let t = bucket_repo_with(&server, "s3://backups/warm", &["--cold", "s3://backups/cold"]);
    // Small packs, so that both runs make many requests.
    let store = server.store("s3://backups/warm", &t.path("probe-staging"));
    let mut config: serde_json::Value = serde_json::from_slice(&store.get("config.json").unwrap()).unwrap();
    config["pack_target_size"] = serde_json::json!(1 << 20);
    store.put("config.json", &serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(35);
    for i in 0..8 {
        std::fs::write(src.join(format!("old-{i}")), random_bytes(&mut rng, 3 << 20)).unwrap();
    }
    let old_copy = t.path("old-copy");
    std::process::Command::new("cp").arg("-a").arg(&src).arg(&old_copy).status().unwrap();
    let old = t.backup_at(&src, "s", &time_days_ago(200));
    for i in 0..8 {
        std::fs::remove_file(src.join(format!("old-{i}"))).unwrap();
    }
    std::fs::write(src.join("new-only"), b"young").unwrap();
    t.backup(&src, "s");

    kill_server_during(&mut server, &t, &["tier", "run"], |s| object_count(s, "backups", "cold/packs") > 0);
    server.restart();
    t.ok(&["check"]);
    let report = t.json(&["tier", "run"]);
    assert!(report["restore_points_cold"].as_u64().unwrap() <= 1, "{report}");
    assert!(object_count(&server, "backups", "cold/packs") > 0);

    kill_server_during(&mut server, &t, &["thaw", &old], |s| object_count(s, "backups", "warm/thaw") > 0);
    server.restart();
    t.ok(&["thaw", &old]);
    let target = t.path("old-restored");
    t.restore(&old, &target);
    assert_same_tree(&old_copy, &under(&target, &src));
    let target = t.path("young");
    t.restore("s@latest", &target);
    assert_eq!(std::fs::read(under(&target, &src).join("new-only")).unwrap(), b"young");
    t.ok(&["check", "--read-data"]);
}
