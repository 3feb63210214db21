//! Guest file systems made by their own tools from a known source tree
//! (`mke2fs -d` for ext2, ext3 and ext4 in several layouts), read back by
//! Strata's readers and compared with the tree entry by entry: kind,
//! mode, owner, size, modification time, content, symlink target, hard
//! links sharing a node, extended attributes and ACLs. Damaged images
//! (flipped bytes in the metadata) give errors or data, never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use strata_guest::fs;
use strata_guest::probe::Content;
use strata_guest::source::ByteSource;
use strata_guest::volume::volumes;

#[test]
fn ext2_ext3_and_ext4_in_their_layouts_read_back_as_their_source() {
    if !have("mke2fs") {
        eprintln!("skipped: mke2fs is not installed (tools/setup installs e2fsprogs)");
        return;
    }
    let dir = TempDir::new("ext");
    let src = dir.0.join("src");
    source_tree(&src);
    let layouts: &[(&str, &[&str])] = &[
        ("ext2", &["-t", "ext2"]),
        ("ext3", &["-t", "ext3"]),
        ("ext4", &["-t", "ext4"]),
        ("ext4-1k", &["-t", "ext4", "-b", "1024"]),
        ("ext4-32bit", &["-t", "ext4", "-O", "^64bit"]),
        ("ext4-64bit", &["-t", "ext4", "-O", "64bit"]),
        ("ext4-inline", &["-t", "ext4", "-O", "inline_data", "-I", "256"]),
        ("ext4-meta-bg", &["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024"]),
        ("ext4-128", &["-t", "ext4", "-I", "128"]),
    ];
    for (name, options) in layouts {
        let img = mke2fs(&dir.0, &src, name, options, 48);
        if *name == "ext4" {
            // Index every directory (htree), as a guest's kernel does
            // for large ones: e2fsck -D rebuilds them indexed.
            let status = Command::new("e2fsck").args(["-fyD"]).arg(&img).output().unwrap().status;
            assert!(status.code().is_some_and(|c| c <= 1), "e2fsck -fyD: {status}");
            let htree = Command::new("debugfs").args(["-R", "htree /many"]).arg(&img).output().unwrap();
            assert!(String::from_utf8_lossy(&htree.stdout).contains("Root node dump"), "/many is not indexed");
        }
        let device = window(&img);
        let vols = volumes(on_disk(&img), name);
        let fs = fs::open(Content::Ext, device, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fs.describe(), (Content::Ext, Some(name.to_string())));
        let mut links = BTreeMap::new();
        // With 128-byte inodes mke2fs keeps no nanoseconds and no room
        // for in-inode attributes; owners need root to set.
        let entries = compare(fs.as_ref(), fs.root(), &src, &mut links, is_root());
        assert!(entries > 400, "{name}: {entries}");
        assert!(!vols.is_empty());
        let node = fs::lookup(fs.as_ref(), "/etc/nginx/nginx.conf").unwrap();
        assert_eq!(fs.stat(node).unwrap().size, 20, "{name}");
        assert!(matches!(fs::lookup(fs.as_ref(), "/etc/nope"), Err(strata_guest::Error::NotFound(_))));
        assert!(matches!(fs::lookup(fs.as_ref(), "/etc/hostname/x"), Err(strata_guest::Error::NotADirectory(_))));
    }
}

/// An image whose volume is the whole disk: `whole`, found by the probe.
#[test]
fn a_file_system_on_the_whole_disk_is_the_volume_whole() {
    if !have("mke2fs") {
        return;
    }
    let dir = TempDir::new("whole");
    let src = dir.0.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let img = mke2fs(&dir.0, &src, "whole", &["-t", "ext4"], 8);
    let disk: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(&img).unwrap());
    let vols = volumes(disk, "whole");
    assert_eq!(vols.len(), 1);
    assert_eq!((vols[0].name.as_str(), vols[0].content, vols[0].problem.as_deref()), ("whole", Content::Ext, None));
}

/// Flipped bytes in the superblock, group descriptors, inode tables and
/// directory blocks: each open, listing and read gives data or an error.
#[test]
fn damaged_ext4_images_give_errors_never_panics() {
    if !have("mke2fs") {
        return;
    }
    let dir = TempDir::new("damaged");
    let src = dir.0.join("src");
    source_tree(&src);
    let img = mke2fs(&dir.0, &src, "ext4", &["-t", "ext4", "-b", "1024"], 24);
    // The metadata mke2fs writes first: superblock, descriptors, bitmaps,
    // inode tables, the root and early directories; round 0 also breaks
    // the superblock's magic.
    flip_rounds(Content::Ext, &std::fs::read(&img).unwrap(), 300, 2 << 20, 0x1234_5678_9abc_def0, |b| b[1024 + 56] ^= 0xff);
}

/// FAT12, FAT16 and FAT32 from `mkfs.vfat` and `mcopy`: names (long ones
/// too), sizes, content and modification times (FAT keeps two-second
/// steps, in local time: the tools run in UTC here).
#[test]
fn fat12_fat16_and_fat32_read_back_as_their_source() {
    if !have("mkfs.vfat") || !have("mcopy") {
        eprintln!("skipped: FAT tests need dosfstools and mtools (tools/setup installs them)");
        return;
    }
    let dir = TempDir::new("fat");
    let src = dir.0.join("src");
    std::fs::create_dir_all(src.join("EFI/BOOT")).unwrap();
    std::fs::create_dir_all(src.join("a directory with a long name/and another one")).unwrap();
    std::fs::write(src.join("EFI/BOOT/BOOTX64.EFI"), noise(7, 300_000)).unwrap();
    std::fs::write(src.join("a directory with a long name/and another one/Mixed Case File.txt"), b"hello fat\n").unwrap();
    std::fs::write(src.join("big.bin"), noise(8, 3 << 20)).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("file-{i:02}.cfg")), format!("{i}\n")).unwrap();
    }
    // Whole, even seconds: what FAT can keep.
    let stamp = |p: &Path| run(Command::new("touch").args(["-d", "@1700000000"]).arg(p));
    for p in walk_paths(&src) {
        stamp(&p);
    }
    for (name, fat, kib) in [("fat12", "12", 8192u64), ("fat16", "16", 32768), ("fat32", "32", 65536)] {
        let img = dir.0.join(format!("{name}.img"));
        run(Command::new("mkfs.vfat").args(["-F", fat, "-n", &name.to_uppercase(), "-C"]).arg(&img).arg(kib.to_string()));
        let entries: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
        run(Command::new("mcopy").env("TZ", "UTC").args(["-s", "-m", "-i"]).arg(&img).args(&entries).arg("::/"));
        let fs = fs::open(Content::Fat, window(&img), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fs.describe(), (Content::Fat, Some(name.to_uppercase())));
        let seen = compare_fat(fs.as_ref(), fs.root(), &src);
        assert_eq!(seen, walk_paths(&src).len(), "{name}");
        let node = fs::lookup(fs.as_ref(), "/a directory with a long name/and another one/Mixed Case File.txt").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(fs.read_at(node, 6, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"fat\n");
        let disk: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(&img).unwrap());
        let vols = volumes(disk, name);
        assert_eq!((vols[0].name.as_str(), vols[0].content), ("whole", Content::Fat));
    }
}
/// errors or data, never a panic.
#[test]
fn damaged_fat_volumes_give_errors_never_panics() {
    if !have("mkfs.vfat") || !have("mcopy") {
        return;
    }
    let dir = TempDir::new("fat-damaged");
    let src = dir.0.join("src");
    source_tree_small(&src);
    let img = dir.0.join("fat.img");
    run(Command::new("mkfs.vfat").args(["-F", "32", "-C"]).arg(&img).arg("40000"));
    let entries: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    run(Command::new("mcopy").args(["-s", "-i"]).arg(&img).args(&entries).arg("::/"));
    flip_rounds(Content::Fat, &std::fs::read(&img).unwrap(), 200, 1 << 20, 0x9e37_79b9_7f4a_7c15, |_| {});
}


/// Two FAT entries whose names differ only in case (a crafted or damaged
/// volume: FAT compares names without case): each reads as itself, never
/// as the other, though FAT's own lookup would find the first for both.
#[test]
fn fat_entries_differing_only_in_case_read_as_themselves() {
    if !have("mkfs.vfat") || !have("mcopy") {
        return;
    }
    let dir = TempDir::new("fat-case");
    let (first, second) = (dir.0.join("AAAA.TXT"), dir.0.join("BBBB.TXT"));
    std::fs::write(&first, b"first\n").unwrap();
    std::fs::write(&second, b"second!\n").unwrap();
    let img = dir.0.join("fat.img");
    run(Command::new("mkfs.vfat").args(["-F", "12", "-C"]).arg(&img).arg("4096"));
    run(Command::new("mcopy").arg("-i").arg(&img).arg(&first).arg(&second).arg("::/"));
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes.windows(11).position(|w| w == b"BBBB    TXT").expect("the second entry");
    bytes[at..at + 4].copy_from_slice(b"AAAA");
    // NT's flags for a lowercase base name and extension: "aaaa.txt".
    bytes[at + 12] |= 0x18;
    std::fs::write(&img, bytes).unwrap();
    let fs = fs::open(Content::Fat, window(&img), "fat").unwrap();
    let mut names: Vec<_> = fs.read_dir(fs.root()).unwrap().into_iter().map(|e| String::from_utf8(e.name).unwrap()).collect();
    names.sort();
    assert_eq!(names, ["AAAA.TXT", "aaaa.txt"]);
    assert_eq!(read_all(fs.as_ref(), fs::lookup(fs.as_ref(), "/aaaa.txt").unwrap(), 100), b"second!\n");
    assert_eq!(read_all(fs.as_ref(), fs::lookup(fs.as_ref(), "/AAAA.TXT").unwrap(), 100), b"first\n");
}
