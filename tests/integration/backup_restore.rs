//! Full round trips: every kind of entry survives backup and restore.

use std::os::unix::fs::symlink;

use crate::util::*;

#[test]
fn round_trip_keeps_every_kind_of_entry() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 1);
    let summary = t.backup(&src, "host");
    assert!(
        summary["missed"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    assert!(summary["files"].as_u64().unwrap() >= 58);

    let target = t.path("restored");
    t.restore("host@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    // Holes are recreated, not written.
    let sparse = under(&target, &src).join("sparse.img");
    assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 256 << 20);
    assert!(
        allocated(&sparse) < 4 << 20,
        "sparse file takes {} bytes",
        allocated(&sparse)
    );
    t.ok(&["check", "--read-data"]);
}

#[test]
fn restores_selected_paths_only() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 2);
    t.backup(&src, "host");
    let target = t.path("partial");
    let wanted = src.join("dir/sub");
    t.ok(&[
        "restore",
        "files",
        "host@latest",
        wanted.to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&wanted, &under(&target, &wanted));
    assert!(!under(&target, &src).join("small.txt").exists());
    // The ancestors exist, with their backed-up metadata.
    let restored_dir = std::fs::metadata(under(&target, &src).join("dir")).unwrap();
    let source_dir = std::fs::metadata(src.join("dir")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(restored_dir.mode(), source_dir.mode());
}

#[test]
fn ls_show_list_and_selectors() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/file.txt"), b"content").unwrap();
    let first = t.json(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--source",
        "web",
        "--time",
        "2026-01-01T10:00:00Z",
        "--tag",
        "old",
    ]);
    let second = t.json(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--source",
        "web",
        "--time",
        "2026-02-01T10:00:00Z",
    ]);
    let list = t.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], first["restore_point"]);
    assert_eq!(list[0]["tags"][0], "old");

    let at = t.json(&["show", "web@2026-01-15T00:00:00Z"]);
    assert_eq!(at["id"], first["restore_point"]);
    let latest = t.json(&["show", "web@latest"]);
    assert_eq!(latest["id"], second["restore_point"]);
    let prefix = &second["restore_point"].as_str().unwrap()[..10];
    assert_eq!(t.json(&["show", prefix])["id"], second["restore_point"]);
    assert_eq!(latest["parent"], first["restore_point"]);

    let ls = t.ok(&["ls", "web@latest", src.join("a/b").to_str().unwrap()]);
    assert!(ls.contains("file.txt") && ls.contains("-rw-"), "{ls}");
    let out = t.run(&["show", "nosuch@latest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no restore point matches"));
    let out = t.run(&["ls", "web@latest", "/not/there"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist in restore point"));
    t.ok(&["stats"]);
}

#[test]
fn restore_never_follows_symlinks_already_in_the_target() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/passwd"), b"restored content").unwrap();
    t.backup(&src, "host");

    // The target already has `…/etc` as a symlink to a directory outside it.
    let outside = t.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"must stay").unwrap();
    let target = t.path("target");
    let restored_src = under(&target, &src);
    std::fs::create_dir_all(&restored_src).unwrap();
    symlink(&outside, restored_src.join("etc")).unwrap();

    t.restore("host@latest", &target);
    assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"must stay");
    assert!(std::fs::symlink_metadata(restored_src.join("etc"))
        .unwrap()
        .is_dir());
    assert_eq!(
        std::fs::read(restored_src.join("etc/passwd")).unwrap(),
        b"restored content"
    );
}

#[test]
fn restore_refuses_a_target_inside_the_repository() {
    if directory_only("a target inside a repository's directory") {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    t.backup(&src, "host");
    let inside = t.repo.join("packs/restore-here");
    let out = t.run(&[
        "restore",
        "files",
        "host@latest",
        "--to",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the repository"));
}

#[test]
fn backup_skips_the_repository_itself() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = strata_command()
        .args(["--repo", repo.to_str().unwrap()])
        .args(init_args())
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.path().join("data.txt"), b"data").unwrap();
    let out = strata_command()
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "backup",
            "files",
            dir.path().to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = strata_command()
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "ls",
            "-R",
            &serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["restore_point"]
                .as_str()
                .unwrap()[..12],
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains("data.txt"));
    assert!(!listing.contains("packs"), "{listing}");
}
