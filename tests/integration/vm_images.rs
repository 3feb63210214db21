//! Reading disk images as the real-image corpus has them: files that are
//! not what their name says, descriptors with long comment headers, a
//! byte-order mark or windows-1252 text, block devices, inconsistent
//! sparse headers, and the messages each of these gets. qemu-img is the
//! ground truth for what is and is not a VMDK.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::SeedableRng;

use crate::util::*;
use crate::vm::{convert, ext4_image, qemu_img};

fn qemu_img_refuses(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(!out.status.success(), "qemu-img {args:?} accepted it");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs strata, expects exit status 1 and every `expected` in its message.
fn refused(t: &TestRepo, args: &[&str], expected: &[&str]) -> String {
    let out = t.run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: expected {e:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn restore_raw(t: &TestRepo, name: &str) -> Vec<u8> {
    let out = t.path(&format!("{name}.restored"));
    let _ = std::fs::remove_file(&out);
    t.ok(&[
        "restore",
        "disk",
        &format!("{name}@latest"),
        "image",
        "--raw-to",
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

fn shell(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn files_named_vmdk_that_are_not_vmdks_are_refused_naming_what_they_look_like() {
    let t = TestRepo::new();
    let p = |name: &str| t.path(name).to_str().unwrap().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &p("qcow.vmdk"), "16M"]);
    qemu_img(&["create", "-q", "-f", "vpc", &p("vhd.vmdk"), "16M"]);
    qemu_img(&["create", "-q", "-f", "vhdx", &p("vhdx.vmdk"), "16M"]);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    std::fs::write(t.path("notes.txt"), text_bytes(&mut rng, 20_000)).unwrap();
    shell(&format!("bzip2 -c {} > {}", p("notes.txt"), p("bzip.vmdk")));
    shell(&format!("gzip -c {} > {}", p("notes.txt"), p("gzip.vmdk")));
    std::fs::copy(t.path("notes.txt"), t.path("text.vmdk")).unwrap();
    std::fs::write(t.path("garbage.vmdk"), random_bytes(&mut rng, 1 << 20)).unwrap();
    std::fs::write(t.path("empty.vmdk"), b"").unwrap();

    for (file, looks) in [
        ("qcow.vmdk", "a qcow2 image"),
        ("vhd.vmdk", "a VHD (vpc) image"),
        ("vhdx.vmdk", "a VHDX image"),
        ("bzip.vmdk", "bzip2-compressed data"),
        ("gzip.vmdk", "gzip-compressed data"),
        ("text.vmdk", "a text file"),
        ("garbage.vmdk", "data without any known image magic"),
        ("empty.vmdk", "an empty file"),
    ] {
        // Ground truth: none of these is a VMDK to qemu either.
        qemu_img_refuses(&["info", "-f", "vmdk", &p(file)]);
        refused(&t, &["backup", "image", &p(file)], &[&p(file), looks]);
    }
    // Raw by name: a container format in a .img is not guessed either.
    std::fs::copy(t.path("qcow.vmdk"), t.path("cloud.img")).unwrap();
    refused(
        &t,
        &["backup", "image", &p("cloud.img")],
        &["cloud.img", "a qcow2 image", "--format raw"],
    );
    assert!(t.json(&["list"]).as_array().unwrap().is_empty());

    // Asked for explicitly, raw bytes are stored as they are.
    t.ok(&["backup", "image", &p("garbage.vmdk"), "--format", "raw"]);
    t.ok(&["backup", "image", &p("cloud.img"), "--format", "raw"]);
    assert!(restore_raw(&t, "cloud") == std::fs::read(t.path("cloud.img")).unwrap());
    // And --format vmdk holds other names to being a VMDK.
    std::fs::copy(t.path("notes.txt"), t.path("disk.bin")).unwrap();
    refused(
        &t,
        &["backup", "image", &p("disk.bin"), "--format", "vmdk"],
        &["disk.bin", "not a VMDK", "a text file"],
    );
}

/// A monolithicFlat disk of an ext4 image: (raw image, descriptor text).
fn flat_disk(t: &TestRepo, name: &str, seed: u64) -> (PathBuf, String) {
    let raw = ext4_image(t.dir.path(), name, 16, seed);
    let vmdk = t.path(&format!("{name}.vmdk"));
    convert(&raw, "monolithicFlat", &vmdk);
    // qemu pads descriptors with NULs; the tests edit the text before them.
    let text = std::fs::read_to_string(&vmdk).unwrap();
    (raw, text.trim_end_matches('\0').to_string())
}

#[test]
fn descriptors_with_long_comment_headers_a_bom_or_a_stale_tail_are_read_as_vmdks() {
    let t = TestRepo::new();
    let (raw, text) = flat_disk(&t, "d", 22);
    let source = std::fs::read(&raw).unwrap();
    let header: String = (0..40)
        .map(|i| format!("# exported by a tool that comments a lot, line {i}\n"))
        .collect();
    for (name, bytes) in [
        ("long", format!("{header}{text}").into_bytes()),
        (
            "bom",
            [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat(),
        ),
        // As qemu leaves a descriptor it rewrote with a shorter `CID=`
        // (printed without leading zeros): the old end past the NUL.
        (
            "stale",
            [text.as_bytes(), b"\0\"\n\0\0\0\0"].concat(),
        ),
    ] {
        let path = t.path(&format!("{name}.vmdk"));
        std::fs::write(&path, bytes).unwrap();
        qemu_img(&["info", "-f", "vmdk", path.to_str().unwrap()]);
        t.ok(&["backup", "image", path.to_str().unwrap()]);
        let shown = t.ok(&["show", &format!("{name}@latest")]);
        assert!(shown.contains("monolithicFlat"), "{name}: {shown}");
        assert!(
            restore_raw(&t, name) == source,
            "{name}: restored bytes differ"
        );
    }
}

#[test]
fn windows_1252_descriptors_with_non_ascii_extent_names_are_read() {
    let t = TestRepo::new();
    let (raw, text) = flat_disk(&t, "w", 23);
    let source = std::fs::read(&raw).unwrap();
    // The extent's name as a windows-1252 host wrote it: "dïsk-flat.vmdk"
    // with ï as the single byte 0xEF, which is not UTF-8.
    let legacy = t.dir.path().join(OsStr::from_bytes(b"d\xefsk-flat.vmdk"));
    std::fs::rename(t.path("w-flat.vmdk"), &legacy).unwrap();
    let mut bytes = Vec::new();
    for line in text.lines() {
        let line = line
            .replace("encoding=\"UTF-8\"", "encoding=\"windows-1252\"")
            .into_bytes();
        let line = match line.windows(11).position(|w| w == b"w-flat.vmdk") {
            Some(at) => [&line[..at], b"d\xefsk-flat.vmdk", &line[at + 11..]].concat(),
            None => line,
        };
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    assert!(std::str::from_utf8(&bytes).is_err());
    let descriptor = t.path("w1252.vmdk");
    std::fs::write(&descriptor, &bytes).unwrap();
    qemu_img(&["info", "-f", "vmdk", descriptor.to_str().unwrap()]);
    t.ok(&["backup", "image", descriptor.to_str().unwrap()]);
    assert!(restore_raw(&t, "w1252") == source);

    // The same descriptor beside an extent whose name was converted to
    // UTF-8 (copied from a Windows host) is read too.
    std::fs::rename(&legacy, t.path("dïsk-flat.vmdk")).unwrap();
    t.ok(&[
        "backup",
        "image",
        descriptor.to_str().unwrap(),
        "--name",
        "utf8",
    ]);
    assert!(restore_raw(&t, "utf8") == source);
}

/// A loop device over a file, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(file: &Path) -> Option<LoopDevice> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn block_devices_back_up_their_whole_size() {
    if !is_root() {
        eprintln!("skipping: loop devices need root");
        return;
    }
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "dev", 24, 24);
    let source = std::fs::read(&raw).unwrap();
    let Some(device) = LoopDevice::attach(&raw) else {
        return;
    };
    let dev = device.0.to_str().unwrap();
    let summary = t.json(&["backup", "image", dev, "--name", "loop"]);
    assert_eq!(summary["bytes_total"], source.len() as u64, "{summary}");
    assert!(restore_raw(&t, "loop") == source);

    // A descriptor whose FLAT extent is the device.
    let descriptor = t.path("ondevice.vmdk");
    std::fs::write(
        &descriptor,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW {} FLAT \"{dev}\" 0\nddb.adapterType = \"lsilogic\"\n",
            source.len() / 512
        ),
    )
    .unwrap();
    qemu_img(&["info", "-f", "vmdk", descriptor.to_str().unwrap()]);
    t.ok(&["backup", "image", descriptor.to_str().unwrap()]);
    assert!(restore_raw(&t, "ondevice") == source);
}

fn write_u32(path: &Path, at: u64, value: u32) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&value.to_le_bytes(), at).unwrap();
}

#[test]
fn inconsistent_sparse_headers_are_refused() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "h", 16, 25);
    let p = |name: &str| t.path(name).to_str().unwrap().to_string();

    // streamOptimized with the compressed flag cleared, deflate still named
    // (in the header and in the footer that overrides it).
    convert(&raw, "streamOptimized", &t.path("stream.vmdk"));
    let len = std::fs::metadata(t.path("stream.vmdk")).unwrap().len();
    for header in [0, len - 1024] {
        let mut flags = [0u8; 4];
        std::fs::File::open(t.path("stream.vmdk"))
            .unwrap()
            .read_exact_at(&mut flags, header + 8)
            .unwrap();
        write_u32(
            &t.path("stream.vmdk"),
            header + 8,
            u32::from_le_bytes(flags) & !(1 << 16),
        );
    }
    refused(
        &t,
        &["backup", "image", &p("stream.vmdk")],
        &["stream.vmdk", "deflate compression", "not compressed"],
    );

    // 520 grain-table entries per table: qemu says "L2 table size too big".
    convert(&raw, "monolithicSparse", &t.path("gtes.vmdk"));
    write_u32(&t.path("gtes.vmdk"), 44, 520);
    let qemu = qemu_img_refuses(&["info", "-f", "vmdk", &p("gtes.vmdk")]);
    assert!(qemu.contains("L2 table size too big"), "{qemu}");
    refused(
        &t,
        &["backup", "image", &p("gtes.vmdk")],
        &["gtes.vmdk", "520 grain table entries"],
    );

    // A version-0 header: the message says which versions are read.
    convert(&raw, "monolithicSparse", &t.path("v0.vmdk"));
    write_u32(&t.path("v0.vmdk"), 4, 0);
    let err = refused(
        &t,
        &["backup", "image", &p("v0.vmdk")],
        &["v0.vmdk", "version 0", "versions 1 to 3"],
    );
    assert!(!err.contains("only version"), "{err}");
    assert!(t.json(&["list"]).as_array().unwrap().is_empty());
}

fn descriptor(create_type: &str, extent: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n{extent}\n\nddb.adapterType = \"lsilogic\"\n"
    )
}

#[test]
fn unsupported_disks_and_broken_descriptors_get_one_message_naming_file_and_cause() {
    let t = TestRepo::new();
    let p = |name: &str| t.path(name).to_str().unwrap().to_string();
    std::fs::write(t.path("d-flat.vmdk"), vec![7u8; 1 << 20]).unwrap();
    let cases = [
        (
            "se.vmdk",
            "seSparse",
            "RW 2048 SESPARSE \"se-sesparse.vmdk\"",
            "snapshot delta",
        ),
        (
            "custom.vmdk",
            "custom",
            "RW 2048 FLAT \"d-flat.vmdk\" 0",
            "not a disk type Strata reads",
        ),
        (
            "full.vmdk",
            "fullDevice",
            "RW 2048 FLAT \"/dev/sda\" 0",
            "physical disk",
        ),
        (
            "sesx.vmdk",
            "monolithicFlat",
            "RW 2048 SESPARSE \"x.vmdk\"",
            "snapshot delta",
        ),
    ];
    for (file, create_type, extent, why) in cases {
        std::fs::write(t.path(file), descriptor(create_type, extent)).unwrap();
        let err = refused(&t, &["backup", "image", &p(file)], &[file, why]);
        assert!(!err.contains("damaged"), "{err}");
    }

    // A missing extent: the descriptor and the extent named, the OS error once.
    std::fs::write(
        t.path("missing.vmdk"),
        descriptor("monolithicFlat", "RW 2048 FLAT \"gone-flat.vmdk\" 0"),
    )
    .unwrap();
    let err = refused(
        &t,
        &["backup", "image", &p("missing.vmdk")],
        &["missing.vmdk", "gone-flat.vmdk"],
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // FLAT offsets near the top of u64: no overflowed sum in the message.
    for offset in ["36028797018963967", "18446744073709551615"] {
        std::fs::write(
            t.path("offset.vmdk"),
            descriptor(
                "monolithicFlat",
                &format!("RW 2048 FLAT \"d-flat.vmdk\" {offset}"),
            ),
        )
        .unwrap();
        refused(
            &t,
            &["backup", "image", &p("offset.vmdk")],
            &["offset.vmdk", &format!("offset of {offset} sectors")],
        );
    }
    assert!(t.json(&["list"]).as_array().unwrap().is_empty());
}
