//! What the guest file system tests share: a known source tree, the
//! comparison of a guest tree with it, images on a padded disk, and
//! byte-flip rounds that must give errors or data, never a panic.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strata_guest::fs::{self, FileKind, GuestFs, NodeId};
use strata_guest::probe::Content;
use strata_guest::source::{ByteSource, Window};



pub fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
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
pub fn source_tree(root: &Path) {
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

pub fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

pub fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
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
pub fn on_disk(img: &Path) -> Arc<dyn ByteSource> {
    let mut disk = vec![0xAAu8; 1 << 20];
    disk.extend(std::fs::read(img).unwrap());
    disk.extend(vec![0x55u8; 1 << 20]);
    Arc::new(disk)
}

pub fn window(img: &Path) -> Window {
    let len = std::fs::metadata(img).unwrap().len();
    Window::range(on_disk(img), 1 << 20, len).unwrap()
}

/// Compares the guest tree under `node` with `src`, entry by entry.
pub fn compare(fs: &dyn GuestFs, node: NodeId, src: &Path, links: &mut BTreeMap<u64, NodeId>, owners: bool) -> usize {
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

pub trait FifoType {
    fn file_type_is_fifo(&self) -> bool;
}

impl FifoType for std::fs::FileType {
    fn file_type_is_fifo(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

pub fn mke2fs(dir: &Path, src: &Path, name: &str, options: &[&str], mib: u64) -> PathBuf {
    let img = dir.join(format!("{name}.img"));
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-L", name, "-d"]).arg(src).args(options).arg(&img).arg(format!("{mib}M"));
    run(&mut cmd);
    img
}


pub fn walk_paths(root: &Path) -> Vec<PathBuf> {
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

/// The entries of guest directory `node`, by name, once their names are
/// found to be exactly those of `src`'s entries.
pub fn listing_of(fs: &dyn GuestFs, node: NodeId, src: &Path) -> Vec<strata_guest::fs::DirEntry> {
    let mut listed = fs.read_dir(node).unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut expected: Vec<_> = std::fs::read_dir(src).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
    expected.sort();
    assert_eq!(listed.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), expected, "entries of {}", src.display());
    listed
}

pub fn compare_fat(fs: &dyn GuestFs, node: NodeId, src: &Path) -> usize {
    let mut seen = 0;
    let listed = listing_of(fs, node, src);
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

/// A small tree for the damage tests.
pub fn source_tree_small(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("dir/sub/file.txt"), noise(9, 50_000)).unwrap();
    std::fs::write(root.join("top.bin"), noise(10, 200_000)).unwrap();
    for i in 0..30 {
        std::fs::write(root.join(format!("dir/f{i}")), format!("{i}")).unwrap();
    }
}

/// Deterministic xorshift numbers for byte-flip rounds.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// `rounds` copies of `original`, each with one to six bytes of its
/// first `metadata_end` bytes replaced, opened as `content` and walked
/// whole: every open, listing, stat and read must give data or an error,
/// never a panic or a hang. `first` may damage round 0 on purpose.
pub fn flip_rounds(content: Content, original: &[u8], rounds: usize, metadata_end: usize, seed: u64, first: impl Fn(&mut [u8])) {
    flip_rounds_in(content, original, rounds, std::slice::from_ref(&(0..metadata_end)), seed, first)
}

/// [`flip_rounds`] with the bytes replaced drawn from `ranges`.
pub fn flip_rounds_in(content: Content, original: &[u8], rounds: usize, ranges: &[std::ops::Range<usize>], seed: u64, first: impl Fn(&mut [u8])) {
    let mut next = xorshift(seed);
    let ranges: Vec<_> = ranges.iter().map(|r| r.start.min(original.len())..r.end.min(original.len())).filter(|r| !r.is_empty()).collect();
    for round in 0..rounds {
        let mut bytes = original.to_vec();
        for _ in 0..1 + next() % 6 {
            let range = &ranges[(next() % ranges.len() as u64) as usize];
            let at = range.start + (next() % range.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if round == 0 {
            first(&mut bytes);
        }
        let len = bytes.len() as u64;
        let device = Window::range(Arc::new(bytes), 0, len).unwrap();
        let Ok(fs) = fs::open(content, device, "damaged") else { continue };
        walk_everything(fs.as_ref(), fs.root(), 0);
    }
}

/// Lists, stats and reads everything under `node` (to a bounded depth
/// and breadth), ignoring errors.
pub fn walk_everything(fs: &dyn GuestFs, node: NodeId, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs.read_dir(node) else { return };
    for e in entries.into_iter().take(64) {
        let Ok(stat) = fs.stat(e.node) else { continue };
        let _ = fs.xattrs(e.node);
        match stat.kind {
            FileKind::Dir => walk_everything(fs, e.node, depth + 1),
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

/// A file's bytes, read in pieces of `piece` bytes (odd sizes cross
/// block and extent boundaries).
pub fn read_all(fs: &dyn GuestFs, node: NodeId, piece: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let n = fs.read_at(node, got.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}
