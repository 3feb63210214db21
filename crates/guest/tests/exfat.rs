//! exFAT volumes made by `mkfs.exfat` (exfatprogs) and filled through
//! `mount.exfat-fuse` on a loop device (the kernel here has no exfat
//! module), read back by Strata's reader and compared with their source:
//! names (long and non-ASCII), kinds, sizes, modes, modification times and
//! content, contiguous files (NoFatChain) and fragmented ones (a FAT
//! chain). Damaged images give errors or data, never a panic or a hang.
//!
//! exfat-fuse 1.3 keeps times in whole two-second steps: it writes the
//! 10 ms fields as 0 and the UTC offset as valid, +0. The sources are
//! stamped with even seconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use strata_guest::fs::{self, FileKind, GuestFs, NodeId};
use strata_guest::probe::Content;
use strata_guest::source::{ByteSource, Window};
use strata_guest::volume::volumes;

fn tools_here() -> bool {
    let ok = is_root() && Path::new("/dev/fuse").exists() && ["mkfs.exfat", "mount.exfat-fuse", "losetup", "umount"].iter().all(|t| have(t));
    if !ok {
        eprintln!("skipped: exFAT tests need root, /dev/fuse, exfatprogs, exfat-fuse and losetup");
    }
    ok
}

/// An image file mounted through exfat-fuse on a loop device; dropping
/// it unmounts (lazily when busy) and frees the loop device.
struct Mounted {
    point: PathBuf,
    loop_device: String,
    mounted: bool,
}

impl Mounted {
    fn new(img: &Path, point: &Path) -> Mounted {
        std::fs::create_dir_all(point).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(img).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let mut m = Mounted {
            point: point.to_path_buf(),
            loop_device: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            mounted: false,
        };
        run(Command::new("mount.exfat-fuse").arg(&m.loop_device).arg(point));
        m.mounted = true;
        m
    }

    /// Unmounts now, so the image holds everything written.
    fn finish(mut self) {
        run(Command::new("umount").arg(&self.point));
        self.mounted = false;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.point).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.point).status();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.loop_device).status();
    }
}

fn mkfs(dir: &Path, name: &str, mib: u64, options: &[&str]) -> PathBuf {
    let img = dir.join(format!("{name}.img"));
    run(Command::new("truncate").args(["-s", &format!("{mib}M")]).arg(&img));
    run(Command::new("mkfs.exfat").args(options).args(["-L", name]).arg(&img));
    img
}

/// Copies the entries of `src` into the volume, times kept.
fn fill(img: &Path, src: &Path, mount_point: &Path) {
    let m = Mounted::new(img, mount_point);
    for e in std::fs::read_dir(src).unwrap() {
        run(Command::new("cp").args(["-r", "--preserve=timestamps"]).arg(e.unwrap().path()).arg(&m.point));
    }
    m.finish();
}

/// Names, sizes and content to read back; every time an even second.
fn exfat_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/nginx")).unwrap();
    std::fs::create_dir_all(root.join("a directory whose name is well past fifteen characters/nested/deeper")).unwrap();
    std::fs::create_dir_all(root.join("many")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("etc/nginx/nginx.conf"), b"worker_processes 4;\n").unwrap();
    std::fs::write(root.join("Zürich – café.txt"), "grüezi\n").unwrap();
    std::fs::write(root.join("日本語のファイル名.txt"), "こんにちは\n").unwrap();
    std::fs::write(root.join("big.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(root.join("odd-size.bin"), noise(2, 1_000_003)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("a directory whose name is well past fifteen characters/nested/deeper/file"), noise(3, 70_000)).unwrap();
    for i in 0..300 {
        std::fs::write(root.join(format!("many/file-with-a-longish-name-{i:04}")), format!("{i}\n")).unwrap();
    }
    for (i, p) in walk_paths(root).into_iter().enumerate() {
        run(Command::new("touch").args(["-d", &format!("@{}", 1_700_000_000 + 2 * i as u64)]).arg(p));
    }
}

/// Compares the guest tree under `node` with `src`: names, kinds, modes,
/// sizes, modification times, and content read in odd pieces.
fn compare_exfat(fs: &dyn GuestFs, node: NodeId, src: &Path) -> usize {
    let listed = listing_of(fs, node, src);
    let mut seen = 0;
    for entry in listed {
        let path = src.join(String::from_utf8(entry.name.clone()).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        let stat = fs.stat(entry.node).unwrap();
        assert_eq!(stat.node, entry.node);
        assert_eq!(stat.mtime.sec, std::os::unix::fs::MetadataExt::mtime(&meta), "mtime of {}", path.display());
        assert_eq!((stat.uid, stat.gid, stat.nlink), (0, 0, 1));
        seen += 1;
        if meta.is_dir() {
            assert_eq!((stat.kind, stat.mode), (FileKind::Dir, 0o755), "{}", path.display());
            seen += compare_exfat(fs, entry.node, &path);
        } else {
            assert_eq!((stat.kind, stat.size, stat.mode), (FileKind::File, meta.len(), 0o644), "{}", path.display());
            assert!(read_all(fs, entry.node, 70_001) == std::fs::read(&path).unwrap(), "content of {}", path.display());
        }
    }
    seen
}

fn open(img: &Path) -> strata_guest::Result<Box<dyn GuestFs>> {
    fs::open(Content::Exfat, window(img), "test")
}

fn open_bytes(bytes: Vec<u8>) -> strata_guest::Result<Box<dyn GuestFs>> {
    let len = bytes.len() as u64;
    fs::open(Content::Exfat, Window::range(Arc::new(bytes), 0, len).unwrap(), "test")
}

/// Where things are, read from the boot sector here, independently.
struct Layout {
    cluster_size: usize,
    fat: usize,
    heap: usize,
    root: u32,
}

impl Layout {
    fn of(img: &[u8]) -> Layout {
        let le32 = |at: usize| u32::from_le_bytes(img[at..at + 4].try_into().unwrap());
        let sector = 1usize << img[108];
        Layout {
            cluster_size: sector << img[109],
            fat: le32(80) as usize * sector,
            heap: le32(88) as usize * sector,
            root: le32(96),
        }
    }

    fn cluster(&self, c: u32) -> usize {
        self.heap + (c as usize - 2) * self.cluster_size
    }

    /// The File entry set named `name` in the root directory's first
    /// cluster: its offset and length.
    fn root_entry(&self, img: &[u8], name: &str) -> (usize, usize) {
        let root = self.cluster(self.root);
        let want: Vec<u16> = name.encode_utf16().collect();
        for at in (root..root + self.cluster_size).step_by(32) {
            if img[at] != 0x85 {
                continue;
            }
            let len = 32 * (1 + img[at + 1] as usize);
            let name_len = img[at + 32 + 3] as usize;
            let units: Vec<u16> = (0..name_len).map(|i| u16::from_le_bytes([img[at + 66 + (i / 15) * 32 + (i % 15) * 2], img[at + 67 + (i / 15) * 32 + (i % 15) * 2]])).collect();
            if units == want {
                return (at, len);
            }
        }
        panic!("no entry {name} in the root directory");
    }
}

/// The SetChecksum of an entry set, rewritten after a change.
fn reseal(set: &mut [u8]) {
    let sum = set.iter().enumerate().filter(|(i, _)| !matches!(i, 2 | 3)).fold(0u16, |s, (_, &b)| s.rotate_right(1).wrapping_add(u16::from(b)));
    set[2..4].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn exfat_volumes_read_back_as_their_source() {
    if !tools_here() {
        return;
    }
    let dir = TempDir::new("exfat");
    let src = dir.0.join("src");
    exfat_tree(&src);
    for (name, options) in [("EXFAT4K", &[][..]), ("EXFAT64K", &["-c", "64K"][..]), ("PACKED", &["-b", "4K", "--pack-bitmap"][..])] {
        let img = mkfs(&dir.0, name, 64, options);
        fill(&img, &src, &dir.0.join(format!("mnt-{name}")));
        let fs = open(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fs.describe(), (Content::Exfat, Some(name.to_string())));
        let seen = compare_exfat(fs.as_ref(), fs.root(), &src);
        assert_eq!(seen, walk_paths(&src).len(), "{name}");

        // Reads at any offset and size, fewer bytes only at the end.
        let big = fs::lookup(fs.as_ref(), "/odd-size.bin").unwrap();
        let want = std::fs::read(src.join("odd-size.bin")).unwrap();
        for (offset, len) in [(0usize, 1usize), (4095, 2), (65_535, 131_073), (999_999, 10), (1_000_002, 5), (1_000_003, 5)] {
            let mut buf = vec![0u8; len];
            let n = fs.read_at(big, offset as u64, &mut buf).unwrap();
            let end = (offset + len).min(want.len());
            assert_eq!(&buf[..n], &want[offset..end], "{name} at {offset}");
        }
        assert_eq!(fs.read_at(big, u64::MAX - 3, &mut [0u8; 8]).unwrap(), 0);
        let d = fs::lookup(fs.as_ref(), "/many").unwrap();
        assert!(fs.read_at(d, 0, &mut [0u8; 8]).is_err());
        assert!(fs.read_link(big).is_err());
        assert!(matches!(fs::lookup(fs.as_ref(), "/etc/nope"), Err(strata_guest::Error::NotFound(_))));
        assert!(matches!(fs::lookup(fs.as_ref(), "/empty/x"), Err(strata_guest::Error::NotADirectory(_))));

        // A single big file copied to a fresh volume is contiguous.
        let bytes = std::fs::read(&img).unwrap();
        let layout = Layout::of(&bytes);
        let (at, _) = layout.root_entry(&bytes, "big.bin");
        assert_eq!(bytes[at + 33] & 2, 2, "{name}: big.bin has NoFatChain");

        let disk: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(&img).unwrap());
        let vols = volumes(disk, name);
        assert_eq!(vols.len(), 1);
        assert_eq!((vols[0].name.as_str(), vols[0].content, vols[0].problem.as_deref()), ("whole", Content::Exfat, None));
    }
}

/// A volume with `frag-c`, written into the hole `frag-a` left between
/// itself and `frag-b` and on past `frag-b`: a FAT chain.
fn fragmented(dir: &Path) -> (PathBuf, Vec<u8>) {
    let img = mkfs(dir, "FRAG", 32, &["-b", "4K"]);
    let m = Mounted::new(&img, &dir.join("mnt-frag"));
    std::fs::write(m.point.join("frag-a"), noise(20, 256 << 10)).unwrap();
    std::fs::write(m.point.join("frag-b"), noise(21, 256 << 10)).unwrap();
    std::fs::remove_file(m.point.join("frag-a")).unwrap();
    let c = noise(22, (1 << 20) + 12_345);
    std::fs::write(m.point.join("frag-c"), &c).unwrap();
    m.finish();
    (img, c)
}

#[test]
fn a_fragmented_file_reads_through_its_fat_chain() {
    if !tools_here() {
        return;
    }
    let dir = TempDir::new("exfat-frag");
    let (img, want) = fragmented(&dir.0);
    let bytes = std::fs::read(&img).unwrap();
    let layout = Layout::of(&bytes);
    let (at, _) = layout.root_entry(&bytes, "frag-c");
    assert_eq!(bytes[at + 33] & 2, 0, "frag-c has a FAT chain");
    let fs = open(&img).unwrap();
    let node = fs::lookup(fs.as_ref(), "/frag-c").unwrap();
    assert!(read_all(fs.as_ref(), node, 50_000) == want);
    assert!(read_all(fs.as_ref(), node, 4096) == want);
    assert!(read_all(fs.as_ref(), fs::lookup(fs.as_ref(), "/frag-b").unwrap(), 100_000) == noise(21, 256 << 10));

    // A loop in the chain: an error, not a hang and not wrong bytes.
    let first = u32::from_le_bytes(bytes[at + 52..at + 56].try_into().unwrap());
    let mut looped = bytes.clone();
    let entry = layout.fat + first as usize * 4;
    let second = u32::from_le_bytes(looped[entry..entry + 4].try_into().unwrap());
    let third_at = layout.fat + second as usize * 4;
    looped[third_at..third_at + 4].copy_from_slice(&first.to_le_bytes());
    let fs = open_bytes(looped).unwrap();
    let node = fs::lookup(fs.as_ref(), "/frag-c").unwrap();
    let err = fs.read_at(node, 0, &mut [0u8; 100]).unwrap_err();
    assert!(err.to_string().contains("cluster chain"), "{err}");

    // A chain ending early, and one through a cluster outside the heap.
    for (value, why) in [(0xFFFF_FFFFu32, "ends after"), (0x0FFF_FFFF, "outside")] {
        let mut broken = bytes.clone();
        broken[entry..entry + 4].copy_from_slice(&value.to_le_bytes());
        let fs = open_bytes(broken).unwrap();
        let node = fs::lookup(fs.as_ref(), "/frag-c").unwrap();
        let err = fs.read_at(node, 0, &mut [0u8; 100]).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }

    // The root directory's own chain looping on itself.
    let mut looped = bytes.clone();
    let root = layout.fat + layout.root as usize * 4;
    looped[root..root + 4].copy_from_slice(&layout.root.to_le_bytes());
    let err = open_bytes(looped).err().expect("a looping root directory");
    assert!(err.to_string().contains("cluster chain"), "{err}");
}

#[test]
fn a_damaged_main_boot_region_falls_back_to_its_backup() {
    if !tools_here() {
        return;
    }
    let dir = TempDir::new("exfat-boot");
    let src = dir.0.join("src");
    source_tree_small(&src);
    for p in walk_paths(&src) {
        run(Command::new("touch").args(["-d", "@1700000000"]).arg(p));
    }
    let img = mkfs(&dir.0, "BOOT", 16, &["-b", "4K"]);
    fill(&img, &src, &dir.0.join("mnt"));
    let bytes = std::fs::read(&img).unwrap();
    // The serial number (checksum only), the cluster size (the geometry
    // too), the checksum sector itself, and the name.
    for at in [100usize, 109, 11 * 512 + 7, 5] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5A;
        let fs = open_bytes(damaged).unwrap_or_else(|e| panic!("byte {at}: {e}"));
        assert_eq!(compare_exfat(fs.as_ref(), fs.root(), &src), walk_paths(&src).len());
    }
    // Both regions damaged: an error naming both.
    let mut damaged = bytes.clone();
    damaged[100] ^= 1;
    damaged[12 * 512 + 100] ^= 1;
    let err = open_bytes(damaged).err().expect("both boot regions damaged");
    assert!(err.to_string().contains("main boot region") && err.to_string().contains("backup"), "{err}");
    // The backup alone damaged: the main region is read.
    let mut damaged = bytes;
    damaged[12 * 512 + 109] ^= 1;
    assert!(open_bytes(damaged).is_ok());
}

#[test]
fn damaged_entry_sets_are_errors_and_past_valid_data_reads_zeros() {
    if !tools_here() {
        return;
    }
    let dir = TempDir::new("exfat-sets");
    let src = dir.0.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("data.bin"), noise(30, 100_000)).unwrap();
    std::fs::write(src.join("sub/inner"), b"inner\n").unwrap();
    let img = mkfs(&dir.0, "SETS", 16, &["-b", "4K"]);
    fill(&img, &src, &dir.0.join("mnt"));
    let bytes = std::fs::read(&img).unwrap();
    let layout = Layout::of(&bytes);
    let (at, len) = layout.root_entry(&bytes, "data.bin");

    // A wrong SetChecksum: the directory is damaged.
    let mut damaged = bytes.clone();
    damaged[at + 2] ^= 1;
    let fs = open_bytes(damaged).unwrap();
    let err = fs.read_dir(fs.root()).unwrap_err();
    assert!(err.to_string().contains("SetChecksum"), "{err}");

    // ValidDataLength below DataLength: the bytes past it read as zeros.
    let mut shortened = bytes.clone();
    shortened[at + 40..at + 48].copy_from_slice(&60_000u64.to_le_bytes());
    reseal(&mut shortened[at..at + len]);
    let fs = open_bytes(shortened).unwrap();
    let node = fs::lookup(fs.as_ref(), "/data.bin").unwrap();
    let mut want = noise(30, 100_000);
    want[60_000..].fill(0);
    assert!(read_all(fs.as_ref(), node, 7_777) == want);

    // ValidDataLength past DataLength, and DataLength past the heap.
    for (field, value) in [(40usize, 100_001u64), (56, 1 << 40)] {
        let mut damaged = bytes.clone();
        damaged[at + field..at + field + 8].copy_from_slice(&value.to_le_bytes());
        reseal(&mut damaged[at..at + len]);
        let fs = open_bytes(damaged).unwrap();
        assert!(fs.read_dir(fs.root()).is_err());
    }

    // A directory whose first cluster is the root's: a loop, cut at the
    // nesting limit.
    let (sub, sub_len) = layout.root_entry(&bytes, "sub");
    let mut looped = bytes.clone();
    looped[sub + 52..sub + 56].copy_from_slice(&layout.root.to_le_bytes());
    looped[sub + 33] |= 2;
    reseal(&mut looped[sub..sub + sub_len]);
    let fs = open_bytes(looped).unwrap();
    let mut node = fs.root();
    let mut depth = 0;
    let err = loop {
        match fs.read_dir(node) {
            Ok(entries) => node = entries.iter().find(|e| e.name == b"sub").expect("sub again").node,
            Err(e) => break e,
        }
        depth += 1;
        assert!(depth <= 70, "no end to the loop");
    };
    assert!(err.to_string().contains("nested deeper"), "{err}");
}

/// Flipped bytes in the boot region, FAT, bitmap, up-case table and
/// directories (all within the first MiB of a volume aligned to 4 KiB):
/// every open, listing and read gives data or an error.
#[test]
fn damaged_exfat_volumes_give_errors_never_panics() {
    if !tools_here() {
        return;
    }
    let dir = TempDir::new("exfat-damaged");
    let src = dir.0.join("src");
    source_tree_small(&src);
    std::fs::write(src.join("Zürich – café.txt"), "grüezi\n").unwrap();
    let img = mkfs(&dir.0, "FUZZ", 16, &["-b", "4K"]);
    fill(&img, &src, &dir.0.join("mnt"));
    let m = Mounted::new(&img, &dir.0.join("mnt2"));
    std::fs::write(m.point.join("a"), noise(40, 40_000)).unwrap();
    std::fs::write(m.point.join("b"), noise(41, 40_000)).unwrap();
    std::fs::remove_file(m.point.join("a")).unwrap();
    std::fs::write(m.point.join("c"), noise(42, 200_000)).unwrap();
    m.finish();
    let bytes = std::fs::read(&img).unwrap();
    assert!(open_bytes(bytes.clone()).is_ok());
    // Round 0 breaks the main boot region's checksum.
    flip_rounds(Content::Exfat, &bytes, 300, 1 << 20, 0x0123_4567_89ab_cdef, |b| b[100] ^= 0xff);
    // Then only the FAT and the directories, where most bytes matter.
    let layout = Layout::of(&bytes);
    let (at, _) = layout.root_entry(&bytes, "dir");
    let dir_cluster = u32::from_le_bytes(bytes[at + 52..at + 56].try_into().unwrap());
    let cluster = |c: u32| layout.cluster(c)..layout.cluster(c) + layout.cluster_size;
    let ranges = [layout.fat..layout.heap, cluster(layout.root), cluster(dir_cluster)];
    flip_rounds_in(Content::Exfat, &bytes, 300, &ranges, 0x0fed_cba9_8765_4321, |_| {});
}
