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
