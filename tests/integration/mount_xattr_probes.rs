//! The mount answers EOPNOTSUPP for an xattr name that no file of the
//! mount has (so `ls -l` stops probing every file), ENODATA for a name
//! some other file has, and the value for files that have it, also for
//! names that arrive with a restore point made while mounted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mount::{fuse_test_repo, MountGuard};
use crate::util::TestRepo;

/// The errno of getxattr(`name`) on `path`, or 0 with the value.
pub fn probe(path: &Path, name: &str) -> (i32, Vec<u8>) {
    match xattr::get(path, name) {
        Ok(Some(value)) => (0, value),
        Ok(None) => (libc::ENODATA, Vec::new()),
        Err(e) => (e.raw_os_error().unwrap_or(-1), Vec::new()),
    }
}

/// Polls until getxattr(`name`) on `path` fails with `errno`: the names
/// are collected in the background after the catalog is read.
pub fn wait_for_errno(path: &Path, name: &str, errno: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, _) = probe(path, name);
        if got == errno {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} on {} gives errno {got}, expected {errno}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Backs up `src` as `web` and mounts; returns the guard and where `src`
/// is in the mount.
fn backup_and_mount(t: &TestRepo, src: &Path) -> (MountGuard, PathBuf) {
    t.backup_at(src, "web", "2026-01-01T00:00:00Z");
    let guard = MountGuard::mount(t, &t.path("mnt"));
    let dir = guard
        .path
        .join("files/web/2026-01-01T00:00:00Z")
        .join(src.strip_prefix("/").unwrap());
    (guard, dir)
}

#[test]
fn probes_for_names_no_file_has_are_unsupported_others_answered() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let plain = src.join("plain.txt");
    let tagged = src.join("tagged.txt");
    std::fs::write(&plain, b"plain").unwrap();
    std::fs::write(&tagged, b"tagged").unwrap();
    xattr::set(&tagged, "user.color", b"blue").unwrap();
    let (guard, first) = backup_and_mount(&t, &src);
    let mnt = &guard.path;
    let (m_plain, m_tagged) = (first.join("plain.txt"), first.join("tagged.txt"));

    wait_for_errno(&m_plain, "security.selinux", libc::EOPNOTSUPP);
    assert_eq!(
        probe(&m_plain, "system.posix_acl_access").0,
        libc::EOPNOTSUPP
    );
    // Another file has it: ENODATA, never "unsupported".
    assert_eq!(probe(&m_plain, "user.color").0, libc::ENODATA);
    assert_eq!(probe(&m_tagged, "user.color"), (0, b"blue".to_vec()));
    let names: Vec<_> = xattr::list(&m_tagged).unwrap().collect();
    assert_eq!(names, vec![std::ffi::OsString::from("user.color")]);

    // A restore point made while mounted brings a new name: it is shown
    // on its file at once, and becomes ENODATA on the others once scanned.
    xattr::set(&plain, "user.shape", b"round").unwrap();
    t.backup_at(&src, "web", "2026-01-02T00:00:00Z");
    let second = mnt
        .join("files/web/2026-01-02T00:00:00Z")
        .join(src.strip_prefix("/").unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !second.exists() {
        assert!(
            Instant::now() < deadline,
            "the new restore point did not appear"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        probe(&second.join("plain.txt"), "user.shape"),
        (0, b"round".to_vec())
    );
    wait_for_errno(&m_plain, "user.shape", libc::ENODATA);
    wait_for_errno(&m_plain, "security.selinux", libc::EOPNOTSUPP);
}

#[test]
fn ls_shows_acls_and_probes_stop_where_no_file_has_them() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    let with_acl = src.join("acl.txt");
    std::fs::write(&with_acl, b"x").unwrap();
    std::fs::write(src.join("other.txt"), b"y").unwrap();
    let setfacl = std::process::Command::new("setfacl")
        .args(["-m", "u:nobody:r"])
        .arg(&with_acl)
        .status();
    if !setfacl.is_ok_and(|s| s.success()) {
        eprintln!("skipped: setfacl not available here");
        return;
    }
    let (_guard, dir) = backup_and_mount(&t, &src);
    wait_for_errno(&dir.join("other.txt"), "security.selinux", libc::EOPNOTSUPP);
    // A file has an ACL, so the ACL probe stays answered on every file.
    assert_eq!(
        probe(&dir.join("other.txt"), "system.posix_acl_access").0,
        libc::ENODATA
    );
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(&dir)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(line("acl.txt").starts_with("-rw-r--r--+"), "{listing}");
    assert!(line("other.txt").starts_with("-rw-r--r-- "), "{listing}");
}
