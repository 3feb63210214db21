//! What other users may do in an `--allow-other` mount: backed-up ACLs
//! and VM file permissions are enforced, `trusted.*` attributes stay
//! hidden, and a second mount on a live one is refused. The reading
//! process runs as `nobody` through setpriv; every mount is behind a guard.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mount::{fuse_test_repo, is_mounted, MountGuard};
use crate::util::*;
use crate::vm::qemu_img;

/// Runs `program args…` as user `nobody` with no groups.
fn as_nobody(program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            program,
        ])
        .args(args)
        .output()
        .expect("running setpriv")
}

fn nobody_reads(path: &Path) -> Output {
    as_nobody("cat", &[path.to_str().unwrap()])
}

/// Lets other users reach paths below the test directory.
fn open_test_dir(t: &TestRepo) {
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn setfacl(spec: &str, path: &Path) {
    let status = Command::new("setfacl")
        .args(["-m", spec])
        .arg(path)
        .status()
        .expect("setfacl (package acl, see tools/setup)");
    assert!(status.success(), "setfacl {spec} {}", path.display());
}

#[test]
fn backed_up_acls_are_enforced_for_other_users() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    open_test_dir(&t);
    for (name, mode) in [("plain", 0o644), ("denied", 0o644), ("granted", 0o600)] {
        std::fs::write(src.join(name), name).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    setfacl("u:nobody:---", &src.join("denied"));
    setfacl("u:nobody:r", &src.join("granted"));
    std::fs::create_dir(src.join("closed-dir")).unwrap();
    std::fs::write(src.join("closed-dir/inside"), b"inside").unwrap();
    setfacl("u:nobody:---", &src.join("closed-dir"));
    // Precondition: the source enforces them.
    assert!(!nobody_reads(&src.join("denied")).status.success());
    assert!(nobody_reads(&src.join("granted")).status.success());
    t.backup(&src, "s");

    let mnt = t.path("mnt");
    let mut guard = MountGuard::mount_with(&t, &mnt, &["--allow-other"]);
    let mounted = under(&mnt.join("files/s/latest"), &src);
    let plain = nobody_reads(&mounted.join("plain"));
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(plain.stdout, b"plain");
    let denied = nobody_reads(&mounted.join("denied"));
    assert!(
        !denied.status.success(),
        "nobody read a file whose ACL denies it: {denied:?}"
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    let granted = nobody_reads(&mounted.join("granted"));
    assert!(
        granted.status.success(),
        "an ACL grant was not honoured: {granted:?}"
    );
    assert_eq!(granted.stdout, b"granted");
    assert!(!nobody_reads(&mounted.join("closed-dir/inside"))
        .status
        .success());
    // Root still reads everything.
    assert_eq!(std::fs::read(mounted.join("denied")).unwrap(), b"denied");
    guard.stop();

    // With --no-xattrs the kernel cannot see the ACLs: entries that have
    // one are closed to everyone but their owner, grants included.
    let _guard = MountGuard::mount_with(&t, &mnt, &["--allow-other", "--no-xattrs"]);
    for name in ["denied", "granted"] {
        let meta = std::fs::metadata(mounted.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o077, 0, "{name}");
        assert!(
            !nobody_reads(&mounted.join(name)).status.success(),
            "{name}"
        );
    }
    assert!(nobody_reads(&mounted.join("plain")).status.success());
}

#[test]
fn vm_files_are_not_readable_by_other_users() {
    let Some((t, _)) = fuse_test_repo() else {
        return;
    };
    open_test_dir(&t);
    let folder = t.path("db01");
    std::fs::create_dir_all(&folder).unwrap();
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        folder.join("db01.vmdk").to_str().unwrap(),
        "4M",
    ]);
    std::fs::write(
        folder.join("db01.vmx"),
        "displayName = \"db01\"\nscsi0:0.fileName = \"db01.vmdk\"\n",
    )
    .unwrap();
    // The disk is root's alone; the .vmx belongs to another user and group.
    std::fs::set_permissions(
        folder.join("db01.vmdk"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        folder.join("db01.vmx"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(folder.join("db01.vmx"), Some(1234), Some(5678)).unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount_with(&t, &mnt, &["--allow-other"]);
    let point = mnt.join("vms/db01/latest");
    // The mount shows each file's backed-up mode (less write bits) and owner.
    for (name, mode, uid, gid) in [
        ("db01.vmx", 0o440, 1234, 5678),
        ("db01.vmdk", 0o400, 0, 0),
        ("db01-flat.vmdk", 0o400, 0, 0),
    ] {
        let path = point.join(name);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, mode, "{name}");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{name}");
        let out = nobody_reads(&path);
        assert!(
            !out.status.success(),
            "nobody read {name} of a root-only VM"
        );
        // The owner (root here) reads it.
        std::fs::read(&path).unwrap();
    }
}

/// A readable descriptor does not open a root-only `-flat.vmdk` to
/// everyone: the mount shows what all the disk's files allow.
#[test]
fn a_flat_disks_data_file_narrows_its_modes() {
    let Some((t, _)) = fuse_test_repo() else {
        return;
    };
    open_test_dir(&t);
    let folder = t.path("flat01");
    std::fs::create_dir_all(&folder).unwrap();
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        folder.join("flat01.vmdk").to_str().unwrap(),
        "2M",
    ]);
    std::fs::write(
        folder.join("flat01.vmx"),
        "displayName = \"flat01\"\nscsi0:0.fileName = \"flat01.vmdk\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        folder.join("flat01.vmdk"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        folder.join("flat01-flat.vmdk"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount_with(&t, &mnt, &["--allow-other"]);
    let data = mnt.join("vms/flat01/latest/flat01-flat.vmdk");
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o400);
    assert!(
        !nobody_reads(&data).status.success(),
        "nobody read a root-only disk"
    );
}

#[test]
fn trusted_xattrs_are_hidden_from_unprivileged_users() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    open_test_dir(&t);
    let file = src.join("f");
    std::fs::write(&file, b"data").unwrap();
    xattr::set(&file, "trusted.secret", b"root only").unwrap();
    xattr::set(&file, "user.visible", b"anyone").unwrap();
    t.backup(&src, "s");
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount_with(&t, &mnt, &["--allow-other"]);
    let mounted = under(&mnt.join("files/s/latest"), &src).join("f");

    let names: Vec<_> = xattr::list(&mounted).unwrap().collect();
    assert!(
        names.iter().any(|n| n == "trusted.secret"),
        "root sees it: {names:?}"
    );
    let script = "import os, sys\n\
        print(' '.join(os.listxattr(sys.argv[1])))\n\
        try:\n    os.getxattr(sys.argv[1], 'trusted.secret'); print('read')\n\
        except OSError as e:\n    print('denied', e.errno)\n";
    let out = as_nobody(
        "/usr/bin/python3",
        &["-c", script, mounted.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let listed = lines.next().unwrap_or_default();
    assert!(listed.contains("user.visible"), "{text}");
    assert!(
        !listed.contains("trusted."),
        "nobody sees trusted names: {text}"
    );
    assert_eq!(
        lines.next(),
        Some(format!("denied {}", libc::ENODATA).as_str())
    );
}

#[test]
fn a_second_mount_on_a_live_mount_point_is_refused() {
    let Some((t, src)) = fuse_test_repo() else {
        return;
    };
    std::fs::write(src.join("f"), b"x").unwrap();
    t.backup(&src, "s");
    let mnt = t.path("mnt");
    let _first = MountGuard::mount(&t, &mnt);
    let mut second = MountGuard::spawn(&t, &mnt, &[], Stdio::piped());
    let out = second
        .wait_until(Instant::now() + Duration::from_secs(20))
        .expect("the second mount kept running: it stacked a second mount");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(mnt.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("already mounted"), "{stderr}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let canonical = std::fs::canonicalize(&mnt).unwrap();
    let count = mounts
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(canonical.to_str().unwrap()))
        .count();
    assert_eq!(count, 1, "{mounts}");
    assert!(is_mounted(&mnt));
}

/// The guest files of a root-only disk are root's too: their own modes
/// (here a world-readable file) do not open them to others, because the
/// disk's folder under `guest/` carries the disk's mode and owner.
#[test]
fn guest_files_of_a_root_only_disk_are_not_readable_by_other_users() {
    let Some((t, _)) = fuse_test_repo() else {
        return;
    };
    open_test_dir(&t);
    let content = t.path("guest-content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("shadow"), b"root:secret\n").unwrap();
    std::fs::set_permissions(content.join("shadow"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let raw = t.path("sys01.raw");
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&raw)
        .arg("8M")
        .status()
        .unwrap();
    assert!(status.success());
    let folder = t.path("sys01");
    std::fs::create_dir_all(&folder).unwrap();
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", raw.to_str().unwrap(), folder.join("sys01.vmdk").to_str().unwrap()]);
    std::fs::write(folder.join("sys01.vmx"), "displayName = \"sys01\"\nscsi0:0.fileName = \"sys01.vmdk\"\n").unwrap();
    std::fs::set_permissions(folder.join("sys01.vmdk"), std::fs::Permissions::from_mode(0o600)).unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount_with(&t, &mnt, &["--allow-other"]);
    let disk = mnt.join("vms/sys01/latest/guest/sys01");
    let shadow = disk.join("whole/shadow");
    assert_eq!(std::fs::read(&shadow).unwrap(), b"root:secret\n", "root reads it");
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o500, 0), "the disk's folder");
    assert!(!nobody_reads(&shadow).status.success(), "nobody read a guest file of a root-only disk");
    assert!(!as_nobody("ls", &[disk.to_str().unwrap()]).status.success(), "nobody listed a root-only disk's volumes");
}
