//! XFS file systems made by `mkfs.xfs` (v5 in several layouts, and v4)
//! and filled by the kernel through a loop mount (`cp -a` of the known
//! source tree, then directories, fragmented files, attributes and device
//! nodes made in place), or by `mkfs.xfs -p` from a prototype file where
//! the kernel cannot mount them (v4). Strata's reader reads them back and
//! they are compared entry by entry; damaged images give errors, never a
//! panic, and a flipped bit in a directory or B+tree block is an error,
//! never wrong bytes.
//!
//! Mounting needs root and a kernel with XFS: without them the tests that
//! need a mount say so and return.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use strata_guest::fs::{self, FileKind, GuestFs, NodeId};
use strata_guest::probe::Content;
use strata_guest::source::{ByteSource, Window};
use strata_guest::volume::volumes;

/// An image file of `mib` MiB made by `mkfs.xfs` with `options`, labelled
/// `label`. The variables let mkfs.xfs make file systems under 300 MiB
/// (it allows them for its own test suite).
fn mkfs(dir: &Path, label: &str, options: &[&str], mib: u64) -> PathBuf {
    let img = dir.join(format!("{label}.img"));
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    let mut cmd = Command::new("mkfs.xfs");
    cmd.envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")]);
    cmd.args(["-q", "-f", "-L", label]).args(options).arg(&img);
    run(&mut cmd);
    img
}

/// A loop mount of an image, unmounted (lazily if it is busy) on drop;
/// `mount -o loop` detaches its loop device at the unmount.
struct Mounted(PathBuf);

impl Mounted {
    fn new(img: &Path, at: &Path) -> Option<Mounted> {
        if !is_root() {
            eprintln!("skipped: mounting an XFS image needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-o", "loop"]).arg(img).arg(at).output().unwrap();
        if !out.status.success() {
            eprintln!("skipped: mount -o loop {} failed: {}", img.display(), String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Mounted(at.to_path_buf()))
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

type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the extras made in a mounted image should read back as.
#[derive(Default)]
struct Expected {
    /// Paths of directories and their entries.
    dirs: Vec<(String, Vec<Vec<u8>>)>,
    /// Paths of files and their content.
    files: Vec<(String, Vec<u8>)>,
    /// Paths and their attributes as the kernel lists them.
    xattrs: Vec<(String, Xattrs)>,
    /// Paths of device nodes and fifos, their kind and number.
    specials: Vec<(String, FileKind, u64)>,
}

/// Makes, in a mounted XFS at `root`, what the source tree cannot carry
/// onto the host's file system: a directory in the leaf/node format
/// (`dir_entries` entries) and one in the block format, a file of
/// `fragments` separate 4 KiB extents (its data fork a B+tree), an
/// attribute with a remote value, attributes enough for a leaf and for a
/// node tree, a default ACL, device nodes and a fifo. Returns what each
/// must read back as, as the kernel shows it.
fn extras(root: &Path, dir_entries: usize, fragments: u64) -> Expected {
    let mut want = Expected::default();
    let x = root.join("extras");
    for (name, count) in [("big-dir", dir_entries), ("block-dir", 60)] {
        let d = x.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut names: Vec<Vec<u8>> = (0..count).map(|i| format!("entry-{i:05}").into_bytes()).collect();
        for n in &names {
            std::fs::write(d.join(String::from_utf8_lossy(n).as_ref()), b"").unwrap();
        }
        names.sort();
        want.dirs.push((format!("/extras/{name}"), names));
    }
    // Every other block written: each its own extent (the last block
    // written ends the file).
    let frag = std::fs::File::create(x.join("fragmented.bin")).unwrap();
    let mut content = vec![0u8; ((fragments * 2 - 1) * 4096) as usize];
    for i in 0..fragments {
        let at = (i * 2 * 4096) as usize;
        content[at..at + 4096].copy_from_slice(&noise(100 + i, 4096));
        std::os::unix::fs::FileExt::write_all_at(&frag, &content[at..at + 4096], at as u64).unwrap();
    }
    frag.sync_all().unwrap();
    want.files.push(("/extras/fragmented.bin".into(), content));
    for (name, count, value_len) in [("remote", 1usize, 20_000usize), ("leaf", 30, 40), ("node", 400, 30)] {
        let p = x.join(format!("xattrs-{name}"));
        std::fs::write(&p, name).unwrap();
        for i in 0..count {
            xattr_set(&p, &format!("user.attribute-number-{i:04}"), &noise(i as u64, value_len));
        }
        want.files.push((format!("/extras/xattrs-{name}"), name.as_bytes().to_vec()));
    }
    xattr_set(&x.join("xattrs-leaf"), "trusted.root-only", b"t");
    xattr_set(&x.join("xattrs-leaf"), "security.label", b"s");
    if have("setfacl") {
        run(Command::new("setfacl").args(["-m", "u:1001:rw,g:55:r", "-d", "-m", "u:1002:rx"]).arg(x.join("block-dir")));
        run(Command::new("setfacl").args(["-m", "u:1001:rw"]).arg(x.join("xattrs-remote")));
    }
    for name in ["xattrs-remote", "xattrs-leaf", "xattrs-node", "block-dir"] {
        // The kernel lists an ACL twice for root: as system.posix_acl_*
        // and as the trusted.SGI_ACL_* it is stored as; the first is the
        // one a restore sets.
        let mut xattrs = all_xattrs(&x.join(name));
        xattrs.retain(|k, _| !k.starts_with(b"trusted.SGI_ACL_"));
        want.xattrs.push((format!("/extras/{name}"), xattrs));
    }
    for (name, kind, major, minor) in [("null", "c", 1u32, 3u32), ("sda1", "b", 8, 1), ("big", "c", 300, 70_000)] {
        run(Command::new("mknod").arg(x.join(name)).args([kind, &major.to_string(), &minor.to_string()]));
        let meta = std::fs::symlink_metadata(x.join(name)).unwrap();
        let kind = if meta.file_type().is_char_device() { FileKind::CharDevice } else { FileKind::BlockDevice };
        want.specials.push((format!("/extras/{name}"), kind, meta.rdev()));
    }
    run(Command::new("mkfifo").arg(x.join("fifo")));
    want.specials.push(("/extras/fifo".into(), FileKind::Fifo, 0));
    want
}

/// Every attribute of `path` as the kernel lists it (the common helper's
/// list buffer holds a few dozen names; a node tree has hundreds).
fn all_xattrs(path: &Path) -> Xattrs {
    extern "C" {
        fn llistxattr(path: *const i8, list: *mut i8, size: usize) -> isize;
        fn lgetxattr(path: *const i8, name: *const i8, value: *mut std::ffi::c_void, size: usize) -> isize;
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 1 << 20];
    // SAFETY: valid C strings and buffers of the lengths given.
    let n = unsafe { llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe { lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(len >= 0, "lgetxattr {}", path.display());
        value.truncate(len as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

fn check_extras(fs: &dyn GuestFs, want: &Expected) {
    for (path, names) in &want.dirs {
        let node = fs::lookup(fs, path).unwrap();
        let mut got: Vec<_> = fs.read_dir(node).unwrap().into_iter().map(|e| e.name).collect();
        got.sort();
        assert!(got == *names, "entries of {path}: {} read, {} expected", got.len(), names.len());
    }
    for (path, content) in &want.files {
        let node = fs::lookup(fs, path).unwrap();
        assert_eq!(fs.stat(node).unwrap().size, content.len() as u64, "size of {path}");
        assert!(read_all(fs, node, 128 << 10) == *content, "content of {path}");
    }
    for (path, xattrs) in &want.xattrs {
        let node = fs::lookup(fs, path).unwrap();
        let got: BTreeMap<_, _> = fs.xattrs(node).unwrap().into_iter().collect();
        assert_eq!(got.len(), xattrs.len(), "attributes of {path}");
        assert!(got == *xattrs, "attributes of {path}");
    }
    for (path, kind, rdev) in &want.specials {
        let stat = fs.stat(fs::lookup(fs, path).unwrap()).unwrap();
        assert_eq!((stat.kind, stat.rdev), (*kind, *rdev), "{path}");
    }
}

/// What `xfs_db -r` prints for `commands` on `img`.
fn xfs_db(img: &Path, commands: &[&str]) -> String {
    let mut cmd = Command::new("xfs_db");
    cmd.arg("-r");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(img).output().unwrap();
    assert!(out.status.success(), "xfs_db {commands:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every node under `node`.
fn all_nodes(fs: &dyn GuestFs, node: NodeId, out: &mut Vec<NodeId>) {
    for e in fs.read_dir(node).unwrap() {
        out.push(e.node);
        if fs.stat(e.node).unwrap().kind == FileKind::Dir {
            all_nodes(fs, e.node, out);
        }
    }
}

/// An image made in `layout`, filled through a mount with the source
/// tree (under /tree) and the extras; `None` where it cannot be mounted.
fn filled_image(dir: &Path, src: &Path, label: &str, options: &[&str], mib: u64, dir_entries: usize, fragments: u64) -> Option<(PathBuf, Expected)> {
    let img = mkfs(dir, label, options, mib);
    let mnt = Mounted::new(&img, &dir.join(format!("{label}-mnt")))?;
    run(Command::new("cp").arg("-a").arg(src).arg(mnt.0.join("tree")));
    let want = extras(&mnt.0, dir_entries, fragments);
    drop(mnt);
    Some((img, want))
}

/// mkfs.xfs's defaults (v5: CRCs, ftype, sparse inodes, reflink, bigtime,
/// inobtcount; four allocation groups at this size): everything reads
/// back as the kernel wrote it, in all the formats a directory, a data
/// fork and an attribute fork take, from every allocation group.
#[test]
fn a_default_v5_image_reads_back_as_its_source() {
    if !have("mkfs.xfs") || !have("xfs_db") {
        eprintln!("skipped: mkfs.xfs is not installed (xfsprogs)");
        return;
    }
    let dir = TempDir::new("xfs");
    let src = dir.0.join("src");
    source_tree(&src);
    let Some((img, want)) = filled_image(&dir.0, &src, "strata-xfs", &[], 300, 5000, 5000) else { return };
    let fs = fs::open(Content::Xfs, window(&img), "strata-xfs").unwrap();
    assert_eq!(fs.describe(), (Content::Xfs, Some("strata-xfs".to_string())));
    let tree = fs::lookup(fs.as_ref(), "/tree").unwrap();
    let entries = compare(fs.as_ref(), tree, &src, &mut BTreeMap::new(), true);
    assert!(entries > 400, "{entries}");
    check_extras(fs.as_ref(), &want);
    let node = fs::lookup(fs.as_ref(), "/tree/etc/nginx/nginx.conf").unwrap();
    assert_eq!(fs.stat(node).unwrap().size, 20);
    // Times to the nanosecond (big timestamps: mkfs.xfs 6.1's default).
    let big = fs.stat(fs::lookup(fs.as_ref(), "/tree/var/log/big.bin").unwrap()).unwrap();
    let meta = std::fs::metadata(src.join("var/log/big.bin")).unwrap();
    assert_eq!((big.mtime.sec, big.mtime.nsec), (meta.mtime(), meta.mtime_nsec() as u32));
    assert!(matches!(fs::lookup(fs.as_ref(), "/tree/etc/nope"), Err(strata_guest::Error::NotFound(_))));
    assert!(matches!(fs::lookup(fs.as_ref(), "/tree/etc/hostname/x"), Err(strata_guest::Error::NotADirectory(_))));

    // The formats the test means to cover, as xfs_db sees them.
    let format = |path: &str, field: &str| xfs_db(&img, &[&format!("path {path}"), &format!("print {field}")]);
    assert!(format("/extras/big-dir", "core.format").contains("(extents)") || format("/extras/big-dir", "core.format").contains("(btree)"));
    assert!(xfs_db(&img, &["path /extras/big-dir", "bmap"]).contains("data offset 8388608"), "big-dir has leaf blocks");
    assert!(format("/extras/block-dir", "core.size").contains("= 4096"), "block-dir is one block");
    assert!(format("/extras/fragmented.bin", "core.format").contains("(btree)"));
    assert!(format("/extras/xattrs-node", "core.aformat").contains("(extents)") || format("/extras/xattrs-node", "core.aformat").contains("(btree)"));
    assert!(xfs_db(&img, &["path /extras/xattrs-node", "ablock 0", "print hdr.info.hdr.magic"]).contains("0x3ebe"), "xattrs-node is a node tree");
    assert!(xfs_db(&img, &["path /extras/xattrs-leaf", "ablock 0", "print hdr.info.hdr.magic"]).contains("0x3bee"), "xattrs-leaf is a leaf");

    // Files live in every allocation group: their inode numbers say so.
    let sb = xfs_db(&img, &["sb 0", "print agblklog inopblog"]);
    let field = |name: &str| sb.lines().find_map(|l| l.strip_prefix(&format!("{name} = "))).unwrap().trim().parse::<u32>().unwrap();
    let shift = field("agblklog") + field("inopblog");
    let mut nodes = Vec::new();
    all_nodes(fs.as_ref(), fs.root(), &mut nodes);
    let groups: std::collections::BTreeSet<u64> = nodes.iter().map(|n| n >> shift).collect();
    assert!(groups.iter().any(|&g| g > 0), "all inodes in AG 0: {groups:?}");

    let disk: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(&img).unwrap());
    let vols = volumes(disk, "whole");
    assert_eq!(vols.len(), 1);
    assert_eq!((vols[0].name.as_str(), vols[0].content, vols[0].problem.as_deref()), ("whole", Content::Xfs, None));
}

/// Other layouts: 1 KiB blocks, directory blocks of four file system
/// blocks, 64-bit extent counters, eight allocation groups, big
/// timestamps and the newer B+trees off, 2 KiB inodes.
#[test]
fn v5_layouts_read_back_as_their_source() {
    if !have("mkfs.xfs") || !have("xfs_db") {
        return;
    }
    let dir = TempDir::new("xfs-layouts");
    let src = dir.0.join("src");
    source_tree(&src);
    let layouts: &[(&str, &[&str])] = &[
        ("blocks-1k", &["-b", "size=1024"]),
        ("dirblk-16k", &["-n", "size=16384"]),
        ("nrext64", &["-i", "nrext64=1"]),
        ("agcount-8", &["-d", "agcount=8"]),
        ("old-times", &["-m", "bigtime=0,reflink=0,inobtcount=0,finobt=0"]),
        ("inodes-2k", &["-i", "size=2048"]),
    ];
    for (label, options) in layouts {
        let Some((img, want)) = filled_image(&dir.0, &src, label, options, 160, 2000, 600) else { return };
        let fs = fs::open(Content::Xfs, window(&img), label).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(fs.describe(), (Content::Xfs, Some(label.to_string())));
        let tree = fs::lookup(fs.as_ref(), "/tree").unwrap();
        let entries = compare(fs.as_ref(), tree, &src, &mut BTreeMap::new(), true);
        assert!(entries > 400, "{label}: {entries}");
        check_extras(fs.as_ref(), &want);
        std::fs::remove_file(&img).unwrap();
    }
}

/// A prototype file for `mkfs.xfs -p`: the tree under `src` with its
/// modes, owners, file contents, symlink targets and fifos (no times,
/// attributes or hard links: the format has none).
fn protofile(src: &Path) -> String {
    fn entries(dir: &Path, out: &mut String) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.mode();
            let kind = match mode & 0o170000 {
                0o040000 => 'd',
                0o120000 => 'l',
                0o010000 => 'p',
                _ => '-',
            };
            let suid = if mode & 0o4000 != 0 { 'u' } else { '-' };
            let sgid = if mode & 0o2000 != 0 { 'g' } else { '-' };
            let name = p.file_name().unwrap().to_str().unwrap();
            out.push_str(&format!("{name} {kind}{suid}{sgid}{:03o} {} {}", mode & 0o777, meta.uid(), meta.gid()));
            match kind {
                'd' => {
                    out.push('\n');
                    entries(&p, out);
                    out.push_str("$\n");
                }
                'l' => out.push_str(&format!(" {}\n", std::fs::read_link(&p).unwrap().display())),
                '-' => out.push_str(&format!(" {}\n", p.display())),
                _ => out.push('\n'),
            }
        }
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    entries(src, &mut out);
    out.push_str("$\n");
    out
}

/// Compares what a prototype file carries: kind, mode, owner, size,
/// content and symlink target.
fn compare_proto(fs: &dyn GuestFs, node: NodeId, src: &Path) -> usize {
    let mut seen = 0;
    let listed = listing_of(fs, node, src);
    for entry in listed {
        let path = src.join(String::from_utf8(entry.name.clone()).unwrap());
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let stat = fs.stat(entry.node).unwrap();
        let what = path.display().to_string();
        assert_eq!((stat.mode, stat.uid, stat.gid), (meta.mode() & 0o7777, meta.uid(), meta.gid()), "{what}");
        seen += 1;
        let ft = meta.file_type();
        if ft.is_dir() {
            assert_eq!(stat.kind, FileKind::Dir, "{what}");
            seen += compare_proto(fs, entry.node, &path);
        } else if ft.is_symlink() {
            assert_eq!(fs.read_link(entry.node).unwrap(), std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes(), "{what}");
        } else if ft.is_file() {
            assert_eq!((stat.kind, stat.size), (FileKind::File, meta.len()), "{what}");
            assert!(read_all(fs, entry.node, 70_001) == std::fs::read(&path).unwrap(), "content of {what}");
        } else if ft.is_fifo() {
            assert_eq!(stat.kind, FileKind::Fifo, "{what}");
        }
    }
    seen
}

/// v4 (no CRCs; this kernel no longer mounts it) and v5 made from a
/// prototype file: no mount needed.
#[test]
fn v4_and_v5_images_from_a_prototype_file_read_back_as_their_source() {
    if !have("mkfs.xfs") {
        return;
    }
    let dir = TempDir::new("xfs-proto");
    let src = dir.0.join("src");
    source_tree(&src);
    let proto = dir.0.join("proto");
    std::fs::write(&proto, protofile(&src)).unwrap();
    let proto_arg = proto.to_str().unwrap();
    let layouts: &[(&str, &[&str])] = &[("v4", &["-m", "crc=0"]), ("v4-1k", &["-m", "crc=0", "-b", "size=1024"]), ("v5", &[])];
    for (label, options) in layouts {
        let mut all = options.to_vec();
        all.extend(["-p", proto_arg]);
        let img = mkfs(&dir.0, label, &all, 64);
        let fs = fs::open(Content::Xfs, window(&img), label).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(fs.describe(), (Content::Xfs, Some(label.to_string())));
        let seen = compare_proto(fs.as_ref(), fs.root(), &src);
        assert_eq!(seen, walk_paths(&src).len(), "{label}");
    }
    // An incompatible feature the reader does not handle is refused by
    // name (xfs_db rewrites the superblock's CRC).
    if have("xfs_db") {
        let img = dir.0.join("v5.img");
        run(Command::new("xfs_db").args(["-x", "-c", "sb 0", "-c", "write features_incompat 0x1b"]).arg(&img));
        let err = fs::open(Content::Xfs, window(&img), "v5").err().unwrap();
        assert!(matches!(err, strata_guest::Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("needsrepair"), "{err}");
    }
}

/// Flipped bytes in the first MiBs of each allocation group (AG
/// headers, inode chunks, directory, attribute and B+tree blocks, which
/// the allocator keeps near them on a fresh file system) of a v5 image
/// and of a v4 one (no CRCs: damage reads as other data there, but must
/// not panic or hang either): each open, listing, stat and read gives
/// data or an error.
#[test]
fn damaged_xfs_images_give_errors_never_panics() {
    if !have("mkfs.xfs") {
        return;
    }
    let dir = TempDir::new("xfs-damaged");
    let src = dir.0.join("src");
    source_tree_small(&src);
    let proto = dir.0.join("proto");
    std::fs::write(&proto, protofile(&src)).unwrap();
    let v4 = mkfs(&dir.0, "v4", &["-m", "crc=0", "-d", "agcount=2", "-p", proto.to_str().unwrap()], 32);
    let ranges = [0..2 << 20, 16 << 20..18 << 20];
    flip_rounds_in(Content::Xfs, &std::fs::read(&v4).unwrap(), 150, &ranges, 0x0bad_cafe, |_| {});
    let Some((img, _)) = filled_image(&dir.0, &src, "damaged", &["-d", "agcount=2"], 32, 300, 100) else { return };
    // Round 0 also breaks the superblock's magic.
    flip_rounds_in(Content::Xfs, &std::fs::read(&img).unwrap(), 300, &ranges, 0x0123_4567_89ab_cdef, |b| b[0] ^= 0xff);
}

/// The byte offset of the block a bmap line of xfs_db shows as
/// "startblock N (AG/AGBLOCK)".
fn bmap_offset(line: &str, ag_blocks: u64, block_size: u64) -> u64 {
    let inner = line.split('(').nth(1).unwrap().split(')').next().unwrap();
    let (ag, block) = inner.split_once('/').unwrap();
    (ag.parse::<u64>().unwrap() * ag_blocks + block.parse::<u64>().unwrap()) * block_size
}

/// One flipped bit in a directory data block, a bmbt block, an attribute
/// leaf or an inode: the CRC catches it, and the reader says which
/// object is damaged instead of giving wrong names or bytes.
#[test]
fn a_flipped_bit_in_checksummed_metadata_is_an_error() {
    if !have("mkfs.xfs") || !have("xfs_db") {
        return;
    }
    let dir = TempDir::new("xfs-flip");
    let src = dir.0.join("src");
    source_tree_small(&src);
    let Some((img, want)) = filled_image(&dir.0, &src, "flip", &[], 64, 1000, 600) else { return };
    let original = std::fs::read(&img).unwrap();
    let sb = xfs_db(&img, &["sb 0", "print agblocks blocksize"]);
    let field = |name: &str| sb.lines().find_map(|l| l.strip_prefix(&format!("{name} = "))).unwrap().trim().parse::<u64>().unwrap();
    let (ag_blocks, block_size) = (field("agblocks"), field("blocksize"));
    let open = |bytes: Vec<u8>| {
        let len = bytes.len() as u64;
        fs::open(Content::Xfs, Window::range(Arc::new(bytes), 0, len).unwrap(), "flip").unwrap()
    };
    let intact = open(original.clone());
    check_extras(intact.as_ref(), &want);

    let dir_block = xfs_db(&img, &["path /extras/big-dir", "bmap"]).lines().next().unwrap().to_string();
    let at = bmap_offset(&dir_block, ag_blocks, block_size) + 200;
    let mut bytes = original.clone();
    bytes[at as usize] ^= 0x04;
    let fs = open(bytes);
    let err = fs.read_dir(fs::lookup(fs.as_ref(), "/extras/big-dir").unwrap()).unwrap_err();
    assert!(matches!(err, strata_guest::Error::Damaged { .. }) && err.to_string().contains("CRC"), "{err}");

    let ptrs = xfs_db(&img, &["path /extras/fragmented.bin", "print u3.bmbt.ptrs"]);
    let first = ptrs.split("1:").nth(1).unwrap().split_whitespace().next().unwrap().parse::<u64>().unwrap();
    let agblklog = u64::from(64 - (ag_blocks - 1).leading_zeros());
    let at = ((first >> agblklog) * ag_blocks + (first & ((1 << agblklog) - 1))) * block_size + 1000;
    let mut bytes = original.clone();
    bytes[at as usize] ^= 0x10;
    let fs = open(bytes);
    let node = fs::lookup(fs.as_ref(), "/extras/fragmented.bin").unwrap();
    let err = fs.read_at(node, 0, &mut [0u8; 4096]).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");

    let attr_block = xfs_db(&img, &["path /extras/xattrs-leaf", "bmap -a"]).lines().next().unwrap().to_string();
    let at = bmap_offset(&attr_block, ag_blocks, block_size) + block_size - 100;
    let mut bytes = original.clone();
    bytes[at as usize] ^= 0x01;
    let fs = open(bytes);
    let err = fs.xattrs(fs::lookup(fs.as_ref(), "/extras/xattrs-leaf").unwrap()).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");

    // An inode: its mode's permission bits.
    let node = fs::lookup(intact.as_ref(), "/extras/fragmented.bin").unwrap();
    let sb = xfs_db(&img, &["sb 0", "print agblklog inopblog inodesize"]);
    let field = |name: &str| sb.lines().find_map(|l| l.strip_prefix(&format!("{name} = "))).unwrap().trim().parse::<u64>().unwrap();
    let (agblklog, inopblog, inode_size) = (field("agblklog"), field("inopblog"), field("inodesize"));
    let ag = node >> (agblklog + inopblog);
    let ag_block = (node >> inopblog) & ((1 << agblklog) - 1);
    let index = node & ((1 << inopblog) - 1);
    let at = (ag * ag_blocks + ag_block) * block_size + index * inode_size + 3;
    let mut bytes = original.clone();
    bytes[at as usize] ^= 0x01;
    let fs = open(bytes);
    let err = fs.stat(node).unwrap_err();
    assert!(err.to_string().contains("CRC"), "{err}");
}
