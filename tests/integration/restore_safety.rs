//! What a restore leaves behind when it is refused or fails part way, and
//! reads that race with the writer moving chunks.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rand::SeedableRng;

use crate::util::*;


fn no_partial_files(dir: &Path) {
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".strata-partial-"),
            "left a partial file {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn a_refused_restore_creates_nothing() {
    if directory_only("a target inside a repository's directory") {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"data").unwrap();
    t.backup(&src, "s");

    // Inside the repository.
    let inside = t.repo.join("inside").join("deeper");
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("inside the repository"),
        "{}",
        stderr_of(&out)
    );
    assert!(
        !t.repo.join("inside").exists(),
        "the refused restore created its target"
    );

    // A path that is not in the restore point.
    let target = t.path("new-target");
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "/no/such/path",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!target.exists(), "the refused restore created its target");

    // A target below a file.
    let file = t.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        file.join("sub").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// A damaged chunk in the middle of a file: the file is reported and
/// missing, never left truncated under its name; an older copy already in
/// the target (an in-place restore) survives untouched.
#[test]
fn a_failed_file_never_replaces_the_good_copy() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(91);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(&mut rng, 3_000_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("bystander.txt"), b"fine\n").unwrap();
    t.backup(&src, "s");
    flip_stored_byte(&t, "s@latest", &src.join("victim.bin"), 1_501_000);

    // A fresh target: the damaged file is absent, the other one restored.
    let fresh = t.path("fresh");
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("victim.bin"),
        "{}",
        stderr_of(&out)
    );
    let restored = under(&fresh, &src);
    assert!(
        !restored.join("victim.bin").exists(),
        "a damaged file was left under its name"
    );
    assert_eq!(
        std::fs::read(restored.join("bystander.txt")).unwrap(),
        b"fine\n"
    );
    assert!(
        stdout_of(&out).contains("restored 1 files"),
        "the summary counts a failed file: {}",
        stdout_of(&out)
    );
    no_partial_files(&fresh);

    // In place: the existing copy keeps its content, mode and inode.
    let in_place = t.path("in-place");
    let existing = under(&in_place, &src);
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("victim.bin"), b"the good copy").unwrap();
    let before = std::fs::metadata(existing.join("victim.bin")).unwrap();
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        in_place.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        std::fs::read(existing.join("victim.bin")).unwrap(),
        b"the good copy"
    );
    let after = std::fs::metadata(existing.join("victim.bin")).unwrap();
    assert_eq!((before.ino(), before.mode()), (after.ino(), after.mode()));
    no_partial_files(&in_place);
}

/// An in-place restore of an intact restore point replaces files, symlinks
/// and FIFOs that are in the way, and leaves no temporary names.
#[test]
fn in_place_restore_replaces_entries_whole() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 17);
    t.backup(&src, "s");
    let target = t.path("target");
    t.restore("s@latest", &target);
    // Change what is there, then restore over it.
    let restored = under(&target, &src);
    std::fs::write(restored.join("small.txt"), b"changed").unwrap();
    std::fs::remove_file(restored.join("dir/text.log")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", restored.join("dir/text.log")).unwrap();
    t.restore("s@latest", &target);
    assert_same_tree(&src, &restored);
    no_partial_files(&target);
}

/// Replaced files are renamed in batches after a sync: enough files for
/// several batches all come back.
#[test]
fn in_place_restore_of_many_files_replaces_every_one() {
    let t = TestRepo::new();
    let src = t.path("src");
    for d in 0..3 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..300 {
            std::fs::write(src.join(format!("d{d}/f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    t.backup(&src, "s");
    let target = t.path("target");
    t.restore("s@latest", &target);
    let restored = under(&target, &src);
    for d in 0..3 {
        for f in 0..300 {
            std::fs::write(restored.join(format!("d{d}/f{f}")), b"changed").unwrap();
        }
    }
    let out = t.run(&[
        "restore",
        "files",
        "s@latest",
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("restored 900 files"),
        "{}",
        stdout_of(&out)
    );
    assert_same_tree(&src, &restored);
    no_partial_files(&target);
}

/// A reader that opened the repository before `prune` repacked its data
/// keeps reading it: it follows the chunks to their new pack.
#[test]
fn a_reader_follows_chunks_that_prune_moved() {
    let t = TestRepo::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(92);
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let kept = random_bytes(&mut rng, 2_000_000);
    std::fs::write(src.join("kept"), &kept).unwrap();
    std::fs::write(src.join("dropped"), random_bytes(&mut rng, 6_000_000)).unwrap();
    t.backup(&src, "s");
    std::fs::remove_file(src.join("dropped")).unwrap();
    t.backup(&src, "s");

    let reader = strata::repository::Repository::open_with(&t.repo, &t.open_options()).unwrap();
    let rp = reader.resolve("s@latest").unwrap();
    let node = reader
        .lookup_path(&rp, src.join("kept").to_str().unwrap())
        .unwrap()
        .unwrap();

    let packs_before = files_under(&t.objects().join("packs"));
    t.ok(&["forget", "--keep-last", "1"]);
    let report = t.json(&["prune", "--repack-below", "0.9"]);
    assert!(report["packs_repacked"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        packs_before.iter().any(|p| !p.exists()),
        "prune moved nothing; the test proves nothing"
    );

    // `check` beside the writer: the packs it knew are gone, the chunks
    // are elsewhere; nothing is missing.
    let report = strata::check::check(
        &reader,
        true,
        &strata::progress::NoProgress,
        &strata::cancel::CancelToken::new(),
    )
    .unwrap();
    assert!(
        report.is_clean(),
        "check of a stale reader reports {:?} {:?}",
        report.errors,
        report.damaged
    );

    let strata::tree::NodeKind::File { extents } = &node.kind else {
        panic!("not a file");
    };
    let mut data = Vec::new();
    for extent in extents {
        if let strata::tree::Extent::Data { id, .. } = extent {
            data.extend(reader.read_chunk(id).unwrap());
        }
    }
    assert!(data == kept, "read different bytes after the chunks moved");
}

#[test]
fn a_refused_vm_restore_creates_nothing() {
    if directory_only("a target inside a repository's directory") {
        return;
    }
    let t = TestRepo::new();
    let image = t.path("db.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(2 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"boot sector", 0).unwrap();
    t.ok(&["backup", "image", image.to_str().unwrap(), "--name", "db"]);
    let inside = t.repo.join("vms-inside");
    for args in [
        vec![
            "restore",
            "vm",
            "db@latest",
            "--to",
            inside.to_str().unwrap(),
        ],
        vec![
            "restore",
            "disk",
            "db@latest",
            "image",
            "--to",
            inside.to_str().unwrap(),
        ],
    ] {
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        assert!(!inside.exists(), "{args:?} created its refused target");
    }
}
