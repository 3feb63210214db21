//! Restored disks are valid for qemu-img whatever the data: blank, all
//! zeros, sizes that are not whole sectors, huge and nearly empty; they
//! keep their adapter type; and a raw restore over an existing file never
//! destroys it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::SeedableRng;

use crate::util::*;
use crate::vm::{damage_biggest_pack, ext4_image, qemu_img};

fn identical(a: &Path, a_format: &str, b: &Path) {
    let out = qemu_img(&[
        "compare",
        "-f",
        a_format,
        "-F",
        "vmdk",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(
        out.contains("Images are identical"),
        "{a:?} vs {b:?}: {out}"
    );
}

/// The one `.vmdk` descriptor (not `-flat.vmdk`) in a restored VM folder.
fn restored_vmdk(folder: &Path) -> PathBuf {
    files_under(folder)
        .into_iter()
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".vmdk") && !name.ends_with("-flat.vmdk")
        })
        .unwrap()
}

fn restore_vm(t: &TestRepo, rp: &str, target: &Path, format: &str) -> PathBuf {
    let out = t.json(&[
        "restore",
        "vm",
        rp,
        "--to",
        target.to_str().unwrap(),
        "--disk-format",
        format,
    ]);
    PathBuf::from(out["folder"].as_str().unwrap())
}

#[test]
fn blank_and_all_zero_disks_restore_as_vmdks_qemu_opens() {
    let t = TestRepo::new();
    let blank = t.path("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let zeros = t.path("zeros.img");
    std::fs::write(&zeros, vec![0u8; 3 << 20]).unwrap();
    let target = t.path("vms");
    for (name, source) in [("blank", &blank), ("zeros", &zeros)] {
        t.ok(&["backup", "image", source.to_str().unwrap()]);
        let single = t.json(&[
            "restore",
            "disk",
            &format!("{name}@latest"),
            "image",
            "--to",
            target.to_str().unwrap(),
        ]);
        let vm = restored_vmdk(Path::new(single["folder"].as_str().unwrap()));
        for folder in [
            None,
            Some(restore_vm(&t, &format!("{name}@latest"), &target, "vmdk")),
            Some(restore_vm(&t, &format!("{name}@latest"), &target, "raw")),
        ] {
            let vmdk = folder.map_or(vm.clone(), |f| restored_vmdk(&f));
            qemu_img(&["check", vmdk.to_str().unwrap()]);
            let info = qemu_img(&["info", vmdk.to_str().unwrap()]);
            assert!(
                info.contains(&format!(
                    "({} bytes)",
                    std::fs::metadata(source).unwrap().len()
                )),
                "{info}"
            );
            identical(source, "raw", &vmdk);
        }
    }
}

/// A disk of no bytes cannot be a VMDK of no sectors (qemu refuses one
/// even of its own making), so the writer gives it one zero sector.
#[test]
fn a_zero_capacity_disk_restores_as_one_sector_qemu_opens() {
    use strata::vmdk::writer::{DiskSink, SparseVmdkWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.vmdk");
    let writer = SparseVmdkWriter::create(&path, 0, "lsilogic").unwrap();
    Box::new(writer).finish().unwrap();
    qemu_img(&["check", path.to_str().unwrap()]);
    let info = qemu_img(&["info", path.to_str().unwrap()]);
    assert!(info.contains("(512 bytes)"), "{info}");
}

#[test]
fn images_of_partial_sectors_restore_rounded_up_to_a_whole_sector() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(31);
    let odd = t.path("odd.img");
    let bytes = random_bytes(&mut rng, 1_000_123);
    std::fs::write(&odd, &bytes).unwrap();
    t.ok(&["backup", "image", odd.to_str().unwrap()]);
    let target = t.path("vms");
    for format in ["vmdk", "raw"] {
        let folder = restore_vm(&t, "odd@latest", &target, format);
        let vmdk = restored_vmdk(&folder);
        qemu_img(&["check", vmdk.to_str().unwrap()]);
        let info = qemu_img(&["info", vmdk.to_str().unwrap()]);
        assert!(info.contains("(1000448 bytes)"), "{format}: {info}");
        identical(&odd, "raw", &vmdk);
        if format == "raw" {
            let flat = folder.join(format!(
                "{}-flat.vmdk",
                vmdk.file_stem().unwrap().to_str().unwrap()
            ));
            assert_eq!(std::fs::metadata(flat).unwrap().len(), 1_000_448);
        }
    }
    // The raw contents are the image's bytes exactly.
    let out = t.path("odd.out");
    t.ok(&[
        "restore",
        "disk",
        "odd@latest",
        "image",
        "--raw-to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(out).unwrap() == bytes);
}

fn adapter_of(vmdk: &Path) -> String {
    let bytes = std::fs::read(vmdk).unwrap();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 << 10)]).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("ddb.adapterType"))
        .unwrap_or_else(|| panic!("no adapter type in {vmdk:?}"));
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn restored_descriptors_keep_the_disks_adapter_type() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "a", 16, 32);
    let folder = t.path("idevm");
    std::fs::create_dir_all(&folder).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "adapter_type=ide",
        raw.to_str().unwrap(),
        folder.join("idevm.vmdk").to_str().unwrap(),
    ]);
    std::fs::write(
        folder.join("idevm.vmx"),
        "displayName = \"idevm\"\nide0:0.present = \"TRUE\"\nide0:0.fileName = \"idevm.vmdk\"\n",
    )
    .unwrap();
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let target = t.path("vms");
    for format in ["vmdk", "raw"] {
        let restored = restore_vm(&t, "idevm@latest", &target, format);
        let vmdk = restored_vmdk(&restored);
        assert_eq!(adapter_of(&vmdk), "ide", "{format}");
        let vmx = std::fs::read_to_string(restored.join(format!(
            "{}.vmx",
            restored.file_name().unwrap().to_str().unwrap()
        )))
        .unwrap();
        assert!(vmx.contains("ide0:0.fileName"), "{vmx}");
    }

    // A single buslogic image keeps buslogic, in a minimal VM that attaches
    // it to a matching controller.
    let bus = t.path("bus.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "adapter_type=buslogic",
        raw.to_str().unwrap(),
        bus.to_str().unwrap(),
    ]);
    t.ok(&["backup", "image", bus.to_str().unwrap()]);
    let single = t.json(&[
        "restore",
        "disk",
        "bus@latest",
        "image",
        "--to",
        target.to_str().unwrap(),
    ]);
    let restored = PathBuf::from(single["folder"].as_str().unwrap());
    assert_eq!(adapter_of(&restored_vmdk(&restored)), "buslogic");
    let vmx = std::fs::read_to_string(restored.join(format!(
        "{}.vmx",
        restored.file_name().unwrap().to_str().unwrap()
    )))
    .unwrap();
    assert!(vmx.contains("scsi0.virtualDev = \"buslogic\""), "{vmx}");
}

/// Writes `len` random bytes at each offset of a sparse file.
fn sparse_image(path: &Path, size: u64, offsets: &[u64], len: usize) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(size);
    for &at in offsets {
        f.write_all_at(&random_bytes(&mut rng, len), at).unwrap();
    }
}

#[test]
fn a_huge_nearly_empty_disk_restores_as_a_small_vmdk() {
    let t = TestRepo::new();
    // A smaller instance that qemu-img compares exactly.
    let medium = t.path("medium.img");
    sparse_image(
        &medium,
        64 << 30,
        &[0, 5 << 30, (64 << 30) - (1 << 20)],
        200_000,
    );
    t.ok(&["backup", "image", medium.to_str().unwrap()]);
    let target = t.path("vms");
    let folder = restore_vm(&t, "medium@latest", &target, "vmdk");
    let vmdk = restored_vmdk(&folder);
    qemu_img(&["check", vmdk.to_str().unwrap()]);
    identical(&medium, "raw", &vmdk);

    // 15 TiB with a few hundred KiB of data: the VMDK's grain tables and
    // directory follow the data, not the capacity.
    const TIB: u64 = 1 << 40;
    let huge = t.path("huge.img");
    sparse_image(
        &huge,
        15 * TIB,
        &[0, 7 * TIB + 12345, 15 * TIB - (1 << 20)],
        100_000,
    );
    t.ok(&["backup", "image", huge.to_str().unwrap()]);
    let folder = restore_vm(&t, "huge@latest", &target, "vmdk");
    let vmdk = restored_vmdk(&folder);
    assert!(
        allocated(&vmdk) < 8 << 20,
        "a 15 TiB VMDK holding 300 KB allocates {} bytes",
        allocated(&vmdk)
    );
    qemu_img(&["check", vmdk.to_str().unwrap()]);
    let info = qemu_img(&["info", vmdk.to_str().unwrap()]);
    assert!(info.contains(&format!("({} bytes)", 15 * TIB)), "{info}");
}

#[test]
fn a_failed_raw_restore_leaves_the_existing_file_intact() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(33);
    let image = t.path("disk.img");
    let data = random_bytes(&mut rng, 24 << 20);
    std::fs::write(&image, &data).unwrap();
    t.ok(&["backup", "image", image.to_str().unwrap()]);
    let out_dir = t.path("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("disk.raw");
    let restore_raw = |to: &std::path::Path| {
        t.run(&[
            "restore",
            "disk",
            "disk@latest",
            "image",
            "--raw-to",
            to.to_str().unwrap(),
        ])
    };

    // A good restore replaces an existing file, keeping its mode.
    std::fs::write(&out, b"an older copy").unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let good = restore_raw(&out);
    assert!(good.status.success(), "{}", stderr_of(&good));
    assert!(std::fs::read(&out).unwrap() == data);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640);

    // A damaged chunk in the middle: the old copy survives untouched.
    std::fs::write(&out, b"an older copy").unwrap();
    damage_biggest_pack(&t);
    assert_ne!(restore_raw(&out).status.code(), Some(0));
    assert_eq!(std::fs::read(&out).unwrap(), b"an older copy");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("disk.raw")],
        "temporary files left behind"
    );

    // Nothing existed before: nothing is left after a failure either.
    let fresh = out_dir.join("fresh.raw");
    assert_ne!(restore_raw(&fresh).status.code(), Some(0));
    assert!(!fresh.exists());
}

/// An image of 40 MiB and a partial chunk: random data over most chunks,
/// a chunk with all-zero 4 KiB blocks inside, a chunk of written zeros, a
/// hole and data in the short last chunk, backed up as disk `zeros`.
/// Returns it and the bytes of its 4 KiB blocks that hold data.
fn image_with_zeros(t: &TestRepo) -> (PathBuf, u64) {
    const MIB: u64 = 1 << 20;
    let path = t.path("zeros.img");
    let f = std::fs::File::create(&path).unwrap();
    let size = 40 * MIB + 12_345;
    f.set_len(size).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(40);
    let data = random_bytes(&mut rng, 24 << 20);
    f.write_all_at(&data, 0).unwrap();
    // Zero blocks inside chunk 3 (at 3 MiB + 64 KiB, 256 KiB of them) and
    // a whole chunk of zeros written out at 30 MiB.
    f.write_all_at(&[0; 256 << 10], 3 * MIB + (64 << 10))
        .unwrap();
    f.write_all_at(&[0; MIB as usize], 30 * MIB).unwrap();
    f.write_all_at(b"the end", size - 7).unwrap();
    t.ok(&["backup", "image", path.to_str().unwrap(), "--name", "zeros"]);
    // 24 MiB less the zeros, plus the block holding the last bytes.
    (path, (24 << 20) - (256 << 10) + 4096)
}

fn restore_zeros_raw(t: &TestRepo, to: &str) {
    t.ok(&["restore", "disk", "zeros@latest", "zeros", "--raw-to", to]);
}

#[test]
fn raw_restores_are_identical_and_leave_zeros_unallocated() {
    let t = TestRepo::new();
    let (image, data_bytes) = image_with_zeros(&t);

    let out = t.path("out/zeros.raw");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    restore_zeros_raw(&t, out.to_str().unwrap());
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&image).unwrap());
    // File systems may add a block or two of extent tree; zeros would be
    // a quarter MiB at least.
    assert!(
        allocated(&out) <= data_bytes + (64 << 10),
        "{} bytes allocated for {data_bytes} of data",
        allocated(&out)
    );

    // The whole-VM restore writes its flat extent and its sparse VMDK
    // through the same stream: workers ahead of the in-order VMDK writer.
    let target = t.path("vms");
    for format in ["raw", "vmdk"] {
        let folder = restore_vm(&t, "zeros@latest", &target, format);
        let vmdk = restored_vmdk(&folder);
        identical(&image, "raw", &vmdk);
        if format == "raw" {
            let flat = vmdk.with_file_name(format!(
                "{}-flat.vmdk",
                vmdk.file_stem().unwrap().to_str().unwrap()
            ));
            assert!(allocated(&flat) <= data_bytes + (64 << 10));
        }
    }
}

#[test]
fn a_damaged_chunk_fails_a_raw_restore_naming_the_disk_and_offset() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(41);
    let image = t.path("disk.img");
    std::fs::write(&image, random_bytes(&mut rng, 24 << 20)).unwrap();
    t.ok(&["backup", "image", image.to_str().unwrap()]);
    damage_biggest_pack(&t);
    let out = t.path("disk.raw");
    let failed = t.run(&[
        "restore",
        "disk",
        "disk@latest",
        "image",
        "--raw-to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(failed.status.code(), Some(1));
    let err = stderr_of(&failed);
    let offset = err
        .split("at byte ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        err.contains("disk ") && offset.is_some_and(|o| o % (1 << 20) == 0 && o < 24 << 20),
        "{err}"
    );
    assert!(err.contains("damaged"), "{err}");
    assert!(!out.exists());
}

/// A loop device over a file, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn over(file: &Path) -> Option<Self> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_raw_restore_to_a_block_device_writes_its_holes_and_zeros() {
    if !is_root() {
        eprintln!("skipped: needs root for a loop device");
        return;
    }
    let t = TestRepo::new();
    let (image, _) = image_with_zeros(&t);
    // A device larger than the disk, full of old data everywhere.
    let backing = t.path("device.img");
    let size = std::fs::metadata(&image).unwrap().len();
    std::fs::write(
        &backing,
        vec![0xa5; (size as usize).div_ceil(512) * 512 + (1 << 20)],
    )
    .unwrap();
    let Some(device) = LoopDevice::over(&backing) else {
        eprintln!("skipped: no loop device");
        return;
    };
    restore_zeros_raw(&t, &device.0);
    drop(device);
    let written = std::fs::read(&backing).unwrap();
    let source = std::fs::read(&image).unwrap();
    assert!(
        written[..source.len()] == source[..],
        "the device differs from the disk"
    );
    assert!(
        written[source.len()..].iter().all(|b| *b == 0xa5),
        "written past the disk's end"
    );
}
