//! Tampering with an encrypted repository: a flipped byte in a data chunk,
//! a tree, a manifest or a key slot, two packs under each other's names,
//! an old manifest replayed under another name. Each is detected and
//! named; nothing restores or reads wrong bytes (EIO in the mount).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use rand::SeedableRng;

use crate::encryption::{encrypted_repo, ok_with, refused_with, strata, PASSWORD};
use crate::mount::{fuse_available, is_mounted, MountGuard};
use crate::util::*;

fn pack_files(t: &TestRepo) -> BTreeSet<PathBuf> {
    files_under(&t.repo.join("packs")).into_iter().collect()
}

/// Backs up `dir` as `source`; returns the packs the backup wrote.
fn backup_new_packs(t: &TestRepo, dir: &Path, source: &str) -> Vec<PathBuf> {
    let before = pack_files(t);
    t.backup(dir, source);
    pack_files(t).difference(&before).cloned().collect()
}

fn largest(packs: &[PathBuf]) -> PathBuf {
    packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .cloned()
        .expect("the backup wrote a pack")
}

/// Flips one bit of the byte at `len * num / den` in `path`; a pack that
/// is mostly one chunk is thus hit inside that chunk, far from its
/// header and trailer, whatever their sizes.
fn flip_at_fraction(path: &Path, num: usize, den: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() * num / den;
    bytes[at] ^= 0x04;
    std::fs::write(path, &bytes).unwrap();
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout_of(out), stderr_of(out))
}

/// Runs `args`, asserts it fails without a panic; returns what it printed.
fn fails(t: &TestRepo, args: &[&str]) -> String {
    let out = t.run(args);
    let printed = text(&out);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "strata {args:?} should have failed: {:?}\n{printed}",
        out.status
    );
    assert!(!printed.contains("panicked"), "{args:?}: {printed}");
    printed
}

/// A whole restore of `selector` fails, and every file it did write has
/// the source's bytes.
fn restore_fails_never_wrong(t: &TestRepo, selector: &str, src: &Path, name: &str) -> String {
    let target = t.path(name);
    let printed = fails(
        t,
        &[
            "restore",
            "files",
            selector,
            "--to",
            target.to_str().unwrap(),
        ],
    );
    let restored = under(&target, src);
    if restored.is_dir() {
        for file in files_under(&restored) {
            let original = src.join(file.strip_prefix(&restored).unwrap());
            assert!(
                std::fs::read(&file).unwrap() == std::fs::read(&original).unwrap(),
                "{} restored with wrong bytes",
                file.display()
            );
        }
    }
    printed
}

/// Small files first, then a large incompressible one in a second backup:
/// that backup's only data pack holds only the large file's chunks.
fn bystanders_then_victim(t: &TestRepo, seed: u64) -> (PathBuf, PathBuf) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("bystander{i}.txt")),
            text_bytes(&mut rng, 10_000 + i * 5_000),
        )
        .unwrap();
    }
    t.backup(&src, "s");
    let victim = src.join("victim.bin");
    std::fs::write(&victim, random_bytes(&mut rng, 400_000)).unwrap();
    let packs = backup_new_packs(t, &src, "s");
    (src, largest(&packs))
}

#[test]
fn a_flipped_byte_in_a_data_chunk_fails_authentication() {
    let t = encrypted_repo();
    let (src, pack) = bystanders_then_victim(&t, 1220);
    flip_at_fraction(&pack, 1, 2);

    let report = check_blames(&t, &["--read-data"], "victim.bin");
    assert!(!report.contains("bystander"), "{report}");

    let printed = restore_fails_never_wrong(&t, "s@latest", &src, "restored");
    assert!(printed.contains("authentication failed"), "{printed}");
    assert!(printed.contains("victim.bin"), "{printed}");
    // The other files restore.
    let target = t.path("bystander");
    t.ok(&[
        "restore",
        "files",
        "s@latest",
        src.join("bystander1.txt").to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(under(&target, &src).join("bystander1.txt")).unwrap(),
        std::fs::read(src.join("bystander1.txt")).unwrap()
    );
}

/// A tree with many empty files and directories: the backup writes
/// metadata only, most of it one large tree chunk.
fn trees_only(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    let big = src.join("big-directory");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..3000u32 {
        let name = blake3::hash(&i.to_le_bytes()).to_hex();
        std::fs::write(big.join(&name.as_str()[..40]), b"").unwrap();
    }
    for i in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{i}/e{i}"))).unwrap();
    }
    src
}

#[test]
fn a_flipped_byte_in_a_tree_fails_authentication() {
    let t = encrypted_repo();
    let src = trees_only(&t);
    let packs = backup_new_packs(&t, &src, "s");
    assert!(!packs.is_empty());
    let pack = largest(&packs);
    flip_at_fraction(&pack, 1, 2);

    check_blames(&t, &["--read-data"], "big-directory");

    let printed = fails(&t, &["ls", "s@latest", "-R"]);
    assert!(printed.contains("authentication failed"), "{printed}");
    let printed = restore_fails_never_wrong(&t, "s@latest", &src, "restored");
    assert!(printed.contains("authentication failed"), "{printed}");
}

/// An encrypted repository and a folder `src` holding one file `f`.
fn one_file_source(content: &[u8]) -> (TestRepo, PathBuf) {
    let t = encrypted_repo();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), content).unwrap();
    (t, src)
}

/// `strata check ARGS…` finds damage (status 4) and blames `object` with
/// an authentication failure.
fn check_blames(t: &TestRepo, args: &[&str], object: &str) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = t.run(&all);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(4), "{all:?}: {report}");
    assert!(
        report.contains(object) && report.contains("authentication failed"),
        "{all:?} does not blame {object}: {report}"
    );
    report
}

fn manifest_of(t: &TestRepo, source: &str) -> String {
    t.json(&["show", &format!("{source}@latest")])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_flipped_byte_in_a_manifest_fails_authentication() {
    let (t, src) = one_file_source(b"some content");
    t.backup(&src, "one");
    t.backup(&src, "two");
    let id = manifest_of(&t, "one");
    let path = t.repo.join("manifests").join(&id);
    assert!(path.is_file(), "{}", path.display());
    flip_at_fraction(&path, 1, 2);

    for args in [&[][..], &["--read-data"][..]] {
        check_blames(&t, args, &format!("manifests/{id}"));
    }
    // repair sets it aside; the other restore point stays whole.
    let out = t.run(&["repair", "index"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(report.contains(&format!("manifests/{id}")), "{report}");
    let listed = t.json(&["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["source"], "two", "{listed}");
    let target = t.path("restored");
    t.restore("two@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
}

#[test]
fn an_old_manifest_under_another_name_is_detected() {
    let (t, src) = one_file_source(b"version one");
    t.backup(&src, "s");
    let old = manifest_of(&t, "s");
    std::fs::write(src.join("f"), b"version two").unwrap();
    t.backup(&src, "s");
    let new = manifest_of(&t, "s");
    assert_ne!(old, new);
    let manifests = t.repo.join("manifests");
    let old_bytes = std::fs::read(manifests.join(&old)).unwrap();

    // Replayed under a name of its own: never listed as a restore point.
    let fake = blake3::hash(b"a name the key never made")
        .to_hex()
        .to_string();
    std::fs::write(manifests.join(&fake), &old_bytes).unwrap();
    let out = t.run(&["list", "--json"]);
    let printed = text(&out);
    if out.status.success() {
        assert!(!printed.contains(&fake), "{printed}");
    } else {
        assert!(
            printed.contains(&fake) && printed.contains("authentication failed"),
            "{printed}"
        );
    }
    check_blames(&t, &[], &format!("manifests/{fake}"));
    std::fs::remove_file(manifests.join(&fake)).unwrap();
    t.ok(&["check"]);

    // Rolled back in place: the newer name holding the older manifest.
    std::fs::write(manifests.join(&new), &old_bytes).unwrap();
    check_blames(&t, &[], &format!("manifests/{new}"));
}

#[test]
fn two_packs_under_each_others_names_never_give_wrong_bytes() {
    let t = encrypted_repo();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1221);
    let (a, b) = (t.path("a"), t.path("b"));
    for dir in [&a, &b] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("data.bin"), random_bytes(&mut rng, 300_000)).unwrap();
    }
    let pack_a = largest(&backup_new_packs(&t, &a, "a"));
    let pack_b = largest(&backup_new_packs(&t, &b, "b"));
    let (bytes_a, bytes_b) = (
        std::fs::read(&pack_a).unwrap(),
        std::fs::read(&pack_b).unwrap(),
    );
    std::fs::write(&pack_a, &bytes_b).unwrap();
    std::fs::write(&pack_b, &bytes_a).unwrap();

    let out = t.run(&["check", "--read-data"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(4), "{report}");
    for (selector, src, name) in [("a@latest", &a, "ra"), ("b@latest", &b, "rb")] {
        let printed = restore_fails_never_wrong(&t, selector, src, name);
        assert!(printed.contains("data.bin"), "{printed}");
    }
}

fn key_slots(t: &TestRepo) -> Vec<PathBuf> {
    files_under(&t.repo.join("keys"))
}

fn assert_damaged_slot(printed: &str) {
    assert!(
        printed.contains("key slot") && printed.contains("damaged"),
        "{printed}"
    );
}

#[test]
fn a_flipped_byte_in_a_key_slot_is_named() {
    let (t, src) = one_file_source(b"content");
    t.backup(&src, "s");
    let slots = key_slots(&t);
    assert_eq!(slots.len(), 1, "{slots:?}");
    let original = std::fs::read(&slots[0]).unwrap();
    flip_at_fraction(&slots[0], 1, 2);
    let printed = fails(&t, &["list"]);
    assert_damaged_slot(&printed);
    let slot_name = slots[0].file_name().unwrap().to_str().unwrap();
    assert!(printed.contains(slot_name), "{printed}");

    // With a second slot, its password still opens the repository.
    std::fs::write(&slots[0], &original).unwrap();
    let new = t.path("second");
    std::fs::write(&new, "second password\n").unwrap();
    t.ok(&[
        "key",
        "add",
        "--new-password-file",
        new.to_str().unwrap(),
        "--kdf-memory-mib",
        "8",
        "--kdf-passes",
        "1",
    ]);
    flip_at_fraction(&slots[0], 1, 2);
    let listed = ok_with(&t.repo, Some("second password"), &["list", "--json"]);
    assert!(listed.contains("\"s\""), "{listed}");
    // check names the damaged slot; its own password is refused, naming
    // the damage.
    let out = strata(&t.repo, Some("second password"), &["check"])
        .output()
        .unwrap();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(4), "{report}");
    assert_damaged_slot(&report);
    assert!(report.contains(slot_name), "{report}");
    let printed = refused_with(&t.repo, Some(PASSWORD), &["list"]);
    assert_damaged_slot(&printed);
}

/// An encrypted repository for a mount test, or None (the test is
/// skipped) where kernel FUSE mounts cannot be made.
fn encrypted_fuse_repo() -> Option<TestRepo> {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return None;
    }
    Some(encrypted_repo())
}

#[test]
fn a_damaged_chunk_reads_as_eio_in_the_mount() {
    let Some(t) = encrypted_fuse_repo() else {
        return;
    };
    let (src, pack) = bystanders_then_victim(&t, 1222);
    flip_at_fraction(&pack, 1, 2);

    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let mounted = under(&mnt.join("files/s/latest"), &src);
    let err = std::fs::read(mounted.join("victim.bin")).expect_err("read damaged data");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for i in 0..4 {
        let name = format!("bystander{i}.txt");
        assert!(
            std::fs::read(mounted.join(&name)).unwrap() == std::fs::read(src.join(&name)).unwrap(),
            "{name} read wrong through the mount"
        );
    }
    // The size is still known; reading again gives EIO again.
    assert_eq!(
        std::fs::metadata(mounted.join("victim.bin")).unwrap().len(),
        400_000
    );
    let err = std::fs::read(mounted.join("victim.bin")).expect_err("read damaged data again");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn a_damaged_tree_reads_as_eio_in_the_mount() {
    let Some(t) = encrypted_fuse_repo() else {
        return;
    };
    let src = trees_only(&t);
    let pack = largest(&backup_new_packs(&t, &src, "s"));
    flip_at_fraction(&pack, 1, 2);

    let mnt = t.path("mnt");
    let _guard = MountGuard::mount(&t, &mnt);
    let mounted = under(&mnt.join("files/s/latest"), &src);
    let err = std::fs::read_dir(mounted.join("big-directory"))
        .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        .expect_err("listed a damaged directory");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let names: Vec<_> = std::fs::read_dir(mounted.join("d7"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["e7"]);
}

/// A `strata mount` that should refuse to start; killed and unmounted
/// when dropped if it started anyway.
struct RefusedMount {
    child: Option<Child>,
    path: PathBuf,
}

impl Drop for RefusedMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.path) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

/// Runs `strata mount` with `password` and no terminal; asserts it exits
/// by itself, failing, without mounting; returns what it printed.
fn mount_refused(t: &TestRepo, password: Option<&str>) -> String {
    let path = t.path("mnt");
    std::fs::create_dir_all(&path).unwrap();
    let mut cmd = strata(&t.repo, password, &["mount", path.to_str().unwrap()]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut guard = RefusedMount {
        child: Some(cmd.spawn().unwrap()),
        path: path.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while guard.child.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(!is_mounted(&path), "mounted with password {password:?}");
        assert!(
            Instant::now() < deadline,
            "mount neither failed nor mounted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = guard.child.take().unwrap().wait_with_output().unwrap();
    assert!(
        !out.status.success() && !is_mounted(&path),
        "{}",
        text(&out)
    );
    text(&out)
}

#[test]
fn the_mount_refuses_a_wrong_or_missing_password() {
    let Some(t) = encrypted_fuse_repo() else {
        return;
    };
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    t.backup(&src, "s");
    let printed = mount_refused(&t, Some("not the password"));
    assert!(printed.contains("wrong password"), "{printed}");
    let printed = mount_refused(&t, None);
    assert!(printed.contains("STRATA_PASSWORD"), "{printed}");
}

/// A VM whose .vmx is large and whose disk holds only zeros: its backup
/// writes metadata only, most of it the stored .vmx.
fn vm_with_a_large_vmx(t: &TestRepo) -> PathBuf {
    let folder = t.path("vm01");
    std::fs::create_dir_all(&folder).unwrap();
    crate::vm::qemu_img(&[
        "create",
        "-f",
        "vmdk",
        folder.join("vm01.vmdk").to_str().unwrap(),
        "4M",
    ]);
    let mut vmx = String::from("displayName = \"vm01\"\nscsi0:0.fileName = \"vm01.vmdk\"\n");
    for i in 0..2000u32 {
        let value = blake3::hash(&i.to_le_bytes()).to_hex();
        vmx += &format!("guestinfo.key{i} = \"{value}\"\n");
    }
    std::fs::write(folder.join("vm01.vmx"), vmx).unwrap();
    folder
}

#[test]
fn a_flipped_byte_in_a_vm_description_fails_authentication() {
    let t = encrypted_repo();
    let folder = vm_with_a_large_vmx(&t);
    let before = pack_files(&t);
    t.ok(&["backup", "vm", folder.to_str().unwrap()]);
    let packs: Vec<_> = pack_files(&t).difference(&before).cloned().collect();
    flip_at_fraction(&largest(&packs), 1, 2);

    check_blames(&t, &["--read-data"], "vm01");
    let printed = fails(&t, &["show", "vm01@latest"]);
    assert!(printed.contains("authentication failed"), "{printed}");
    let target = t.path("restored");
    let printed = fails(
        &t,
        &[
            "restore",
            "vm",
            "vm01@latest",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    assert!(printed.contains("authentication failed"), "{printed}");
    assert!(!target.join("vm01.vmx").exists());
}
