//! VM and disk-image backups against real VMDKs made by qemu-img from an
//! image holding a real ext4 file system, restores checked with
//! `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

use crate::util::*;

pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (tools/setup)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw disk image of `mib` MiB holding an ext4 file system with files.
pub fn ext4_image(dir: &Path, name: &str, mib: u64, seed: u64) -> PathBuf {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir_all(content.join("etc")).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for i in 0..20 {
        std::fs::write(
            content.join(format!("etc/file{i}.txt")),
            text_bytes(&mut rng, 20_000 + i * 1000),
        )
        .unwrap();
    }
    std::fs::write(content.join("blob.bin"), random_bytes(&mut rng, 3 << 20)).unwrap();
    let image = dir.join(format!("{name}.raw"));
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let out = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

pub fn convert(raw: &Path, subformat: &str, out: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

fn assert_identical(a: &Path, b: &Path) {
    let out = qemu_img(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        out.contains("Images are identical"),
        "{} vs {}: {out}",
        a.display(),
        b.display()
    );
}

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "twoGbMaxExtentSparse",
    "monolithicFlat",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

#[test]
fn every_vmdk_subformat_is_read_block_for_block() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "disk", 48, 1);
    let source = std::fs::read(&raw).unwrap();
    for subformat in SUBFORMATS {
        let vmdk = t.path(&format!("{subformat}.vmdk"));
        convert(&raw, subformat, &vmdk);
        t.ok(&[
            "backup",
            "image",
            vmdk.to_str().unwrap(),
            "--name",
            subformat,
        ]);
        let out = t.path(&format!("{subformat}.out"));
        t.ok(&[
            "restore",
            "disk",
            &format!("{subformat}@latest"),
            "image",
            "--raw-to",
            out.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == source,
            "{subformat}: restored bytes differ from the source image"
        );
        // Holes stay holes in the restored file.
        assert!(
            allocated(&out) < source.len() as u64,
            "{subformat}: restored file is not sparse"
        );
    }
    // The raw image itself is a source too, and all of them dedup.
    let summary = t.json(&["backup", "image", raw.to_str().unwrap()]);
    assert!(summary["bytes_new"].as_u64().unwrap() < 10_000, "{summary}");
    t.ok(&["check", "--read-data"]);
}

fn make_vm(dir: &Path) -> PathBuf {
    let folder = dir.join("web01");
    std::fs::create_dir_all(&folder).unwrap();
    let system = ext4_image(dir, "system", 64, 2);
    let data = ext4_image(dir, "data", 32, 3);
    convert(&system, "monolithicSparse", &folder.join("web01.vmdk"));
    convert(&data, "monolithicFlat", &folder.join("web01_1.vmdk"));
    convert(&data, "streamOptimized", &folder.join("archive.vmdk"));
    std::fs::write(
        folder.join("web01.vmx"),
        "displayName = \"web01\"\nnumvcpus = \"2\"\nmemsize = \"2048\"\nguestOS = \"ubuntu-64\"\n\
         scsi0:0.fileName = \"web01.vmdk\"\nsata0:0.fileName = \"web01_1.vmdk\"\nnvme0:0.fileName = \"archive.vmdk\"\n\
         ide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"tools.iso\"\n",
    )
    .unwrap();
    folder
}

#[test]
fn vm_with_several_controllers_restores_as_name_1_then_name_2() {
    let t = TestRepo::new();
    let folder = make_vm(t.dir.path());
    let summary = t.json(&["backup", "vm", folder.to_str().unwrap()]);
    assert_eq!(summary["files"], 3);
    let shown = t.ok(&["show", "web01@latest"]);
    assert!(
        shown.contains("2 vCPU, 2048 MB, guest ubuntu-64") && shown.contains("nvme0:0"),
        "{shown}"
    );

    let target = t.path("vms");
    let first = t.json(&[
        "restore",
        "vm",
        "web01@latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(first["name"], "web01_1");
    let second = t.json(&[
        "restore",
        "vm",
        "web01@latest",
        "--to",
        target.to_str().unwrap(),
        "--disk-format",
        "raw",
    ]);
    assert_eq!(second["name"], "web01_2");

    for (name, suffix) in [("web01_1", ""), ("web01_2", "")] {
        let vm_dir = target.join(name);
        let vmx = std::fs::read_to_string(vm_dir.join(format!("{name}.vmx"))).unwrap();
        assert!(vmx.contains(&format!("displayName = \"{name}\"")), "{vmx}");
        assert!(
            vmx.contains("memsize = \"2048\"") && vmx.contains("tools.iso"),
            "{vmx}"
        );
        let slot_file = |slot: &str| {
            let line = vmx
                .lines()
                .find(|l| l.starts_with(&format!("{slot}.fileName")))
                .unwrap();
            vm_dir.join(line.split('"').nth(1).unwrap())
        };
        assert_identical(&folder.join("web01.vmdk"), &slot_file("scsi0:0"));
        assert_identical(&folder.join("web01_1.vmdk"), &slot_file("sata0:0"));
        assert_identical(&folder.join("archive.vmdk"), &slot_file("nvme0:0"));
        qemu_img(&["check", slot_file("scsi0:0").to_str().unwrap()]);
        let _ = suffix;
    }
    // One disk as a new minimal VM.
    let single = t.json(&[
        "restore",
        "disk",
        "web01@latest",
        "sata0:0",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(single["name"], "web01_3");
    let vmx = std::fs::read_to_string(target.join("web01_3/web01_3.vmx")).unwrap();
    assert!(
        vmx.contains("numvcpus = \"1\"") && vmx.contains("memsize = \"128\""),
        "{vmx}"
    );
    assert_identical(
        &folder.join("web01_1.vmdk"),
        &target.join("web01_3/web01_3.vmdk"),
    );
}

#[test]
fn changed_extents_incremental_reads_only_what_changed() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "disk", 64, 4);
    t.ok(&["backup", "image", raw.to_str().unwrap(), "--name", "vm"]);

    // Change three places, the way a guest would, and describe them as
    // VMware's changed-block tracking does.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let changes = [
        (5u64 << 20, 4096u64),
        (20 << 20, 100_000),
        (63 << 20, 65536),
    ];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for (start, len) in changes {
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            f.write_all_at(&data, start).unwrap();
        }
    }
    let extents = t.path("changed.json");
    let list: Vec<_> = changes
        .iter()
        .map(|(s, l)| serde_json::json!({"start": s, "length": l}))
        .collect();
    std::fs::write(&extents, serde_json::to_vec(&list).unwrap()).unwrap();

    let spec = format!("image={}", extents.display());
    let incremental = t.json(&[
        "backup",
        "image",
        raw.to_str().unwrap(),
        "--name",
        "vm",
        "--changed-extents",
        &spec,
    ]);
    let read = incremental["bytes_read"].as_u64().unwrap();
    // Only the 1 MiB chunks touching a changed extent are read.
    assert!(read <= 3 << 20, "read {read} bytes");
    assert!(
        read >= changes.iter().map(|c| c.1).sum::<u64>(),
        "read {read} bytes"
    );

    let full = t.json(&[
        "backup",
        "image",
        raw.to_str().unwrap(),
        "--name",
        "vm-full",
        "--full",
    ]);
    assert!(full["bytes_read"].as_u64().unwrap() > 3 * read);
    let repo = strata::repository::Repository::open_with(&t.repo, &open_options()).unwrap();
    let disks = |selector: &str| {
        let rp = repo.resolve(selector).unwrap();
        strata::restore::vm::load_description(&repo, &rp)
            .unwrap()
            .disks
    };
    assert_eq!(
        disks("vm@latest")[0].pages,
        disks("vm-full@latest")[0].pages,
        "incremental and full maps differ"
    );
    let out = t.path("restored.raw");
    t.ok(&[
        "restore",
        "disk",
        "vm@latest",
        "image",
        "--raw-to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap());
}

/// Flips bytes in the middle of the biggest pack (the data pack), so that
/// reading a disk fails part way through.
pub fn damage_biggest_pack(t: &TestRepo) {
    let packs: Vec<PathBuf> = files_under(&t.repo.join("packs"));
    let biggest = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(biggest).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(biggest, &bytes).unwrap();
}

#[test]
fn failed_restore_leaves_no_vm_folder() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "disk", 32, 6);
    t.ok(&["backup", "image", raw.to_str().unwrap(), "--name", "vm"]);
    damage_biggest_pack(&t);

    let target = t.path("vms");
    let out = t.run(&[
        "restore",
        "vm",
        "vm@latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged"), "{err}");
    assert!(
        std::fs::read_dir(&target).unwrap().next().is_none(),
        "a partial VM folder was left behind"
    );
}

#[test]
fn malformed_disks_and_configurations_get_clear_errors() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "disk", 16, 7);
    let sparse = t.path("sparse.vmdk");
    convert(&raw, "monolithicSparse", &sparse);
    let bytes = std::fs::read(&sparse).unwrap();

    let truncated = t.path("truncated.vmdk");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let mut bad_gd = bytes.clone();
    bad_gd[56..64].copy_from_slice(&u64::MAX.wrapping_sub(5).to_le_bytes());
    let bad_gd_path = t.path("bad-gd.vmdk");
    std::fs::write(&bad_gd_path, &bad_gd).unwrap();
    let folder = t.path("badvm");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("bad.vmx"),
        "displayName = \"bad\"\nthis line is nonsense\n",
    )
    .unwrap();
    let missing = t.path("missingvm");
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(
        missing.join("m.vmx"),
        "displayName = \"m\"\nscsi0:0.fileName = \"gone.vmdk\"\n",
    )
    .unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["backup", "image", truncated.to_str().unwrap()],
            "truncated.vmdk",
        ),
        (
            vec!["backup", "image", bad_gd_path.to_str().unwrap()],
            "grain directory",
        ),
        (vec!["backup", "vm", folder.to_str().unwrap()], "line 2"),
        (vec!["backup", "vm", missing.to_str().unwrap()], "gone.vmdk"),
        (vec!["backup", "vm", "/nonexistent/vm"], "cannot back up VM"),
    ];
    for (args, expected) in cases {
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    assert!(t.json(&["list"]).as_array().unwrap().is_empty());
}

/// Mutation fuzzing of the VMDK readers over real files: whatever bytes
/// are flipped, opening and reading returns data or an error, never a
/// panic or an unbounded allocation.
#[test]
fn mutated_vmdks_never_panic() {
    use strata::vmdk::VirtualDisk;
    let dir = tempfile::tempdir().unwrap();
    let raw = ext4_image(dir.path(), "disk", 8, 8);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    for subformat in ["monolithicSparse", "streamOptimized"] {
        let vmdk = dir.path().join(format!("{subformat}.vmdk"));
        convert(&raw, subformat, &vmdk);
        let original = std::fs::read(&vmdk).unwrap();
        let mutated_path = dir.path().join("mutated.vmdk");
        for round in 0..150 {
            let mut bytes = original.clone();
            let flips = 1 + (rng.next_u32() % 8) as usize;
            for _ in 0..flips {
                // Mostly metadata (header, descriptor, tables), sometimes anywhere.
                let limit = if round % 4 == 0 {
                    bytes.len()
                } else {
                    bytes.len().min(200_000)
                };
                let at = rng.next_u32() as usize % limit;
                bytes[at] = rng.next_u32() as u8;
            }
            if round % 10 == 0 {
                bytes.truncate(rng.next_u32() as usize % bytes.len());
            }
            std::fs::write(&mutated_path, &bytes).unwrap();
            if let Ok(disk) = VirtualDisk::open(&mutated_path, None) {
                if let Ok(ranges) = disk.allocated() {
                    let mut buf = vec![0u8; 1 << 20];
                    for (start, end) in ranges.into_iter().take(16) {
                        let len = ((end - start) as usize).min(buf.len());
                        let _ = disk.read_at(start, &mut buf[..len]);
                    }
                }
            }
        }
    }
}

#[test]
fn interrupted_restore_leaves_no_vm_folder() {
    let t = TestRepo::new();
    let raw = t.path("big.raw");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(10);
    std::fs::write(&raw, random_bytes(&mut rng, 256 << 20)).unwrap();
    t.ok(&["backup", "image", raw.to_str().unwrap(), "--name", "big"]);
    let target = t.path("vms");
    std::fs::create_dir_all(&target).unwrap();
    let mut interrupted = 0;
    for delay_ms in [20u64, 40, 80, 160, 320] {
        let child = t
            .command(&[
                "restore",
                "vm",
                "big@latest",
                "--to",
                target.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            // Finished before the signal: the folder is complete; clear it.
            for entry in std::fs::read_dir(&target).unwrap() {
                std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
            }
            continue;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        // On a loaded machine the signal can arrive before strata installs
        // its handler; then the default action ends it, which must leave no
        // folder either.
        let killed_before_handler =
            std::os::unix::process::ExitStatusExt::signal(&out.status).is_some();
        assert!(
            killed_before_handler || err.contains("interrupted"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(&target).unwrap().next().is_none(),
            "after {delay_ms} ms a partial VM folder was left behind"
        );
        interrupted += 1;
    }
    assert!(interrupted > 0, "no restore was interrupted");
}
