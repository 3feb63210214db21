//! A mount that lives while the repository changes: the inode table
//! follows the kernel's cache, names follow the catalog (`latest` moves,
//! a forgotten restore point's name never serves its bytes), and open
//! files keep reading after prune moves their chunks. Every mount sits
//! behind a guard that unmounts on drop.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use crate::mount::{fuse_test_repo, MountGuard};
use crate::util::*;

/// Inodes the mount holds now, as its statfs reports them (`df -i`).
fn held_inodes(mnt: &Path) -> u64 {
    nix::sys::statvfs::statvfs(mnt).unwrap().files() as u64
}

fn drop_kernel_caches(what: &str) {
    std::fs::write("/proc/sys/vm/drop_caches", what).expect("writing drop_caches (needs root)");
}

/// Polls `done` until it holds; panics with `what` after a generous
/// deadline (liveness only, no timing is asserted).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The restore-point names in a source's directory, without `latest`.
fn point_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "latest")
        .collect();
    names.sort();
    names
}

#[test]
fn forgotten_entries_leave_the_inode_table() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    for d in 0..4 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    t.backup(&src, "s");
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let mounted = under(&mnt.join("files/s/latest"), &src);
    // -printf %s needs every file's attributes: each is looked up.
    let out = Command::new("find")
        .arg(&mounted)
        .args(["-type", "f", "-printf", "%s\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2000);
    let after_find = held_inodes(&mnt);
    assert!(
        after_find >= 2000,
        "the mount holds {after_find} inodes after find"
    );

    // The kernel evicts the unused inodes and sends forgets for them.
    drop_kernel_caches("2");
    eventually(
        &format!("the inode table did not shrink from {after_find}"),
        || held_inodes(&mnt) * 4 < after_find,
    );
    // What was forgotten comes back on the next lookup, with its content.
    assert_eq!(std::fs::read(mounted.join("d3/f499")).unwrap(), b"3/499");
}

#[test]
fn names_resolve_to_the_restore_point_they_name() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let time = "2026-03-01T10:00:00Z";
    let mut content_of = std::collections::HashMap::new();
    for content in ["first", "second"] {
        std::fs::write(src.join("a"), content).unwrap();
        let id = t.backup_at(&src, "eq", time);
        content_of.insert(id, content.as_bytes().to_vec());
    }
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let source = mnt.join("files/eq");
    let read_a = |name: &str| std::fs::read(under(&source.join(name), &src).join("a"));

    // Two restore points at one second get two distinct names.
    let before = point_names(&source);
    assert_eq!(before.len(), 2, "{before:?}");
    let mut contents: Vec<Vec<u8>> = before.iter().map(|n| read_a(n).unwrap()).collect();
    contents.sort();
    assert_eq!(contents, [b"first".to_vec(), b"second".to_vec()]);

    // forget keeps one of the two (the larger id, which the mount used to
    // name `<time>-<id>`); prune deletes the other's data.
    t.ok(&["forget", "--source", "eq", "--keep-last", "1"]);
    t.ok(&["prune", "--repack-below", "1.0"]);
    let kept = t.json(&["list"]);
    let kept = kept.as_array().unwrap();
    assert_eq!(kept.len(), 1);
    let want = &content_of[kept[0]["id"].as_str().unwrap()];
    eventually("the forgotten restore point stayed listed", || {
        point_names(&source).len() == 1
    });
    let name = point_names(&source).remove(0);
    assert_eq!(
        &read_a(&name).unwrap(),
        want,
        "{name} serves another restore point"
    );
    assert_eq!(
        std::fs::read_link(source.join("latest")).unwrap(),
        PathBuf::from(&name)
    );
    assert_eq!(&read_a("latest").unwrap(), want);
}

#[test]
fn latest_follows_new_backups_while_mounted() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let backup = |n: usize| {
        std::fs::write(src.join("a"), format!("backup {n}")).unwrap();
        let time = format!("2026-03-01T10:00:0{n}Z");
        t.backup_at(&src, "s", &time);
    };
    backup(1);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let latest = mnt.join("files/s/latest");
    let first = std::fs::read_link(&latest).unwrap();
    assert_eq!(
        std::fs::read(under(&latest, &src).join("a")).unwrap(),
        b"backup 1"
    );
    for n in 2..=4 {
        backup(n);
    }
    eventually("latest did not move to the newest restore point", || {
        std::fs::read_link(&latest).unwrap() != first
            && std::fs::read(under(&latest, &src).join("a")).unwrap() == b"backup 4"
    });
    assert_eq!(
        std::fs::read_link(&latest).unwrap(),
        PathBuf::from(point_names(&mnt.join("files/s")).pop().unwrap())
    );
}

/// Needs the repository to follow chunks that prune moved
/// (`Repository::read_chunk` re-resolving a chunk whose pack is gone).
#[test]
fn open_files_read_on_after_prune_repacks_their_chunks() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(91);
    let kept = random_bytes(&mut rng, 3_000_000);
    std::fs::write(src.join("kept"), &kept).unwrap();
    std::fs::write(src.join("dropped"), random_bytes(&mut rng, 3_000_000)).unwrap();
    t.backup(&src, "s");
    std::fs::remove_file(src.join("dropped")).unwrap();
    t.backup(&src, "s");
    // A file of its own pack, read before the prune.
    std::fs::write(src.join("small"), b"small").unwrap();
    t.backup(&src, "s");

    let mnt = t.path("mnt");
    // No chunk cache: every read after the prune goes to the packs.
    let _guard = MountGuard::mount_with(&t, &mnt, &["--cache-size", "0"]);
    let point = mnt.join("files/s/latest");
    assert_eq!(
        std::fs::read(under(&point, &src).join("small")).unwrap(),
        b"small"
    );
    // Opened, not read: the mount has not opened the file's pack yet (an
    // open pack would go on serving its unlinked bytes).
    let file = std::fs::File::open(under(&point, &src).join("kept")).unwrap();
    let read_all = || {
        let mut buf = vec![0u8; kept.len()];
        file.read_exact_at(&mut buf, 0).map(|_| buf)
    };

    let packs_before = pack_names(&t.objects());
    t.ok(&["forget", "--source", "s", "--keep-last", "1"]);
    t.ok(&["prune", "--repack-below", "1.0"]);
    let packs_after = pack_names(&t.objects());
    // Precondition: the kept file's pack was rewritten and deleted.
    assert!(
        packs_before.iter().any(|p| !packs_after.contains(p)),
        "prune deleted no pack"
    );
    drop_kernel_caches("3");
    let again = read_all().expect("reading a kept restore point after prune");
    assert!(again == kept, "kept file differs after prune");
}

fn pack_names(repo: &Path) -> Vec<PathBuf> {
    files_under(&repo.join("packs"))
}
