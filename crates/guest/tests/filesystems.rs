//! Guest file systems made by their own tools from a known source tree
//! (`mke2fs -d` for ext2, ext3 and ext4 in several layouts), read back by
//! Strata's readers and compared with the tree entry by entry: kind,
//! mode, owner, size, modification time, content, symlink target, hard
//! links sharing a node, extended attributes and ACLs. Damaged images
//! (flipped bytes in the metadata) give errors or data, never a panic.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strata_guest::fs::{self, FileKind, GuestFs, NodeId};
use strata_guest::probe::Content;
use strata_guest::source::{ByteSource, Window};
use strata_guest::volume::volumes;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!("strata-guestfs-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic noise.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The source tree every image is made from.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/nginx/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::create_dir_all(root.join("many")).unwrap();
    std::fs::write(root.join("etc/nginx/nginx.conf"), b"worker_processes 4;\n").unwrap();
    std::fs::write(root.join("etc/hostname"), b"web01\n").unwrap();
    std::fs::write(root.join("var/log/big.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    // A sparse file: holes of 5 and 2 MiB around 1 MiB of data, and a
    // little at its end (mke2fs 1.47 with inline_data drops a trailing
    // hole from the size, as debugfs shows: not what this test is about).
    let sparse = std::fs::File::create(root.join("sparse.img")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(2, 1 << 20), 5 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(3, 4096), 8 << 20).unwrap();
    for i in 0..400 {
        std::fs::write(root.join(format!("many/file-with-a-longish-name-{i:04}")), format!("{i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("nginx/nginx.conf", root.join("etc/short-link")).unwrap();
    let long = format!("{}/target", "a-long-directory-name".repeat(5));
    std::os::unix::fs::symlink(&long, root.join("etc/long-link")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("var/hostname-link")).unwrap();
    std::fs::set_permissions(root.join("etc/hostname"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(root.join("var/log"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    xattr_set(&root.join("etc/nginx/nginx.conf"), "user.test", b"hello");
    if is_root() {
        run(Command::new("chown").args(["1234:5678"]).arg(root.join("etc/hostname")));
        run(Command::new("mkfifo").arg(root.join("var/fifo")));
        if have("setfacl") {
            run(Command::new("setfacl").args(["-m", "u:1001:r"]).arg(root.join("etc/nginx/nginx.conf")));
        }
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer has the length given.
    let n = unsafe { llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe { lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(len >= 0);
        value.truncate(len as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

extern "C" {
    fn setxattr(path: *const i8, name: *const i8, value: *const std::ffi::c_void, size: usize, flags: i32) -> i32;
    fn llistxattr(path: *const i8, list: *mut i8, size: usize) -> isize;
    fn lgetxattr(path: *const i8, name: *const i8, value: *mut std::ffi::c_void, size: usize) -> isize;
}

/// The image at byte 1 MiB of a disk padded with 0xAA before and 0x55
/// after, so a read outside the volume shows.
fn on_disk(img: &Path) -> Arc<dyn ByteSource> {
    let mut disk = vec![0xAAu8; 1 << 20];
    disk.extend(std::fs::read(img).unwrap());
    disk.extend(vec![0x55u8; 1 << 20]);
    Arc::new(disk)
}

fn window(img: &Path) -> Window {
    let len = std::fs::metadata(img).unwrap().len();
    Window::range(on_disk(img), 1 << 20, len).unwrap()
}

/// Compares the guest tree under `node` with `src`, entry by entry.
fn compare(fs: &dyn GuestFs, node: NodeId, src: &Path, links: &mut BTreeMap<u64, NodeId>, owners: bool) -> usize {
    let mut seen = 0;
    let listed = fs.read_dir(node).unwrap();
    let mut expected: Vec<_> = std::fs::read_dir(src).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
    expected.sort();
    let mut names: Vec<_> = listed.iter().map(|e| e.name.clone()).collect();
    names.sort();
    let expected: Vec<_> = expected.into_iter().filter(|n| n != b"lost+found").collect();
    let names: Vec<_> = names.into_iter().filter(|n| n != b"lost+found").collect();
    assert_eq!(names, expected, "entries of {}", src.display());
    for entry in listed.iter().filter(|e| e.name != b"lost+found") {
        let path = src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&entry.name));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let stat = fs.stat(entry.node).unwrap();
        let what = path.display().to_string();
        assert_eq!(stat.mode, meta.mode() & 0o7777, "mode of {what}");
        if owners {
            assert_eq!((stat.uid, stat.gid), (meta.uid(), meta.gid()), "owner of {what}");
        }
        assert_eq!(stat.mtime.sec, meta.mtime(), "mtime of {what}");
        seen += 1;
        let ft = meta.file_type();
        if ft.is_dir() {
            assert_eq!(stat.kind, FileKind::Dir, "{what}");
            seen += compare(fs, entry.node, &path, links, owners);
        } else if ft.is_symlink() {
            assert_eq!(stat.kind, FileKind::Symlink, "{what}");
            assert_eq!(fs.read_link(entry.node).unwrap(), std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes(), "{what}");
        } else if ft.is_file() {
            assert_eq!(stat.kind, FileKind::File, "{what}");
            assert_eq!(stat.size, meta.len(), "size of {what} in {}", fs.describe().1.unwrap_or_default());
            let want = std::fs::read(&path).unwrap();
            // Read in odd pieces, across block and extent boundaries.
            let mut got = Vec::new();
            let mut buf = vec![0u8; 70_001];
            loop {
                let n = fs.read_at(entry.node, got.len() as u64, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == want, "content of {what}");
            assert_eq!(stat.nlink as u64, meta.nlink(), "links of {what}");
            if meta.nlink() > 1 {
                let first = *links.entry(meta.ino()).or_insert(entry.node);
                assert_eq!(first, entry.node, "hard links of {what} share a node");
            }
            let want_xattrs = xattrs_of(&path);
            let got_xattrs: BTreeMap<_, _> = fs.xattrs(entry.node).unwrap().into_iter().collect();
            assert_eq!(got_xattrs, want_xattrs, "xattrs of {what}");
        } else if ft.file_type_is_fifo() {
            assert_eq!(stat.kind, FileKind::Fifo, "{what}");
        }
    }
    seen
}

trait FifoType {
    fn file_type_is_fifo(&self) -> bool;
}

impl FifoType for std::fs::FileType {
    fn file_type_is_fifo(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

fn mke2fs(dir: &Path, src: &Path, name: &str, options: &[&str], mib: u64) -> PathBuf {
    let img = dir.join(format!("{name}.img"));
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-L", name, "-d"]).arg(src).args(options).arg(&img).arg(format!("{mib}M"));
    run(&mut cmd);
    img
}

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
    let original = std::fs::read(&img).unwrap();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // The metadata mke2fs writes first: superblock, descriptors, bitmaps,
    // inode tables, the root and early directories.
    let metadata_end = original.len().min(2 << 20);
    for round in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 6 {
            let at = (next() % metadata_end as u64) as usize;
            bytes[at] = next() as u8;
        }
        if round == 0 {
            // The superblock's magic itself.
            bytes[1024 + 56] ^= 0xff;
        }
        let len = bytes.len() as u64;
        let device = Window::range(Arc::new(bytes), 0, len).unwrap();
        let Ok(fs) = fs::open(Content::Ext, device, "damaged") else { continue };
        walk(fs.as_ref(), fs.root(), 0);
    }

    fn walk(fs: &dyn GuestFs, node: NodeId, depth: usize) {
        if depth > 8 {
            return;
        }
        let Ok(entries) = fs.read_dir(node) else { return };
        for e in entries.into_iter().take(50) {
            let Ok(stat) = fs.stat(e.node) else { continue };
            let _ = fs.xattrs(e.node);
            match stat.kind {
                FileKind::Dir => walk(fs, e.node, depth + 1),
                FileKind::Symlink => {
                    let _ = fs.read_link(e.node);
                }
                FileKind::File => {
                    let mut buf = vec![0u8; 65536];
                    let _ = fs.read_at(e.node, 0, &mut buf);
                    let _ = fs.read_at(e.node, stat.size.saturating_sub(100), &mut buf);
                }
                _ => {}
            }
        }
    }
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

fn walk_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_paths(&p));
        }
        out.push(p);
    }
    out
}

fn compare_fat(fs: &dyn GuestFs, node: NodeId, src: &Path) -> usize {
    let mut seen = 0;
    let mut listed: Vec<_> = fs.read_dir(node).unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut expected: Vec<_> = std::fs::read_dir(src).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
    expected.sort();
    assert_eq!(listed.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), expected, "{}", src.display());
    for entry in listed {
        let path = src.join(String::from_utf8(entry.name.clone()).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        let stat = fs.stat(entry.node).unwrap();
        assert_eq!(stat.mtime.sec, meta.mtime(), "mtime of {}", path.display());
        seen += 1;
        if meta.is_dir() {
            assert_eq!(stat.kind, FileKind::Dir);
            seen += compare_fat(fs, entry.node, &path);
        } else {
            assert_eq!((stat.kind, stat.size, stat.mode), (FileKind::File, meta.len(), 0o644));
            let mut got = vec![0u8; meta.len() as usize + 10];
            let mut done = 0;
            while done < got.len() {
                let n = fs.read_at(entry.node, done as u64, &mut got[done..]).unwrap();
                if n == 0 {
                    break;
                }
                done += n;
            }
            got.truncate(done);
            assert!(got == std::fs::read(&path).unwrap(), "content of {}", path.display());
        }
    }
    seen
}

/// Flipped bytes in a FAT32 volume's boot sector, FATs and directories:
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
    let original = std::fs::read(&img).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let metadata_end = original.len().min(1 << 20);
    for _ in 0..200 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 6 {
            let at = (next() % metadata_end as u64) as usize;
            bytes[at] = next() as u8;
        }
        let len = bytes.len() as u64;
        let Ok(fs) = fs::open(Content::Fat, Window::range(Arc::new(bytes), 0, len).unwrap(), "damaged") else { continue };
        let mut stack = vec![(fs.root(), 0usize)];
        while let Some((node, depth)) = stack.pop() {
            let Ok(entries) = fs.read_dir(node) else { continue };
            for e in entries.into_iter().take(64) {
                let Ok(stat) = fs.stat(e.node) else { continue };
                if stat.kind == FileKind::Dir && depth < 70 {
                    stack.push((e.node, depth + 1));
                } else {
                    let mut buf = vec![0u8; 65536];
                    let _ = fs.read_at(e.node, 0, &mut buf);
                }
            }
        }
    }
}

fn source_tree_small(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("dir/sub/file.txt"), noise(9, 50_000)).unwrap();
    std::fs::write(root.join("top.bin"), noise(10, 200_000)).unwrap();
    for i in 0..30 {
        std::fs::write(root.join(format!("dir/f{i}")), format!("{i}")).unwrap();
    }
}
