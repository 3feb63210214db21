//! Unchanged directories: a directory whose entries all look exactly as
//! when its tree was stored reuses that tree without looking at a file,
//! yet every change below it is still seen, and a tree is reused only
//! while the run that stored it has a restore point that is kept and warm.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

/// Backs up `src` as `source` with the walker's summary logged; returns
/// the JSON summary and how many directories were reused.
fn backup_counting(t: &TestRepo, src: &std::path::Path, source: &str) -> (serde_json::Value, u64) {
    let out = t
        .command(&["backup", "files", src.to_str().unwrap(), "--source", source, "--json"])
        .env("RUST_LOG", "strata_movers=info")
        .output()
        .unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr_of(&out));
    let log = stderr_of(&out);
    let reused = log
        .split("directories_unchanged=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no directories_unchanged in the log:\n{log}"));
    (serde_json::from_slice(&out.stdout).unwrap(), reused)
}

#[test]
fn unchanged_directories_are_reused_and_changes_below_them_are_seen() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 21);
    let (first, reused) = backup_counting(&t, &src, "s");
    assert_eq!(reused, 0, "nothing to reuse on a first backup");
    let directories = first["directories"].as_u64().unwrap();

    // The directories above `src` (the selection's path) change whenever
    // other tests create files beside it; everything in `src` is unchanged.
    let above = src.ancestors().count() as u64 - 1;
    let (second, reused) = backup_counting(&t, &src, "s");
    assert!(
        reused >= directories - above,
        "every directory in src is unchanged: {reused} of {directories} reused"
    );
    assert_eq!(second["bytes_read"], 0);
    assert!(
        second["bytes_new"].as_u64().unwrap() < 4096,
        "the same trees, so nothing new but those above src: {second}"
    );

    // Changes that touch neither the size nor the mtime of anything, deep
    // in otherwise unchanged trees: only the ctime tells.
    xattr::set(src.join("dir/sub/deeper/f7"), "user.added", b"later").unwrap();
    std::fs::set_permissions(
        src.join("dir/sub/deeper/f8"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let same_size = src.join("dir/sub/random.bin");
    let mut bytes = std::fs::read(&same_size).unwrap();
    bytes[12_345] ^= 0xff;
    std::fs::write(&same_size, &bytes).unwrap();
    let meta = std::fs::metadata(&same_size).unwrap();
    set_mtime(&same_size, {
        use std::os::unix::fs::MetadataExt;
        meta.mtime() - 100
    }, 0);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let (third, reused) = backup_counting(&t, &src, "s");
    assert!(reused > 0 && reused < directories, "{reused} of {directories} reused");
    // The changed file, and the two whose ctime changed (the file cache
    // trusts no file whose ctime moved).
    assert_eq!(third["bytes_read"].as_u64().unwrap(), 5_000_000 + 7 * 97 + 8 * 97);

    let target = t.path("restored");
    t.restore("s@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    t.ok(&["check", "--read-data"]);
}

#[test]
fn trees_of_forgotten_or_cold_restore_points_are_not_reused() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 22);
    backup_counting(&t, &src, "s");
    let elsewhere = t.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    backup_counting(&t, &elsewhere, "s");
    t.ok(&["forget", "--source", "s", "--keep-last", "1"]);
    t.ok(&["prune"]);
    // The records now name trees the repository no longer has.
    let (again, reused) = backup_counting(&t, &src, "s");
    // Only the directories above `src`, recorded again by the kept
    // restore point, may be reused.
    let above = src.ancestors().count() as u64 - 1;
    assert!(
        reused <= above,
        "records of a forgotten restore point are not trusted: {reused} reused"
    );
    assert!(again["bytes_new"].as_u64().unwrap() > 5_000_000);
    t.ok(&["check", "--read-data"]);

    // A restore point older than the warm days may have gone cold: its
    // trees are not built on either.
    let old = t.path("old");
    make_full_tree(&old, 23);
    t.backup_at(&old, "old", &time_days_ago(400));
    let (_, reused) = backup_counting(&t, &old, "old");
    assert_eq!(reused, 0, "records of a restore point past the warm days are not trusted");
    let (_, reused) = backup_counting(&t, &old, "old");
    assert!(reused > 0, "the new restore point's records are");

    let target = t.path("restored");
    t.restore("old@latest", &target);
    assert_same_tree(&old, &under(&target, &old));
}
