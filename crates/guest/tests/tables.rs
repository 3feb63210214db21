//! Partition tables and LVM2 volumes written by their own tools (sfdisk,
//! sgdisk, and LVM2's pvcreate, vgcreate and lvcreate on a loop device,
//! with device-mapper activation off as this machine has none), read back
//! by Strata's readers and compared with what the tools report.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use strata_guest::partition::{self, Scheme};
use strata_guest::probe::Content;
use strata_guest::source::ByteSource;
use strata_guest::volume::volumes;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
    path
}

fn open(path: &Path) -> Arc<dyn ByteSource> {
    Arc::new(std::fs::File::open(path).unwrap())
}

#[test]
fn an_mbr_with_logical_partitions_from_sfdisk() {
    if !have("sfdisk") {
        eprintln!("skipped: sfdisk is not installed (tools/setup installs it)");
        return;
    }
    let dir = tempfile_dir();
    let img = image(dir.path(), "mbr.img", 64);
    let script = "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=40000, type=5\n\
                  start=12288, size=8192, type=83\nstart=22528, size=8192, type=8e\nstart=51200, size=8192, type=7\n";
    sfdisk(&img, script);
    let table = partition::read(open(&img).as_ref()).unwrap().unwrap();
    assert_eq!(table.scheme, Scheme::Mbr);
    let got: Vec<(u32, u64, u64, String)> =
        table.partitions.iter().map(|p| (p.number, p.offset / 512, p.len / 512, p.kind.clone())).collect();
    // sfdisk -d lists the same numbers, starts and sizes.
    let dump = run(Command::new("sfdisk").arg("-d").arg(&img));
    for (number, start, size, kind) in &got {
        let line = format!("{}{number} : start={start:>12}, size={size:>12}, type={}", img.display(), kind.trim_start_matches("0x").trim_start_matches('0'));
        assert!(dump.contains(&line), "{line:?} not in\n{dump}");
    }
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 5, 6]);
}

#[test]
fn a_gpt_from_sgdisk_and_a_table_pointing_past_the_disks_end() {
    if !have("sgdisk") {
        eprintln!("skipped: sgdisk is not installed (tools/setup installs it)");
        return;
    }
    let dir = tempfile_dir();
    let img = image(dir.path(), "gpt.img", 64);
    run(Command::new("sgdisk").args(["-o", "-n", "1:2048:+8M", "-c", "1:EFI system", "-t", "1:ef00", "-n", "2:0:+20M", "-c", "2:root", "-t", "2:8300"]).arg(&img));
    let table = partition::read(open(&img).as_ref()).unwrap().unwrap();
    assert_eq!(table.scheme, Scheme::Gpt);
    assert_eq!(table.partitions.len(), 2);
    let info = run(Command::new("sgdisk").args(["-i", "2"]).arg(&img));
    let p2 = &table.partitions[1];
    assert!(info.contains(&format!("First sector: {} ", p2.offset / 512)), "{info}");
    assert!(info.contains(&format!("Last sector: {} ", (p2.offset + p2.len) / 512 - 1)), "{info}");
    assert!(info.to_lowercase().contains(&p2.kind), "{info}");
    assert_eq!(table.partitions[0].name.as_deref(), Some("EFI system"));

    // The same table on a disk cut to 20 MiB: the second partition lies
    // past its end (and the backup header is gone, the primary is read).
    let cut = dir.path().join("cut.img");
    std::fs::copy(&img, &cut).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(20 << 20).unwrap();
    let vols = volumes(open(&cut), "cut");
    assert_eq!(vols.len(), 2);
    assert!(vols[0].problem.as_deref().is_some_and(|p| p.contains("no file system")), "{:?}", vols[0].problem);
    let past = vols[1].problem.as_deref().unwrap();
    assert!(past.contains("disk has 20971520 bytes"), "{past}");
}

/// LVM2 on a partition: a volume group with two linear volumes, written
/// by LVM2's tools, with an ext4 file system (mke2fs at the extent LVM
/// reports) in one of them.
#[test]
fn lvm2_linear_volumes_written_by_lvm2() {
    if !have("sfdisk") || !have("pvcreate") || !have("losetup") || !nix_is_root() {
        eprintln!("skipped: LVM2 tests need root, losetup, sfdisk and lvm2 (tools/setup installs them)");
        return;
    }
    let dir = tempfile_dir();
    let img = image(dir.path(), "lvm.img", 64);
    sfdisk(&img, "label: dos\nstart=2048, size=100000, type=8e\n");
    let vg = format!("strata{}", std::process::id());
    {
        let lo = LoopDevice::attach(&img, 2048 * 512, 100_000 * 512);
        lvm(&["pvcreate", "-q", "-ff", "-y", &lo.path]);
        lvm(&["vgcreate", "-q", "-s", "4m", &vg, &lo.path]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "12M", "-n", "root", &vg]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-n", "home", &vg]);
        lvm(&["lvextend", "-q", "-L", "20M", &format!("{vg}/root")]);
        let ranges = lvm(&["lvs", "--noheadings", "-o", "lv_name,seg_pe_ranges", &vg]);
        assert!(ranges.contains("root") && ranges.contains("home"), "{ranges}");
        lvm(&["vgchange", "-q", "-an", &vg]);
        lvm(&["vgexport", "-q", &vg]);
    }
    // root: extents 0-2 then 5-6 (lvextend after home took 3-4); PE start
    // 1 MiB. ext4 in its first segment.
    let pv_start = 2048 * 512u64;
    let root_start = pv_start + (1 << 20);
    run(Command::new("mke2fs").args(["-q", "-t", "ext4", "-E", &format!("offset={root_start}"), "-L", "lvroot"]).arg(&img).arg("12M"));
    let vols = volumes(open(&img), "lvm");
    let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["p1".to_string(), format!("{vg}-home"), format!("{vg}-root")].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(vols[0].content, Content::LvmPhysicalVolume);
    let root = &vols[2];
    assert_eq!(root.len(), 20 << 20);
    assert_eq!(root.content, Content::Ext, "{:?}", root.problem);
    let device = root.device.as_ref().unwrap();
    // Offsets on the disk.
    assert_eq!(device.disk_offset(0), Some(root_start));
    assert_eq!(device.disk_offset(12 << 20), Some(pv_start + (1 << 20) + (20 << 20)));
    assert_eq!(vols[1].len(), 8 << 20);
}

/// A volume group on two partitions of one disk: a volume extended from
/// the first onto the second reads across both, one on the second alone
/// reads too, and each is listed once.
#[test]
fn a_volume_group_on_two_partitions_of_one_disk_reads_across_them() {
    if !have("sfdisk") || !have("pvcreate") || !have("losetup") || !nix_is_root() {
        eprintln!("skipped: LVM2 tests need root, losetup, sfdisk and lvm2 (tools/setup installs them)");
        return;
    }
    let dir = tempfile_dir();
    let img = image(dir.path(), "two.img", 64);
    sfdisk(&img, "label: dos\nstart=2048, size=50000, type=8e\nstart=53248, size=50000, type=8e\n");
    let vg = format!("two{}", std::process::id());
    {
        let (first, second) = (LoopDevice::attach(&img, 2048 * 512, 50_000 * 512), LoopDevice::attach(&img, 53_248 * 512, 50_000 * 512));
        lvm(&["pvcreate", "-q", "-ff", "-y", &first.path, &second.path]);
        lvm(&["vgcreate", "-q", "-s", "4m", &vg, &first.path, &second.path]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "12M", "-n", "span", &vg, &first.path]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-n", "second", &vg, &second.path]);
        lvm(&["lvextend", "-q", "-L", "20M", &format!("{vg}/span"), &second.path]);
        lvm(&["vgchange", "-q", "-an", &vg]);
        lvm(&["vgexport", "-q", &vg]);
    }
    let vols = volumes(open(&img), "two");
    let listed: Vec<(&str, bool)> = vols.iter().map(|v| (v.name.as_str(), v.device.is_some())).collect();
    let (span, second) = (format!("{vg}-span"), format!("{vg}-second"));
    assert_eq!(listed, [("p1", true), ("p2", true), (second.as_str(), true), (span.as_str(), true)], "{:?}", vols.iter().map(|v| &v.problem).collect::<Vec<_>>());
    let span = vols[3].device.as_ref().expect("span reads");
    assert_eq!(span.len(), 20 << 20);
    // PE start 1 MiB on each partition: span's first 12 MiB on p1, then
    // 8 MiB on p2 after "second" (8 MiB).
    let (p1, p2) = (2048 * 512u64, 53_248 * 512u64);
    assert_eq!(span.disk_offset(0), Some(p1 + (1 << 20)));
    assert_eq!(span.disk_offset(12 << 20), Some(p2 + (1 << 20) + (8 << 20)));
    assert_eq!(vols[2].device.as_ref().unwrap().disk_offset(0), Some(p2 + (1 << 20)));
}

/// A physical volume with two metadata copies, one of which LVM stops
/// keeping current (`vgchange --vgmetadatacopies 1` marks the first one
/// ignored): a volume made after that is read from the current copy.
#[test]
fn an_ignored_metadata_copy_is_passed_over_for_the_current_one() {
    if !have("pvcreate") || !have("losetup") || !nix_is_root() {
        eprintln!("skipped: LVM2 tests need root, losetup and lvm2 (tools/setup installs them)");
        return;
    }
    let dir = tempfile_dir();
    let img = image(dir.path(), "copies.img", 64);
    let vg = format!("copies{}", std::process::id());
    {
        let lo = LoopDevice::attach(&img, 0, 64 << 20);
        lvm(&["pvcreate", "-q", "-ff", "-y", "--metadatacopies", "2", &lo.path]);
        lvm(&["vgcreate", "-q", "-s", "4m", &vg, &lo.path]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "8M", "-n", "early", &vg]);
        lvm(&["vgchange", "-q", "--vgmetadatacopies", "1", &vg]);
        lvm(&["lvcreate", "-q", "-an", "-Zn", "-L", "4M", "-n", "late", &vg]);
        lvm(&["vgchange", "-q", "-an", &vg]);
        lvm(&["vgexport", "-q", &vg]);
    }
    let names: Vec<String> = volumes(open(&img), "copies").into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["whole".to_string(), format!("{vg}-early"), format!("{vg}-late")]);
}

/// LVM's tools on loop devices only, without device-mapper (there is
/// none here): they write metadata and activate nothing.
fn lvm(args: &[&str]) -> String {
    run(Command::new("lvm")
        .args(args)
        .args(["--config", "global { activation = 0 } devices { filter = [ \"a|/dev/loop.*|\", \"r|.*|\" ] }"])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
}

/// Writes a partition table from an `sfdisk` script.
fn sfdisk(img: &Path, script: &str) {
    let mut child = Command::new("sfdisk").args(["-q"]).arg(img).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A loop device over part of a file, detached when dropped.
struct LoopDevice {
    path: String,
}

impl LoopDevice {
    fn attach(file: &Path, offset: u64, len: u64) -> LoopDevice {
        let path = run(Command::new("losetup")
            .args(["-f", "--show", "-o", &offset.to_string(), "--sizelimit", &len.to_string()])
            .arg(file))
        .trim()
        .to_string();
        LoopDevice { path }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

fn tempfile_dir() -> TempDir {
    let path = std::env::temp_dir().join(format!("strata-guest-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&path).unwrap();
    TempDir(path)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
