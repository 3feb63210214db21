//! Encryption at rest through the real binary: no name, path, content or
//! plain content hash anywhere under an encrypted repository, its cold
//! tier and its index; `show` and `stats` say whether a repository is
//! encrypted. Also the helpers the other encryption tests share: commands
//! with a given password (or none) and no terminal, and test repositories
//! encrypted whatever STRATA_TEST_ENCRYPTION says.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{RngCore, SeedableRng};

use crate::util::*;
use crate::vm::{convert, qemu_img};

/// The password `TestRepo::command` gives every command.
pub const PASSWORD: &str = TEST_PASSWORD;

/// Argon2id options that keep every test command fast.
pub const FAST_KDF: [&str; 4] = ["--kdf-memory-mib", "8", "--kdf-passes", "1"];

/// `strata ARGS…` on `repo` with `password` in STRATA_PASSWORD (None:
/// unset), stdin from /dev/null and no controlling terminal, so that a
/// prompt cannot be answered and must be refused.
pub fn strata(repo: &Path, password: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(strata_bin());
    cmd.args(args)
        .env("STRATA_REPO", repo)
        .env("RUST_LOG", "error")
        .env_remove("STRATA_PASSWORD")
        .env_remove("STRATA_NEW_PASSWORD")
        .stdin(Stdio::null());
    if let Some(password) = password {
        cmd.env("STRATA_PASSWORD", password);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; a new session has no controlling terminal, so /dev/tty
    // cannot be opened.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().expect("running strata")
}

/// Runs and asserts success; returns stdout.
pub fn ok_with(repo: &Path, password: Option<&str>, args: &[&str]) -> String {
    let out = output(strata(repo, password, args));
    assert!(
        out.status.success(),
        "strata {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout_of(&out),
        stderr_of(&out)
    );
    stdout_of(&out)
}

/// Runs, asserts a failure status, returns stdout and stderr together.
pub fn refused_with(repo: &Path, password: Option<&str>, args: &[&str]) -> String {
    let out = output(strata(repo, password, args));
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "strata {args:?} should have failed: {:?}\n{text}",
        out.status
    );
    text
}

/// An encrypted repository in a temp dir whose password is `PASSWORD`,
/// whatever STRATA_TEST_ENCRYPTION says.
pub fn encrypted_repo() -> TestRepo {
    let mut args = vec!["init", "--encryption", "aes-256-gcm"];
    args.extend_from_slice(&FAST_KDF);
    init_repo(&args, false)
}

pub fn unencrypted_repo() -> TestRepo {
    init_repo(&["init", "--encryption", "none"], false)
}

/// `strata INIT…` for a repository `repo` in a temp dir, with a cold tier
/// `cold` beside it if asked for.
fn init_repo(init: &[&str], cold: bool) -> TestRepo {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cold_dir = dir.path().join("cold");
    let mut args = init.to_vec();
    if cold {
        args.extend(["--cold", cold_dir.to_str().unwrap()]);
    }
    let encrypted = !init.contains(&"none");
    ok_with(&repo, encrypted.then_some(PASSWORD), &args);
    TestRepo {
        dir,
        repo,
        env: Vec::new(),
        server: None,
    }
}

pub fn write_password(path: &Path, password: &str) -> PathBuf {
    std::fs::write(path, format!("{password}\n")).unwrap();
    path.to_path_buf()
}

pub fn config(t: &TestRepo) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(t.repo.join("config.json")).unwrap()).unwrap()
}

// ---------------------------------------------------------------------
// Markers

/// What must not be readable in an encrypted repository: strings, and
/// plain BLAKE3 hashes of chunks, each with what it stands for.
#[derive(Default)]
struct Secrets {
    markers: Vec<(&'static str, String)>,
    hashes: Vec<(String, [u8; 32])>,
}

impl Secrets {
    fn marker(&mut self, what: &'static str) -> String {
        let marker = format!("qzx{}Mk{:04}zq", what.replace(' ', ""), self.markers.len());
        self.markers.push((what, marker.clone()));
        marker
    }

    fn get(&self, what: &str) -> &str {
        &self.markers.iter().find(|(w, _)| *w == what).unwrap().1
    }

    /// A file below 128 KiB is one chunk: its BLAKE3 is the chunk's plain id.
    fn file(&mut self, path: &Path, content: &[u8]) {
        assert!(content.len() < 128 << 10);
        std::fs::write(path, content).unwrap();
        self.hashes.push((
            path.display().to_string(),
            *blake3::hash(content).as_bytes(),
        ));
    }

    /// Every needle: markers, raw hashes, lowercase hex hashes.
    fn needles(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .markers
            .iter()
            .map(|(what, m)| (format!("marker {what} {m}"), m.as_bytes().to_vec()))
            .collect();
        for (file, hash) in &self.hashes {
            out.push((format!("raw BLAKE3 of {file}"), hash.to_vec()));
            let hex = blake3::Hash::from(*hash).to_hex().to_string();
            out.push((format!("hex BLAKE3 of {file}"), hex.into_bytes()));
        }
        out
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let (first, rest) = needle.split_first().unwrap();
    haystack
        .iter()
        .enumerate()
        .any(|(i, b)| b == first && haystack[i + 1..].starts_with(rest))
}

/// "needle in file" for every needle found in any file below the
/// repository or its cold tier.
fn found_in(t: &TestRepo, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let files = [files_under(&t.repo), files_under(&t.path("cold"))].concat();
    assert!(files.len() > 5, "too few files to search: {files:?}");
    let mut found = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for (what, needle) in needles {
            if contains(&bytes, needle) {
                found.push(format!("{what} in {}", file.display()));
            }
        }
    }
    found
}

/// A tree with markers in contents, names, a symlink target and an
/// xattr (where the file system takes user xattrs); returns its root.
fn marker_tree(t: &TestRepo, s: &mut Secrets) -> PathBuf {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1201);
    let root = t.path(&format!("root-{}", s.marker("root dir name")));
    let dir = root.join(format!("dir-{}", s.marker("dir name")));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "first line\nthe {} in the middle\nlast\n",
        s.marker("text content")
    );
    let named = dir.join(format!("file-{}.txt", s.marker("file name")));
    s.file(&named, text.as_bytes());
    // Incompressible, so an unencrypted repository stores it raw and the
    // marker is found there byte for byte.
    let mut raw = random_bytes(&mut rng, 100_000);
    let marker = s.marker("raw content");
    raw[50_000..50_000 + marker.len()].copy_from_slice(marker.as_bytes());
    s.file(&root.join("random.bin"), &raw);
    for i in 0..3 {
        s.file(
            &root.join(format!("small{i}.txt")),
            &text_bytes(&mut rng, 3000 + i * 1000),
        );
    }
    std::os::unix::fs::symlink(
        format!("/target-{}", s.marker("symlink target")),
        root.join("link"),
    )
    .unwrap();
    let name = format!("user.{}", s.marker("xattr name"));
    let value = s.marker("xattr value");
    if let Err(e) = xattr::set(&named, &name, value.as_bytes()) {
        eprintln!("no xattr markers: the file system refuses user xattrs: {e}");
        s.markers.retain(|(w, _)| !w.starts_with("xattr"));
    }
    root
}

/// A VM folder with markers in its .vmx (name, annotation), its disk's
/// file name and its disk's content; returns the folder.
fn marker_vm(t: &TestRepo, s: &mut Secrets) -> PathBuf {
    let folder = t.path(&format!("vm-{}", s.marker("vm folder name")));
    std::fs::create_dir_all(&folder).unwrap();
    let raw_path = t.path("disk.raw");
    let mut raw = vec![0u8; 4 << 20];
    let marker = s.marker("disk content");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1202);
    rng.fill_bytes(&mut raw[(1 << 20)..(1 << 20) + 4096]);
    raw[(1 << 20) + 5000..][..marker.len()].copy_from_slice(marker.as_bytes());
    // The disk is cut into 1 MiB chunks at 1 MiB offsets.
    s.hashes.push((
        "the VM disk's second MiB".into(),
        *blake3::hash(&raw[1 << 20..2 << 20]).as_bytes(),
    ));
    std::fs::write(&raw_path, &raw).unwrap();
    let disk = format!("{}.vmdk", s.marker("disk file name"));
    convert(&raw_path, "monolithicSparse", &folder.join(&disk));
    assert!(qemu_img(&["info", folder.join(&disk).to_str().unwrap()]).contains("vmdk"));
    std::fs::write(
        folder.join("machine.vmx"),
        format!(
            "displayName = \"{}\"\nannotation = \"{}\"\nnumvcpus = \"1\"\nmemsize = \"512\"\n\
             guestOS = \"ubuntu-64\"\nscsi0:0.fileName = \"{disk}\"\n",
            s.marker("vm display name"),
            s.marker("vm annotation"),
        ),
    )
    .unwrap();
    folder
}

/// Backs up the marker tree and VM into `t`; returns what must stay secret.
fn back_up_secrets(t: &TestRepo) -> Secrets {
    let mut s = Secrets::default();
    let root = marker_tree(t, &mut s);
    let vm = marker_vm(t, &mut s);
    let source = s.marker("source name");
    let tag = s.marker("tag");
    t.ok(&[
        "backup",
        "files",
        root.to_str().unwrap(),
        "--source",
        &source,
        "--tag",
        &tag,
    ]);
    t.ok(&["backup", "vm", vm.to_str().unwrap()]);
    // A second backup and a check add the file cache's and the index's
    // later states; a restore reads everything back.
    t.backup(&root, &source);
    t.ok(&["check", "--read-data"]);
    let target = t.path("restored");
    t.restore(&format!("{source}@latest"), &target);
    assert_same_tree(&root, &under(&target, &root));
    cold_secrets(t, &mut s);
    // An index rebuilt from the objects alone holds no more than before.
    std::fs::remove_dir_all(t.repo.join("index")).unwrap();
    t.ok(&["repair", "index"]);
    t.restore(&format!("{source}@latest"), &t.path("after-repair"));
    s
}

/// An old restore point moved to the cold tier and thawed back: cold
/// packs, thawed copies and thaw records hold secrets too.
fn cold_secrets(t: &TestRepo, s: &mut Secrets) {
    let dir = t.path(&format!("old-{}", s.marker("cold dir name")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1209);
    let mut raw = random_bytes(&mut rng, 60_000);
    let marker = s.marker("cold content");
    raw[30_000..][..marker.len()].copy_from_slice(marker.as_bytes());
    s.file(&dir.join("cold.bin"), &raw);
    let id = t.backup_at(&dir, "old", &time_days_ago(400));
    let report = t.json(&["tier", "run"]);
    assert_eq!(report["restore_points_cold"], 1, "{report}");
    assert!(!files_under(&t.path("cold")).is_empty());
    t.ok(&["thaw", &id]);
    let target = t.path("thawed");
    t.restore(&id, &target);
    assert_same_tree(&dir, &under(&target, &dir));
}

#[test]
fn no_marker_name_content_or_plain_hash_is_found_in_an_encrypted_repository() {
    let mut init = vec!["init"];
    init.extend_from_slice(&FAST_KDF);
    let t = init_repo(&init, true);
    let s = back_up_secrets(&t);
    let found = found_in(&t, &s.needles());
    assert!(
        found.is_empty(),
        "readable in the encrypted repository:\n{}",
        found.join("\n")
    );
    // The VM was backed up under its marked name, from its .vmx.
    let vm_name = s.get("vm display name");
    let shown = t.json(&["show", &format!("{vm_name}@latest")]);
    assert_eq!(shown["vm"]["name"], vm_name, "{shown}");
    assert_eq!(shown["repository"]["encryption"], "aes-256-gcm", "{shown}");
}

/// The search above finds what an unencrypted repository holds: contents
/// stored raw and the plain ids of chunks.
#[test]
fn the_marker_search_finds_markers_and_hashes_in_an_unencrypted_repository() {
    let t = init_repo(&["init", "--encryption", "none"], true);
    let s = back_up_secrets(&t);
    let found = found_in(&t, &s.needles());
    for (what, dir) in [("raw content", "packs"), ("cold content", "cold")] {
        let marker = s.get(what);
        assert!(
            found
                .iter()
                .any(|f| f.contains(marker) && f.contains(&format!("/{dir}/"))),
            "{marker} not found in {dir}: {found:?}"
        );
    }
    for (file, _) in &s.hashes {
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&format!("raw BLAKE3 of {file} in "))),
            "the plain id of {file} not found: {found:?}"
        );
    }
}

/// `s@latest` restores with `password`, identical to `src`.
pub fn restores_whole(t: &TestRepo, password: Option<&str>, src: &Path) {
    let target = tempfile::tempdir_in(t.dir.path()).unwrap();
    let to = target.path().to_str().unwrap();
    ok_with(
        &t.repo,
        password,
        &["restore", "files", "s@latest", "--to", to],
    );
    assert_same_tree(src, &under(target.path(), src));
}

pub fn small_source(t: &TestRepo, name: &str, seed: u64) -> PathBuf {
    let src = t.path(name);
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    std::fs::write(src.join("a.txt"), text_bytes(&mut rng, 20_000)).unwrap();
    std::fs::write(src.join("sub/b.bin"), random_bytes(&mut rng, 300_000)).unwrap();
    src
}

/// An encrypted repository with `small_source` backed up as `s`.
pub fn backed_up(seed: u64) -> (TestRepo, PathBuf) {
    let t = encrypted_repo();
    let src = small_source(&t, "src", seed);
    t.backup(&src, "s");
    (t, src)
}

// ---------------------------------------------------------------------
// show and stats

/// The `repository` line of a text output.
fn repository_line(text: &str) -> String {
    text.lines()
        .find(|l| l.trim_start().starts_with("repository"))
        .unwrap_or_else(|| panic!("no repository line in:\n{text}"))
        .to_string()
}

#[test]
fn show_and_stats_say_whether_a_repository_is_encrypted() {
    for (t, encrypted) in [(encrypted_repo(), true), (unencrypted_repo(), false)] {
        let src = small_source(&t, "src", 1208);
        t.backup(&src, "s");
        let (cipher, version) = if encrypted {
            ("aes-256-gcm", 2)
        } else {
            ("none", 1)
        };
        let cfg = config(&t);
        assert_eq!(cfg["format_version"], version, "{cfg}");
        if encrypted {
            assert_eq!(cfg["encryption"]["cipher"], "aes-256-gcm", "{cfg}");
            assert_eq!(cfg["encryption"]["kdf"], "argon2id", "{cfg}");
        }

        let stats = t.json(&["stats"]);
        assert_eq!(stats["encryption"], cipher, "{stats}");
        assert_eq!(stats["format_version"], version, "{stats}");
        let shown = t.json(&["show", "s@latest"]);
        assert_eq!(shown["repository"]["encryption"], cipher, "{shown}");
        assert_eq!(shown["repository"]["format_version"], version, "{shown}");

        for text in [t.ok(&["stats"]), t.ok(&["show", "s@latest"])] {
            let line = repository_line(&text);
            if encrypted {
                assert!(
                    line.contains("encrypted (aes-256-gcm") && !line.contains("unencrypted"),
                    "{line}"
                );
            } else {
                assert!(line.contains("unencrypted"), "{line}");
            }
        }
    }
}
