//! Files inside VM disks, without a helper VM, a loop device or root: a
//! VM whose disk holds an MBR with primary and logical partitions (ext4
//! and ext2 made by `mke2fs -d` from a known tree, an empty one) and a
//! second disk with a GPT, backed up with `strata backup vm`, then shown,
//! listed and restored by guest path, and compared with the source tree
//! (names, kinds, modes, owners as root, times, content, symlinks, hard
//! links, xattrs). A damaged superblock, a partition past the disk's end
//! and an unknown volume are named as such while the rest still reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::SeedableRng;

use crate::util::*;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr_of(&out));
}

/// The guest's tree: configuration, a large file, a symlink, a hard link,
/// an xattr, modes; every time a whole second (mke2fs keeps seconds).
fn guest_tree(root: &Path) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(16);
    std::fs::create_dir_all(root.join("etc/nginx/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("var/www")).unwrap();
    std::fs::write(root.join("etc/nginx/nginx.conf"), b"worker_processes 4;\n").unwrap();
    std::fs::write(root.join("etc/nginx/conf.d/site.conf"), text_bytes(&mut rng, 5000)).unwrap();
    std::fs::write(root.join("var/www/big.bin"), random_bytes(&mut rng, 5 << 20)).unwrap();
    std::os::unix::fs::symlink("nginx/nginx.conf", root.join("etc/nginx.conf")).unwrap();
    std::fs::hard_link(root.join("var/www/big.bin"), root.join("var/www/big-link.bin")).unwrap();
    xattr::set(root.join("etc/nginx/nginx.conf"), "user.origin", b"guest").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("etc/nginx/conf.d/site.conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    if is_root() {
        run(Command::new("chown").args(["-h", "1234:5678"]).arg(root.join("etc/nginx/conf.d/site.conf")));
    }
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    // Deepest first, so a directory's time is set after its content.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all.iter().chain([&root.to_path_buf()]) {
        if std::fs::symlink_metadata(p).unwrap().file_type().is_symlink() {
            run(Command::new("touch").args(["-h", "-d", "@1700000000"]).arg(p));
        } else {
            set_mtime(p, 1_700_000_000, 0);
        }
    }
}

/// A 96 MiB disk: MBR p1 ext4 (the tree, label "root"), p2 extended with
/// p5 ext2 (label "boot") and p6 with nothing on it, and p3 pointing past
/// the disk's end.
fn mbr_disk(dir: &Path, src: &Path) -> PathBuf {
    let raw = dir.join("system.raw");
    std::fs::File::create(&raw).unwrap().set_len(96 << 20).unwrap();
    let mut sfdisk = Command::new("sfdisk").arg("-q").arg(&raw).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().unwrap(),
        b"label: dos\nstart=2048, size=81920, type=83\nstart=83968, size=90112, type=5\n\
          start=86016, size=40960, type=83\nstart=129024, size=20480, type=83\n",
    )
    .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-L", "root", "-E", "offset=1048576", "-d"]).arg(src).arg(&raw).arg("40M"));
    // p5: ext2 with a directory loop (grub/loop is a second name of
    // grub, as a damaged file system may have), made apart and copied in.
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("grub/fonts")).unwrap();
    std::fs::write(boot.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(boot.join("grub/grub.cfg"), b"menuentry\n").unwrap();
    let boot_img = dir.join("boot.img");
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext2", "-L", "boot", "-d"]).arg(&boot).arg(&boot_img).arg("20M"));
    run(Command::new("debugfs").args(["-w", "-R", "ln /grub /grub/fonts/loop"]).arg(&boot_img));
    let disk = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&disk, &std::fs::read(&boot_img).unwrap(), 86016 * 512).unwrap();
    // p3: a primary entry whose end lies past the disk's (sfdisk refuses
    // to write one; the table is patched).
    let mut bytes = std::fs::read(&raw).unwrap();
    let entry = &mut bytes[446 + 32..446 + 48];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&180_000u32.to_le_bytes());
    entry[12..16].copy_from_slice(&100_000u32.to_le_bytes());
    std::fs::write(&raw, bytes).unwrap();
    raw
}

/// A 32 MiB disk: GPT with one ext4 partition whose superblock is damaged
/// (a block size of 2^32 KiB), one with ext4 (label "data") and an EFI
/// system partition (FAT16 from mkfs.vfat, a file put in by mcopy).
fn gpt_disk(dir: &Path, src: &Path) -> PathBuf {
    let raw = dir.join("data.raw");
    std::fs::File::create(&raw).unwrap().set_len(32 << 20).unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+8M", "-n", "2:0:+16M", "-c", "2:data", "-n", "3:0:+6M", "-t", "3:ef00", "-c", "3:EFI"])
        .arg(&raw));
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-E", "offset=1048576"]).arg(&raw).arg("8M"));
    let p2 = (2048 + 16384) * 512u64;
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-L", "data", "-E", &format!("offset={p2}"), "-d"]).arg(src.join("etc")).arg(&raw).arg("16M"));
    // p3 starts after p1 (8 MiB) and p2 (16 MiB), at sector 51200.
    run(Command::new("mkfs.vfat").args(["-F", "16", "-s", "1", "-n", "EFI", "--offset", "51200"]).arg(&raw).arg("6144"));
    let efi = dir.join("BOOTX64.EFI");
    std::fs::write(&efi, b"MZ efi loader").unwrap();
    run(Command::new("mmd").arg("-i").arg(format!("{}@@{}", raw.display(), 51200 * 512)).args(["::/EFI", "::/EFI/BOOT"]));
    run(Command::new("mcopy").arg("-i").arg(format!("{}@@{}", raw.display(), 51200 * 512)).arg(&efi).arg("::/EFI/BOOT/BOOTX64.EFI"));
    let mut bytes = std::fs::read(&raw).unwrap();
    let log_block_size = (1 << 20) + 1024 + 24;
    bytes[log_block_size] = 32;
    std::fs::write(&raw, bytes).unwrap();
    raw
}

fn guest_vm(t: &TestRepo) -> Option<(PathBuf, PathBuf)> {
    if !["sfdisk", "sgdisk", "mke2fs", "mkfs.vfat", "mcopy", "qemu-img"].iter().all(|t| have(t)) {
        eprintln!("skipped: guest tests need sfdisk, sgdisk, mke2fs, mkfs.vfat, mtools and qemu-img (tools/setup installs them)");
        return None;
    }
    let src = t.path("guest-src");
    guest_tree(&src);
    let folder = t.path("vms/web01");
    std::fs::create_dir_all(&folder).unwrap();
    let system = mbr_disk(&t.path("."), &src);
    let data = gpt_disk(&t.path("."), &src);
    crate::vm::convert(&system, "monolithicSparse", &folder.join("web01.vmdk"));
    crate::vm::convert(&data, "monolithicSparse", &folder.join("web01_1.vmdk"));
    std::fs::write(
        folder.join("web01.vmx"),
        "displayName = \"web01\"\nguestOS = \"ubuntu-64\"\nscsi0:0.fileName = \"web01.vmdk\"\nscsi0:1.fileName = \"web01_1.vmdk\"\n",
    )
    .unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    Some((src, folder))
}

#[test]
fn guest_volumes_are_shown_listed_and_restored_with_their_metadata() {
    let t = TestRepo::new();
    let Some((src, _)) = guest_vm(&t) else { return };

    let shown = t.json(&["show", "web01@latest"]);
    let guest = &shown["vm"]["guest"];
    let volumes = |disk: usize| -> Vec<serde_json::Value> { guest[disk]["volumes"].as_array().unwrap().clone() };
    assert_eq!(guest[0]["disk"], "web01");
    let system = volumes(0);
    assert_eq!(names_of(&system), ["p1", "p3", "p5", "p6"], "{guest:#}");
    let by_name = |vols: &[serde_json::Value], name: &str| vols.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(by_name(&system, "p1")["filesystem"], "ext2/3/4");
    assert_eq!(by_name(&system, "p1")["label"], "root");
    assert_eq!(by_name(&system, "p1")["size"], 40 << 20);
    assert_eq!(by_name(&system, "p5")["label"], "boot");
    assert!(by_name(&system, "p3")["problem"].as_str().unwrap().contains("disk has"), "{guest:#}");
    assert!(by_name(&system, "p6")["problem"].as_str().unwrap().contains("no file system"), "{guest:#}");
    let data = volumes(1);
    assert_eq!(names_of(&data), ["p1", "p2", "p3"]);
    assert_eq!((by_name(&data, "p3")["filesystem"].as_str(), by_name(&data, "p3")["label"].as_str()), (Some("fat"), Some("EFI")));
    let damaged = by_name(&data, "p1")["problem"].as_str().unwrap().to_string();
    assert!(damaged.contains("damaged") && damaged.contains("block size"), "{damaged}");
    assert_eq!(by_name(&data, "p2")["label"], "data");
    let text = t.ok(&["show", "web01@latest"]);
    assert!(text.contains("volume       web01/p1: ext2/3/4 \"root\", 40.0 MiB"), "{text}");
    assert!(text.contains("volume       web01/p6: 10.0 MiB, no files: no file system"), "{text}");

    // ls: a directory, a file, recursively.
    let listed = t.ok(&["ls", "web01@latest", "web01/p1/etc/nginx"]);
    assert!(listed.contains("web01/p1/etc/nginx/nginx.conf") && listed.contains("conf.d"), "{listed}");
    let link = t.ok(&["ls", "web01@latest", "web01/p1/etc/nginx.conf"]);
    assert!(link.starts_with('l') && link.contains("-> nginx/nginx.conf"), "{link}");
    let all = t.ok(&["ls", "-R", "web01@latest", "web01/p1/"]);
    assert!(all.contains("web01/p1/var/www/big-link.bin") && all.contains("lost+found"), "{all}");
    let boot = t.ok(&["ls", "web01@latest", "web01_1/p2/nginx/nginx.conf"]);
    assert!(boot.contains("20 "), "{boot}");
    let efi = t.ok(&["ls", "-R", "web01@latest", "web01_1/p3"]);
    assert!(efi.contains("web01_1/p3/EFI/BOOT/BOOTX64.EFI"), "{efi}");

    // restore files: two trees of the guest, compared with the source.
    let target = t.path("restored");
    let out = t.json(&["restore", "files", "web01@latest", "web01/p1/etc", "web01/p1/var", "--to", target.to_str().unwrap()]);
    assert_eq!(out["failed"].as_array().unwrap().len(), 0, "{out}");
    assert!(out["files"].as_u64().unwrap() >= 4, "{out}");
    assert_same_tree(&src.join("etc"), &target.join("etc"));
    assert_same_tree(&src.join("var"), &target.join("var"));
    // The hard link is a hard link again.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(target.join("var/www/big.bin")).unwrap().ino(),
        std::fs::metadata(target.join("var/www/big-link.bin")).unwrap().ino()
    );
    // One file, from the GPT disk.
    let one = t.path("one");
    t.ok(&["restore", "files", "web01@latest", "web01_1/p2/nginx/nginx.conf", "--to", one.to_str().unwrap()]);
    assert_eq!(std::fs::read(one.join("nginx/nginx.conf")).unwrap(), b"worker_processes 4;\n");
}

fn names_of(volumes: &[serde_json::Value]) -> Vec<&str> {
    volumes.iter().map(|v| v["name"].as_str().unwrap()).collect()
}

#[test]
fn unreadable_volumes_and_bad_guest_paths_are_named_and_fail_cleanly() {
    let t = TestRepo::new();
    let Some(_) = guest_vm(&t) else { return };
    let cases: &[(&[&str], &str)] = &[
        (&["ls", "web01@latest", "web01_1/p1/"], "is damaged: block size"),
        (&["ls", "web01@latest", "web01/p3/"], "disk has"),
        (&["ls", "web01@latest", "web01/p6/"], "no file system"),
        (&["ls", "web01@latest", "web01/p9/"], "no such volume"),
        (&["ls", "web01@latest", "nodisk/p1/"], "no such disk"),
        (&["ls", "web01@latest", "web01/p1/etc/missing"], "no such file"),
        (&["ls", "web01@latest", "web01"], "<disk>/<volume>/<path inside>"),
        (&["restore", "files", "web01@latest", "web01/p1/nope", "--to", "/tmp/strata-guest-never"], "no such file"),
        (&["restore", "files", "web01@latest", "--to", "/tmp/strata-guest-never"], "name guest paths"),
        (&["restore", "files", "web01@latest", "web01/p5/grub", "--to", "/tmp/strata-guest-never"], "contains itself"),
    ];
    for (args, message) in cases {
        let out = t.run(args);
        assert_ne!(out.status.code(), Some(0), "{args:?} succeeded");
        assert!(stderr_of(&out).contains(message), "{args:?}: {}", stderr_of(&out));
    }
    assert!(!Path::new("/tmp/strata-guest-never").exists(), "a refused restore wrote its target");
    // ls -R names the loop and goes on; the rest of the volume lists.
    let out = t.run(&["ls", "-R", "web01@latest", "web01/p5/"]);
    assert!(stderr_of(&out).contains("contains itself"), "{}", stderr_of(&out));
    let listed = stdout_of(&out);
    assert!(listed.contains("web01/p5/vmlinuz") && listed.contains("web01/p5/grub/grub.cfg"), "{listed}");
}

/// The mount's `guest/` folder: each disk's volumes, the guest's tree with
/// its own metadata (hard links share an inode, xattrs read back), files
/// read byte for byte, and volumes without files as empty folders.
#[test]
fn the_mount_shows_guest_files_with_their_metadata() {
    if !crate::mount::fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let Some((src, _)) = guest_vm(&t) else { return };
    let mnt = t.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = crate::mount::MountGuard::mount(&t, &mnt);
    let guest = mnt.join("vms/web01/latest/guest");
    let disks: Vec<String> = sorted_names(&guest);
    assert_eq!(disks, ["web01", "web01_1"]);
    assert_eq!(sorted_names(&guest.join("web01")), ["p1", "p3", "p5", "p6"]);
    // Volumes without files are empty folders; the rest of the disk reads.
    assert!(sorted_names(&guest.join("web01/p3")).is_empty());
    assert!(sorted_names(&guest.join("web01/p6")).is_empty());
    assert!(sorted_names(&guest.join("web01_1/p1")).is_empty());
    assert_eq!(std::fs::read(guest.join("web01/p5/vmlinuz")).unwrap(), b"kernel");
    assert_eq!(std::fs::read(guest.join("web01_1/p3/EFI/BOOT/BOOTX64.EFI")).unwrap(), b"MZ efi loader");
    // A directory loop of a damaged volume: find ends, naming it.
    let find = Command::new("find").arg(guest.join("web01/p5")).output().unwrap();
    let found = stdout_of(&find);
    assert!(found.contains("grub/grub.cfg") && found.lines().count() < 20, "{found}{}", stderr_of(&find));
    let root = guest.join("web01/p1");
    assert_same_tree(&src.join("etc"), &root.join("etc"));
    assert_same_tree(&src.join("var"), &root.join("var"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(root.join("var/www/big.bin")).unwrap().ino(),
        std::fs::metadata(root.join("var/www/big-link.bin")).unwrap().ino(),
        "hard links share an inode"
    );
    // The census of attribute names covers guests too: a name no file of
    // the mount has is "not supported" (so `ls -l` stops asking every
    // file), a name a guest file has is "no data" on the others.
    use crate::mount_xattr_probes::{probe, wait_for_errno};
    wait_for_errno(&root.join("var/www/big.bin"), "security.selinux", libc::EOPNOTSUPP);
    assert_eq!(probe(&root.join("var/www/big.bin"), "user.origin").0, libc::ENODATA);
    assert_eq!(probe(&root.join("etc/nginx/nginx.conf"), "user.origin"), (0, b"guest".to_vec()));
    // `cp` out of the mount, as a person copying one file would.
    let copied = t.path("copied.conf");
    run(Command::new("cp").arg(root.join("etc/nginx/nginx.conf")).arg(&copied));
    assert_eq!(std::fs::read(&copied).unwrap(), b"worker_processes 4;\n");
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A file system image mounted on the host to be filled (the kernel's
/// XFS, ntfs-3g, exfat-fuse), unmounted and its loop device detached on
/// drop, also when filling fails.
struct FillMount {
    at: PathBuf,
    loop_device: Option<String>,
}

impl Drop for FillMount {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.at).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        if let Some(device) = &self.loop_device {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
    }
}

/// An image of `mib` MiB made by `mkfs` (the image's path is its last
/// argument), mounted by `mount` (the image, or a loop device of it where
/// the driver wants a block device, and the mount point are appended) and
/// filled with a copy of `src`.
#[allow(clippy::too_many_arguments)]
fn filled_image(dir: &Path, name: &str, mib: u64, mkfs: &[&str], mount: &[&str], on_loop: bool, copy: &[&str], src: &Path) -> PathBuf {
    let img = dir.join(format!("{name}.img"));
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&img));
    let at = dir.join(format!("{name}.mnt"));
    std::fs::create_dir_all(&at).unwrap();
    let loop_device = on_loop.then(|| {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
        assert!(out.status.success(), "losetup: {}", stderr_of(&out));
        stdout_of(&out).trim().to_string()
    });
    let mounted = FillMount { at: at.clone(), loop_device };
    let device = mounted.loop_device.clone().map_or(img.clone(), PathBuf::from);
    let status = Command::new(mount[0]).args(&mount[1..]).arg(&device).arg(&at).status().unwrap();
    assert!(status.success(), "{mount:?} {}", device.display());
    run(Command::new("cp").args(copy).arg(format!("{}/.", src.display())).arg(&at));
    drop(mounted);
    img
}

/// Writes `img` into `disk` at byte `offset`.
fn place(img: &Path, disk: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let disk = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let bytes = std::fs::read(img).unwrap();
    // Only the non-zero 64 KiB pieces: the disk stays sparse.
    for (i, piece) in bytes.chunks(64 << 10).enumerate() {
        if piece.iter().any(|&b| b != 0) {
            disk.write_all_at(piece, offset + (i as u64) * (64 << 10)).unwrap();
        }
    }
}

/// Every file's content and every symlink's target below `expected`, the
/// same below `actual` (for file systems that keep no Unix modes).
fn assert_same_content(expected: &Path, actual: &Path) {
    let mut want: Vec<String> = std::fs::read_dir(expected).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    want.sort();
    assert_eq!(sorted_names(actual), want, "entries of {}", actual.display());
    for name in want {
        let (e, a) = (expected.join(&name), actual.join(&name));
        let meta = std::fs::symlink_metadata(&e).unwrap();
        if meta.is_dir() {
            assert_same_content(&e, &a);
        } else if meta.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&e).unwrap(), std::fs::read_link(&a).unwrap(), "{}", a.display());
        } else {
            assert!(std::fs::read(&e).unwrap() == std::fs::read(&a).unwrap(), "content of {}", a.display());
        }
    }
}

/// A RHEL-like volume (XFS, filled through the kernel's driver with `cp
/// -a`: owners, modes, times, xattrs, links), a Windows one (NTFS through
/// ntfs-3g) and an exFAT one (through exfat-fuse) on one GPT disk of a VM:
/// shown, restored by guest path and read through the mount.
#[test]
fn xfs_ntfs_and_exfat_guests_are_shown_restored_and_mounted() {
    let tools = ["sgdisk", "mkfs.xfs", "mkntfs", "ntfs-3g", "mkfs.exfat", "mount.exfat-fuse", "qemu-img"];
    if !is_root() || !tools.iter().all(|t| have(t)) || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root, /dev/fuse, loop devices and {tools:?} (tools/setup installs them)");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("guest-src");
    guest_tree(&src);
    let small = t.path("small-src");
    std::fs::create_dir_all(small.join("EFI/BOOT")).unwrap();
    std::fs::write(small.join("EFI/BOOT/BOOTX64.EFI"), b"MZ efi loader").unwrap();
    std::fs::write(small.join("Photo 2026 – Zürich.jpg"), random_bytes(&mut rand::rngs::SmallRng::seed_from_u64(17), 300_000)).unwrap();
    let dir = t.path(".");
    let xfs = filled_image(&dir, "rhel", 300, &["mkfs.xfs", "-q", "-L", "root"], &["mount"], true, &["-a"], &src);
    let copy = ["-R", "--preserve=timestamps,links", "--no-dereference"];
    let ntfs = filled_image(&dir, "win", 32, &["mkntfs", "-F", "-Q", "-q", "-L", "Windows"], &["ntfs-3g"], false, &copy, &src);
    let exfat = filled_image(&dir, "usb", 16, &["mkfs.exfat", "-L", "STICK"], &["mount.exfat-fuse"], true, &["-R"], &small);
    let raw = t.path("win01.raw");
    std::fs::File::create(&raw).unwrap().set_len(352 << 20).unwrap();
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+300M", "-n", "2:0:+32M", "-n", "3:0:+16M"]).arg(&raw));
    let mib = 1u64 << 20;
    place(&xfs, &raw, mib);
    place(&ntfs, &raw, 301 * mib);
    place(&exfat, &raw, 333 * mib);
    let folder = t.path("vms/win01");
    std::fs::create_dir_all(&folder).unwrap();
    crate::vm::convert(&raw, "monolithicSparse", &folder.join("win01.vmdk"));
    std::fs::write(folder.join("win01.vmx"), "displayName = \"win01\"\nguestOS = \"windows2019srv-64\"\nscsi0:0.fileName = \"win01.vmdk\"\n").unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);

    let shown = t.json(&["show", "win01@latest"]);
    let volumes = shown["vm"]["guest"][0]["volumes"].as_array().unwrap().clone();
    let described: Vec<(&str, &str, &str)> = volumes
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["filesystem"].as_str().unwrap_or(""), v["label"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(described, [("p1", "xfs", "root"), ("p2", "ntfs", "Windows"), ("p3", "exfat", "STICK")], "{shown:#}");

    // XFS keeps everything a Linux tree has: compared in full.
    let target = t.path("restored");
    let out = t.json(&["restore", "files", "win01@latest", "win01/p1/etc", "win01/p1/var", "win01/p3/EFI", "--to", target.to_str().unwrap()]);
    assert_eq!(out["failed"].as_array().unwrap().len(), 0, "{out}");
    assert_same_tree(&src.join("etc"), &target.join("etc"));
    assert_same_tree(&src.join("var"), &target.join("var"));
    // NTFS's and exFAT's files restore by content (they keep no Unix modes).
    let ntfs_target = t.path("restored-ntfs");
    t.ok(&["restore", "files", "win01@latest", "win01/p2/etc", "win01/p2/var", "--to", ntfs_target.to_str().unwrap()]);
    assert_same_content(&src.join("etc"), &ntfs_target.join("etc"));
    assert_same_content(&src.join("var"), &ntfs_target.join("var"));
    assert_same_content(&small.join("EFI"), &target.join("EFI"));

    if !crate::mount::fuse_available() {
        return;
    }
    let mnt = t.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = crate::mount::MountGuard::mount(&t, &mnt);
    let guest = mnt.join("vms/win01/latest/guest/win01");
    assert_eq!(sorted_names(&guest), ["p1", "p2", "p3"]);
    assert_same_tree(&src.join("var"), &guest.join("p1/var"));
    assert_same_content(&src.join("etc"), &guest.join("p2/etc"));
    assert_same_content(&small, &guest.join("p3"));
}
