//! The repository mounted through the real kernel FUSE: contents and
//! metadata against the source, VMDK images for qemu-img and loop mounts,
//! parallel and random readers, live catalog, clean unmount on SIGTERM.
//! Every mount sits behind a guard that unmounts on drop, also on panic.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::util::*;
use crate::vm::{convert, ext4_image, qemu_img};

pub fn is_mounted(path: &Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path.to_str().unwrap()))
}

/// `strata mount` in a child process; unmounts and reaps it when dropped.
pub struct MountGuard {
    pub path: PathBuf,
    child: Option<Child>,
}

impl MountGuard {
    pub fn mount(t: &TestRepo, path: &Path) -> MountGuard {
        Self::mount_with(t, path, &[])
    }

    /// `strata mount PATH ARGS…`, waiting until the mount is there.
    pub fn mount_with(t: &TestRepo, path: &Path, args: &[&str]) -> MountGuard {
        let guard = Self::spawn(t, path, args, Stdio::null());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(path) {
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    /// Starts `strata mount PATH ARGS…` without waiting for the mount.
    pub fn spawn(t: &TestRepo, path: &Path, args: &[&str], stderr: Stdio) -> MountGuard {
        std::fs::create_dir_all(path).unwrap();
        let mut all = vec!["mount", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let child = t
            .command(&all)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        MountGuard {
            path: path.to_path_buf(),
            child: Some(child),
        }
    }

    /// The exit status once the process ends by itself, or None if it is
    /// still running at `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<std::process::Output> {
        loop {
            let child = self.child.as_mut()?;
            if child.try_wait().unwrap().is_some() {
                return self.child.take()?.wait_with_output().ok();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as a person would press Ctrl-C; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.stop();
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A loop mount, unmounted when dropped.
struct LoopGuard(PathBuf);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn fuse_available() -> bool {
    is_root() && Path::new("/dev/fuse").exists()
}

/// A repository and an empty source folder `src` for a mount test, or
/// None (the test is skipped) where kernel FUSE mounts cannot be made.
pub fn fuse_test_repo() -> Option<(TestRepo, PathBuf)> {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    Some((t, src))
}

#[test]
fn mounted_tree_matches_the_source() {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 21);
    t.backup(&src, "web01");
    let mnt = t.path("mnt");
    let mut guard = MountGuard::mount(&t, &mnt);

    let latest = mnt.join("files/web01/latest");
    assert!(std::fs::symlink_metadata(&latest)
        .unwrap()
        .file_type()
        .is_symlink());
    let mounted = under(&latest, &src);
    assert_same_tree(&src, &mounted);

    // cp -a from the mount reproduces the tree, hard links and xattrs too.
    let copy = t.path("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&mounted)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    assert_same_tree(&src, &copy);
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "fifo", "-x", "null-dev"])
        .arg(&src)
        .arg(&mounted)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // A restore point made while mounted appears without remounting.
    std::fs::write(src.join("new-file"), b"made later").unwrap();
    t.backup(&src, "web01");
    t.backup(&src, "other-host");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(mnt.join("files/web01")).unwrap().count() < 3
        || !mnt.join("files/other-host").exists()
    {
        assert!(
            Instant::now() < deadline,
            "new restore points did not appear"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read(under(&mnt.join("files/other-host/latest"), &src).join("new-file")).unwrap(),
        b"made later"
    );

    // SIGTERM unmounts cleanly.
    let status = guard.stop().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn parallel_and_random_readers_get_correct_bytes() {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(22);
    for i in 0..8 {
        let data = if i % 2 == 0 {
            random_bytes(&mut rng, 6_000_000)
        } else {
            text_bytes(&mut rng, 6_000_000)
        };
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    std::fs::write(
        src.join("random-access"),
        random_bytes(&mut rng, 20_000_000),
    )
    .unwrap();
    t.backup(&src, "s");
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let mounted = under(&mnt.join("files/s/latest"), &src);

    std::thread::scope(|scope| {
        for i in 0..8 {
            let (src, mounted) = (src.clone(), mounted.clone());
            scope.spawn(move || {
                let name = format!("f{i}");
                assert!(
                    std::fs::read(mounted.join(&name)).unwrap()
                        == std::fs::read(src.join(&name)).unwrap(),
                    "{name} differs"
                );
            });
        }
        let (src, mounted) = (src.clone(), mounted.clone());
        scope.spawn(move || {
            let expected = std::fs::read(src.join("random-access")).unwrap();
            let file = std::fs::File::open(mounted.join("random-access")).unwrap();
            let mut rng = rand::rngs::SmallRng::seed_from_u64(23);
            for _ in 0..500 {
                let len = rng.gen_range(1..200_000usize);
                let at = rng.gen_range(0..expected.len() - 1);
                let mut buf = vec![0u8; len];
                let n = file.read_at(&mut buf, at as u64).unwrap();
                assert_eq!(n, len.min(expected.len() - at));
                assert!(buf[..n] == expected[at..at + n], "mismatch at {at}+{n}");
            }
        });
    });
}

#[test]
fn vm_disks_are_vmdk_images_in_the_mount() {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let folder = t.path("db01");
    std::fs::create_dir_all(&folder).unwrap();
    let raw = ext4_image(t.dir.path(), "system", 64, 24);
    convert(&raw, "monolithicSparse", &folder.join("db01.vmdk"));
    convert(&raw, "streamOptimized", &folder.join("db01_1.vmdk"));
    std::fs::write(folder.join("db01.vmx"), "displayName = \"db01\"\nscsi0:0.fileName = \"db01.vmdk\"\nscsi0:1.fileName = \"db01_1.vmdk\"\n").unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let point = mnt.join("vms/db01/latest");

    assert_eq!(
        std::fs::read(point.join("db01.vmx")).unwrap(),
        std::fs::read(folder.join("db01.vmx")).unwrap()
    );
    for disk in ["db01", "db01_1"] {
        let out = qemu_img(&[
            "compare",
            folder.join(format!("{disk}.vmdk")).to_str().unwrap(),
            point.join(format!("{disk}.vmdk")).to_str().unwrap(),
        ]);
        assert!(out.contains("identical"), "{out}");
    }
    let converted = t.path("converted.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        point.join("db01.vmdk").to_str().unwrap(),
        converted.to_str().unwrap(),
    ]);
    assert!(qemu_img(&[
        "compare",
        raw.to_str().unwrap(),
        converted.to_str().unwrap()
    ])
    .contains("identical"));

    // The guest file system, straight from the mount.
    let guest = t.path("guest");
    std::fs::create_dir_all(&guest).unwrap();
    let status = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(point.join("db01-flat.vmdk"))
        .arg(&guest)
        .status()
        .unwrap();
    assert!(status.success(), "loop mount failed");
    let _loop = LoopGuard(guest.clone());
    let content = t.path("system-content");
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&content)
        .arg(&guest)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&diff.stdout);
    // lost+found exists only in the guest.
    assert!(
        listing.lines().all(|l| l.contains("lost+found")),
        "{listing}"
    );
}

#[test]
fn damaged_data_gives_eio_not_wrong_bytes() {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(25);
    let victim = random_bytes(&mut rng, 300_000);
    std::fs::write(src.join("victim"), &victim).unwrap();
    t.backup(&src, "s");
    flip_stored_byte(&t, "s@latest", &src.join("victim"), 5000);
    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let err = std::fs::read(under(&mnt.join("files/s/latest"), &src).join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}
