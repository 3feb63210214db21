//! Bad input and faults: kill -9, flipped bytes, a lost index, a second
//! writer, unknown versions, full disks.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::util::*;

#[test]
fn kill_9_during_backup_loses_nothing_committed() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let base = t.path("base");
    std::fs::create_dir_all(&base).unwrap();
    for i in 0..8 {
        std::fs::write(
            base.join(format!("b{i}")),
            random_bytes(&mut rng, 1_000_000),
        )
        .unwrap();
    }
    t.backup(&base, "base");

    let big = t.path("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..40 {
        let data = if i % 2 == 0 {
            random_bytes(&mut rng, 3_000_000)
        } else {
            text_bytes(&mut rng, 3_000_000)
        };
        std::fs::write(big.join(format!("f{i}")), data).unwrap();
    }
    for round in 0..8 {
        let mut child = t
            .command(&["backup", "files", big.to_str().unwrap(), "--source", "big"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..1500)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let check = t.run(&["check"]);
        assert!(
            check.status.success(),
            "round {round}: check failed: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let target = t.path(&format!("restore-{round}"));
        t.restore("base@latest", &target);
        assert_same_tree(&base, &under(&target, &base));
        std::fs::remove_dir_all(&target).unwrap();
    }
    // A later run completes and its restore point is whole.
    t.backup(&big, "big");
    let target = t.path("restore-big");
    t.restore("big@latest", &target);
    assert_same_tree(&big, &under(&target, &big));
    t.ok(&["check", "--read-data"]);
    assert_eq!(t.staging_leftovers(), Vec::<std::path::PathBuf>::new(), "staging leftovers remain");
}

#[test]
fn flipped_byte_is_found_and_named() {
    let t = TestRepo::new();
    let src = t.path("src");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(12);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("victim.bin"), random_bytes(&mut rng, 200_000)).unwrap();
    std::fs::write(src.join("bystander.txt"), text_bytes(&mut rng, 50_000)).unwrap();
    t.backup(&src, "s");

    // Find the data pack and flip a byte inside the victim's chunk: it is
    // the larger, incompressible one, so its bytes start right after the
    // header or after the bystander's.
    flip_stored_byte(&t, "s@latest", &src.join("victim.bin"), 1000);

    let out = t.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(4));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("damaged chunk"), "{report}");
    assert!(
        report.contains("victim.bin") && report.contains("(s at "),
        "{report}"
    );
    assert!(!report.contains("bystander.txt"), "{report}");

    // The unaffected file restores; the damaged one is refused, never wrong.
    let target = t.path("t1");
    t.ok(&[
        "restore",
        "files",
        "s@latest",
        src.join("bystander.txt").to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(under(&target, &src).join("bystander.txt")).unwrap(),
        std::fs::read(src.join("bystander.txt")).unwrap()
    );
    let target = t.path("t2");
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr_of(&out).contains("victim.bin"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn repair_index_restores_full_function() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 3);
    t.backup(&src, "s");
    std::fs::write(src.join("small.txt"), b"second version").unwrap();
    t.backup(&src, "s");
    std::fs::remove_dir_all(t.state().join("index")).unwrap();

    let out = t.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("strata repair index"),
        "{}",
        stderr_of(&out)
    );

    let report = t.json(&["repair", "index"]);
    assert_eq!(report["restore_points"], 2);
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 2);
    t.ok(&["check", "--read-data"]);
    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    // Backups work again and find their data already stored.
    let again = t.backup(&src, "s");
    assert!(again["bytes_new"].as_u64().unwrap() < 100_000, "{again}");
}

#[test]
fn second_writer_is_told_who_holds_the_repository() {
    let t = TestRepo::new();
    let _held =
        strata::repository::Repository::open_exclusive_with(&t.repo, "strata backup files /data", &t.open_options())
            .unwrap();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let out = t.run(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("repository is busy")
            && err.contains("strata backup files /data")
            && err.contains("pid"),
        "{err}"
    );
    // Readers are not blocked by the writer.
    t.ok(&["list"]);
}

#[test]
fn unknown_format_version_is_refused_with_the_version() {
    let t = TestRepo::new();
    let config_path = t.objects().join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config
            .replace("\"format_version\": 1", "\"format_version\": 7")
            .replace("\"format_version\": 2", "\"format_version\": 7"),
    )
    .unwrap();
    let out = t.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("format version 7"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failure_status() {
    let t = TestRepo::new();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--repo".into(), "/nonexistent/repo".into(), "list".into()],
            "not a Strata repository",
        ),
        (
            vec!["backup".into(), "files".into(), "/nonexistent/path".into()],
            "cannot back up /nonexistent/path",
        ),
        (
            vec!["show".into(), "zz-not-hex".into()],
            "is not a restore point",
        ),
        (
            vec![
                "backup".into(),
                "files".into(),
                "/tmp".into(),
                "--time".into(),
                "yesterday".into(),
            ],
            "not an RFC 3339 time",
        ),
        (vec!["init".into()], "already holds a repository"),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("config.json"), b"{ not json").unwrap();
    let out = strata_command()
        .args(["--repo", empty.path().to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("is damaged"),
        "{}",
        stderr_of(&out)
    );
}

/// A small tmpfs, unmounted when dropped (also on panic).
struct TmpfsGuard(std::path::PathBuf);

impl TmpfsGuard {
    fn mount(path: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| TmpfsGuard(path.to_path_buf()))
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disks_give_clear_errors_and_keep_the_repository_whole() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(_small) = TmpfsGuard::mount(&dir.path().join("small"), "6m") else {
        eprintln!("skipped: tmpfs mount refused");
        return;
    };
    let repo = dir.path().join("small/repo");
    let run = |args: &[&str]| {
        strata_command()
            .args(args)
            .env("STRATA_REPO", &repo)
            .output()
            .unwrap()
    };
    assert!(run(&init_args()).status.success());
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(13);
    std::fs::write(src.join("fits"), random_bytes(&mut rng, 500_000)).unwrap();
    assert!(
        run(&["backup", "files", src.to_str().unwrap(), "--source", "s"])
            .status
            .success()
    );
    std::fs::write(src.join("too-big"), random_bytes(&mut rng, 20_000_000)).unwrap();
    let out = run(&["backup", "files", src.to_str().unwrap(), "--source", "s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("No space left on device"),
        "{}",
        stderr_of(&out)
    );
    assert!(run(&["check", "--read-data"]).status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&run(&["list", "--json"]).stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Restore checks free space before writing anything.
    let Some(_tiny) = TmpfsGuard::mount(&dir.path().join("tiny"), "100k") else {
        return;
    };
    let out = run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        dir.path().join("tiny").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("not enough space"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        std::fs::read_dir(dir.path().join("tiny"))
            .unwrap()
            .next()
            .is_none(),
        "nothing written"
    );
}

#[test]
fn unsafe_names_in_a_manifest_are_refused_before_writing() {
    use strata::pack::ChunkKind;
    use strata::restore_point::{BackupStats, Manifest, RestorePointKind};
    use strata::session::{with_local_session, BackupSession};
    use strata::tree::{Node, NodeKind, Timestamp, Tree};

    let t = TestRepo::new();
    {
        let repo = strata::repository::Repository::open_exclusive_with(&t.repo, "test", &t.open_options()).unwrap();
        let evil = Node {
            name: b"..".to_vec(),
            kind: NodeKind::Symlink {
                target: b"/etc".to_vec(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            user: vec![],
            group: vec![],
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            size: 4,
            nlink: 1,
            link_id: 0,
            xattrs: vec![],
        };
        let harmless = Node {
            name: b"a-fine-name".to_vec(),
            ..evil.clone()
        };
        let bytes = Tree {
            nodes: vec![harmless, evil],
        }
        .encode();
        let root = repo.ids().chunk_id(&bytes);
        with_local_session(&repo, |session| {
            session.store_chunk(root, ChunkKind::Tree, &bytes)?;
            session.commit(&Manifest {
                kind: RestorePointKind::Files,
                source: "evil".into(),
                time: Timestamp { sec: 1, nsec: 0 },
                hostname: "h".into(),
                tags: vec![],
                paths: vec![b"/".to_vec()],
                root,
                parent: None,
                stats: BackupStats::default(),
                missed: vec![],
            })
        })
        .unwrap();
    }
    let target = t.path("target");
    let out = t.run(&[
        "restore",
        "files",
        "evil@latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("refusing unsafe name \"..\""),
        "{}",
        stderr_of(&out)
    );
    assert!(!target.exists(), "a refused restore created its target");
}

/// A repository made before a column family existed (here: `thaw`) must
/// still open for readers, which cannot create column families.
#[test]
fn readers_open_repositories_without_newer_column_families() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"older repository").unwrap();
    t.backup(&src, "s");
    {
        let path = t.state().join("index");
        let opts = rocksdb::Options::default();
        let names = rocksdb::DB::list_cf(&opts, &path).unwrap();
        let mut db = rocksdb::DB::open_cf(&opts, &path, &names).unwrap();
        db.drop_cf("thaw").unwrap();
    }
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 1);
    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_eq!(
        std::fs::read(under(&target, &src).join("f")).unwrap(),
        b"older repository"
    );
    // The next writer adds the missing column family.
    t.backup(&src, "s");
    t.ok(&["tier", "status"]);
}
