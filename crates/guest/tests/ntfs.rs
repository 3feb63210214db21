//! NTFS volumes made by `mkntfs` and filled through `ntfs-3g` (the FUSE
//! driver Linux distributions ship) from a known source tree, read back by
//! Strata's NTFS reader and compared entry by entry: names (Unicode ones
//! too), kinds, sizes, content, modification times to NTFS's 100 ns,
//! symlinks (ntfs-3g writes them Interix-style), hard links sharing a
//! node, a directory large enough for a B-tree index, a sparse file, and
//! a device node. Compressed files are refused, never returned as the
//! compressed bytes. Damaged volumes give errors, never a panic.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use strata_guest::fs::{self, FileKind, GuestFs, NodeId};
use strata_guest::probe::Content;
use strata_guest::source::ByteSource;
use strata_guest::volume::volumes;

/// An image mounted through ntfs-3g, unmounted on drop (also when a test
/// fails while it is mounted).
struct Mounted(PathBuf);

impl Mounted {
    fn new(img: &Path, at: &Path, options: &str) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("ntfs-3g").args(["-o", options]).arg(img).arg(at));
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn tools_missing() -> bool {
    if !have("mkntfs") || !have("ntfs-3g") || !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: NTFS tests need ntfs-3g (tools/setup installs it), root and /dev/fuse");
        return true;
    }
    false
}

/// An NTFS image of `mib` MiB labelled `label`, filled by `fill` through
/// an ntfs-3g mount with `options`.
fn ntfs_image(dir: &Path, label: &str, mib: u64, options: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let img = dir.join(format!("{label}.img"));
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    run(Command::new("mkntfs").args(["-F", "-Q", "-q", "-L", label]).arg(&img));
    let mounted = Mounted::new(&img, &dir.join(format!("{label}.mnt")), options);
    fill(&mounted.0);
    drop(mounted);
    img
}

/// A Windows-like tree: what ntfs-3g can hold (no owners, modes or
/// FIFOs), with times in whole 100 ns steps.
fn windows_tree(root: &Path) {
    std::fs::create_dir_all(root.join("Users/Public/Documents")).unwrap();
    std::fs::create_dir_all(root.join("Windows/System32/drivers/etc")).unwrap();
    std::fs::create_dir_all(root.join("many")).unwrap();
    std::fs::write(root.join("Windows/System32/drivers/etc/hosts"), b"127.0.0.1 localhost\r\n").unwrap();
    std::fs::write(root.join("Users/Public/Documents/Zürich – café.txt"), "grüße\n").unwrap();
    std::fs::write(root.join("Users/Public/Documents/report.bin"), noise(11, 3 << 20)).unwrap();
    std::fs::write(root.join("pagefile-like.bin"), noise(12, 700)).unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    let sparse = std::fs::File::create(root.join("sparse.vhd")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(13, 1 << 20), 6 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(14, 5000), 9 << 20).unwrap();
    for i in 0..600 {
        std::fs::write(root.join(format!("many/log-{i:04}.txt")), format!("{i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("../../Windows/System32/drivers/etc/hosts", root.join("Users/Public/hosts-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("absolute-link")).unwrap();
    std::fs::hard_link(root.join("pagefile-like.bin"), root.join("Users/hard-link.bin")).unwrap();
    run(Command::new("mknod").arg(root.join("console")).args(["c", "5", "1"]));
    for (i, p) in walk_paths(root).into_iter().enumerate() {
        let stamp = format!("@1700000000.{:07}00", 1_234_567 + i);
        run(Command::new("touch").args(["-h", "-d", &stamp]).arg(&p));
    }
}

/// Copies `src` into the mounted volume `to`, keeping times, links and
/// sparse files.
fn copy_in(src: &Path, to: &Path) {
    run(Command::new("cp")
        .args(["-R", "--preserve=timestamps,links", "--sparse=always", "--no-dereference"])
        .arg(format!("{}/.", src.display()))
        .arg(to));
}

/// Compares the guest tree under `node` with `src`: names, kinds, sizes,
/// content, times and links. Returns the entries seen.
fn compare_ntfs(fs: &dyn GuestFs, node: NodeId, src: &Path, links: &mut std::collections::BTreeMap<u64, NodeId>) -> usize {
    let listed = listing_of(fs, node, src);
    let mut seen = 0;
    for entry in listed {
        let path = src.join(String::from_utf8(entry.name.clone()).unwrap());
        let what = path.display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let stat = fs.stat(entry.node).unwrap();
        assert_eq!((stat.mtime.sec, stat.mtime.nsec), (meta.mtime(), meta.mtime_nsec() as u32 / 100 * 100), "mtime of {what}");
        seen += 1;
        let ft = meta.file_type();
        if ft.is_dir() {
            assert_eq!((stat.kind, stat.mode), (FileKind::Dir, 0o755), "{what}");
            seen += compare_ntfs(fs, entry.node, &path, links);
        } else if std::os::unix::fs::FileTypeExt::is_char_device(&ft) {
            assert_eq!((stat.kind, stat.rdev), (FileKind::CharDevice, meta.rdev()), "{what}");
        } else if ft.is_symlink() {
            assert_eq!(stat.kind, FileKind::Symlink, "{what}");
            let target = std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes();
            assert_eq!(fs.read_link(entry.node).unwrap(), target, "{what}");
        } else {
            assert_eq!((stat.kind, stat.size, stat.mode), (FileKind::File, meta.len(), 0o644), "{what}");
            assert!(read_all(fs, entry.node, 70_001) == std::fs::read(&path).unwrap(), "content of {what}");
            assert_eq!(u64::from(stat.nlink), meta.nlink(), "links of {what}");
            if meta.nlink() > 1 {
                assert_eq!(*links.entry(meta.ino()).or_insert(entry.node), entry.node, "hard links of {what} share a node");
            }
        }
    }
    seen
}

#[test]
fn an_ntfs_volume_filled_by_ntfs_3g_reads_back_as_its_source() {
    if tools_missing() {
        return;
    }
    let dir = TempDir::new("ntfs");
    let src = dir.0.join("src");
    windows_tree(&src);
    let img = ntfs_image(&dir.0, "WINDISK", 48, "rw", |mnt| copy_in(&src, mnt));
    let fs = fs::open(Content::Ntfs, window(&img), "ntfs").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fs.describe(), (Content::Ntfs, Some("WINDISK".into())));
    let root_entries = fs.read_dir(fs.root()).unwrap();
    assert!(root_entries.iter().all(|e| !e.name.starts_with(b"$")), "system files are not shown");
    let seen = compare_ntfs(fs.as_ref(), fs.root(), &src, &mut std::collections::BTreeMap::new());
    assert_eq!(seen, walk_paths(&src).len());
    // The sparse file's holes read as zeros at any offset.
    let sparse = fs::lookup(fs.as_ref(), "/sparse.vhd").unwrap();
    let mut buf = vec![1u8; 4096];
    assert_eq!(fs.read_at(sparse, 3 << 20, &mut buf).unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 0));
    // A guest path through the Unicode name.
    let node = fs::lookup(fs.as_ref(), "/Users/Public/Documents/Zürich – café.txt").unwrap();
    assert_eq!(read_all(fs.as_ref(), node, 70_001), "grüße\n".as_bytes());

    let disk: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(&img).unwrap());
    let vols = volumes(disk, "ntfs");
    assert_eq!((vols[0].name.as_str(), vols[0].content), ("whole", Content::Ntfs));
}

#[test]
fn compressed_ntfs_files_are_refused_never_returned_compressed() {
    if tools_missing() {
        return;
    }
    let dir = TempDir::new("ntfs-compressed");
    let img = ntfs_image(&dir.0, "PACKED", 24, "rw,compression", |mnt| {
        std::fs::create_dir(mnt.join("packed")).unwrap();
        // FILE_ATTRIBUTE_COMPRESSED on the directory: files made in it
        // are compressed by ntfs-3g.
        xattr_set(&mnt.join("packed"), "system.ntfs_attrib_be", &0x0000_0800u32.to_be_bytes());
        std::fs::write(mnt.join("packed/text.log"), b"the same line again\n".repeat(20_000)).unwrap();
        std::fs::write(mnt.join("plain.txt"), b"plain\n").unwrap();
    });
    let fs = fs::open(Content::Ntfs, window(&img), "ntfs").unwrap();
    let packed = fs::lookup(fs.as_ref(), "/packed/text.log").unwrap();
    let stat = fs.stat(packed).unwrap();
    assert_eq!((stat.kind, stat.size), (FileKind::File, 400_000));
    let err = fs.read_at(packed, 0, &mut [0u8; 100]).unwrap_err().to_string();
    assert!(err.contains("compressed"), "{err}");
    let plain = fs::lookup(fs.as_ref(), "/plain.txt").unwrap();
    assert_eq!(read_all(fs.as_ref(), plain, 70_001), b"plain\n");
}

/// Flipped bytes in the boot sector, the MFT and the directory indexes:
/// each open, listing and read gives data or an error.
#[test]
fn damaged_ntfs_volumes_give_errors_never_panics() {
    if tools_missing() {
        return;
    }
    let dir = TempDir::new("ntfs-damaged");
    let src = dir.0.join("src");
    source_tree_small(&src);
    for i in 0..300 {
        std::fs::write(src.join(format!("dir/n{i:03}")), format!("{i}")).unwrap();
    }
    let img = ntfs_image(&dir.0, "DAMAGED", 16, "rw", |mnt| copy_in(&src, mnt));
    let original = std::fs::read(&img).unwrap();
    // Where the MFT lies: its cluster, by the boot sector.
    let cluster = u64::from(u16::from_le_bytes([original[11], original[12]])) * u64::from(original[13]);
    let mft = (u64::from_le_bytes(original[48..56].try_into().unwrap()) * cluster) as usize;
    // The boot sector, the MFT's first records (the root's and the
    // files'), and the directories' index blocks (B-tree nodes).
    let mut ranges = vec![0..512, mft..mft + (96 << 10)];
    ranges.extend(original.windows(4).enumerate().filter(|(i, w)| i % 512 == 0 && *w == b"INDX").map(|(i, _)| i..i + 4096));
    assert!(ranges.len() > 2, "the directories have index blocks");
    flip_rounds_in(Content::Ntfs, &original, 400, &ranges, 0x5eed_4e54_4653, |_| {});
}
