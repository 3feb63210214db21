//! Shared test helpers: a repository in a temp dir, running the binary,
//! generating trees with every kind of entry, comparing trees.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, RngCore, SeedableRng};

pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// The password of every test repository.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Whether test repositories are encrypted: yes, unless
/// `STRATA_TEST_ENCRYPTION=none` (`tools/test` runs the suite both ways).
pub fn encrypted() -> bool {
    std::env::var("STRATA_TEST_ENCRYPTION").as_deref() != Ok("none")
}

/// `init` and the options that make a test repository: encrypted with a
/// cheap key derivation (every command derives the key once), or not.
pub fn init_args() -> Vec<&'static str> {
    if encrypted() {
        vec!["init", "--kdf-memory-mib", "8", "--kdf-passes", "1"]
    } else {
        vec!["init", "--encryption", "none"]
    }
}

/// The binary, with the test password in its environment.
pub fn strata_command() -> Command {
    let mut cmd = Command::new(strata_bin());
    cmd.env("STRATA_PASSWORD", TEST_PASSWORD);
    cmd
}

/// Options opening a test repository in-process.
pub fn open_options() -> strata::repository::OpenOptions {
    strata::repository::OpenOptions::with_password(TEST_PASSWORD)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    /// A directory, or a bucket URL.
    pub repo: PathBuf,
    /// More environment for every command (a bucket's endpoint and
    /// credentials, the state directory).
    pub env: Vec<(String, String)>,
    /// The server holding a repository in a bucket.
    pub server: Option<crate::object_storage::S3Server>,
}

/// Whether test repositories are made in buckets of an S3-compatible
/// server (`STRATA_TEST_BACKEND=s3`; `tools/test` runs the backup, restore,
/// mount, tiering, retention, repair and fault tests so too) instead of
/// directories.
pub fn bucket_backend() -> bool {
    std::env::var("STRATA_TEST_BACKEND").as_deref() == Ok("s3")
}

/// True (after saying so) when a test is about repositories in local
/// directories only and the suite runs on buckets.
pub fn directory_only(what: &str) -> bool {
    if bucket_backend() {
        eprintln!("skipped on buckets: {what}");
    }
    bucket_backend()
}

/// The bucket of test repositories and the one of their cold tiers.
const TEST_BUCKET: &str = "strata-test";
const COLD_BUCKET: &str = "strata-cold";

impl TestRepo {
    pub fn new() -> Self {
        Self::create(false)
    }

    /// A repository with a cold tier beside it (a directory, or a bucket).
    pub fn with_cold() -> Self {
        Self::create(true)
    }

    fn create(cold: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let t = if bucket_backend() {
            let server = crate::object_storage::S3Server::start(TEST_BUCKET)
                .expect("STRATA_TEST_BACKEND=s3 needs s3s-fs (tools/setup installs it)");
            server.add_bucket(COLD_BUCKET);
            let mut env = server.client_env();
            let state = dir.path().join("state");
            env.push(("STRATA_STATE".into(), state.to_str().unwrap().into()));
            TestRepo {
                dir,
                repo: PathBuf::from(format!("s3://{TEST_BUCKET}/repo")),
                env,
                server: Some(server),
            }
        } else {
            Self::uninitialized_in(dir)
        };
        let mut init = init_args();
        let cold_location = t.cold_location();
        if cold {
            init.extend(["--cold", cold_location.as_str()]);
        }
        t.ok(&init);
        t
    }

    /// A repository made at `url` (a bucket), reached through `env` (a
    /// server's endpoint and credentials), its state in the test's
    /// temporary directory; `init` also gets `init_extra`.
    pub fn in_bucket(env: Vec<(String, String)>, url: &str, init_extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env;
        env.push((
            "STRATA_STATE".into(),
            dir.path().join("state").display().to_string(),
        ));
        let t = TestRepo {
            dir,
            repo: PathBuf::from(url),
            env,
            server: None,
        };
        let mut args = init_args();
        args.extend_from_slice(init_extra);
        t.ok(&args);
        t
    }

    /// A repository directory that `init` has not made yet.
    pub fn uninitialized() -> Self {
        Self::uninitialized_in(tempfile::tempdir().unwrap())
    }

    fn uninitialized_in(dir: tempfile::TempDir) -> Self {
        let repo = dir.path().join("repo");
        TestRepo {
            dir,
            repo,
            env: Vec::new(),
            server: None,
        }
    }

    /// Where the cold tier of [`TestRepo::with_cold`] is, as `--cold` takes it.
    pub fn cold_location(&self) -> String {
        match self.server {
            Some(_) => format!("s3://{COLD_BUCKET}/repo"),
            None => self.path("cold").to_str().unwrap().to_string(),
        }
    }

    /// The directory holding the repository's objects as files: the
    /// repository itself, or where the S3 server keeps its bucket.
    pub fn objects(&self) -> PathBuf {
        match &self.server {
            Some(server) => server.objects_dir(TEST_BUCKET, "repo"),
            None => self.repo.clone(),
        }
    }

    /// The directory holding the cold tier's objects as files.
    pub fn cold_objects(&self) -> PathBuf {
        match &self.server {
            Some(server) => server.objects_dir(COLD_BUCKET, "repo"),
            None => self.path("cold"),
        }
    }

    /// Options opening this repository in-process: its password, and a
    /// bucket's server and state directory.
    pub fn open_options(&self) -> strata::repository::OpenOptions {
        strata::repository::OpenOptions {
            state_dir: self.server.as_ref().map(|_| self.state()),
            access: self.server.as_ref().map(|server| server.access()),
            ..open_options()
        }
    }

    /// Whether an interrupted writer left staged objects behind.
    pub fn staging_leftovers(&self) -> Vec<PathBuf> {
        let staging = match self.server {
            Some(_) => self.state().join("uploads-warm"),
            None => self.repo.join("tmp"),
        };
        if staging.exists() {
            files_under(&staging)
        } else {
            Vec::new()
        }
    }

    /// This machine's state of the repository (index, lock): the
    /// repository's directory, or the state directory of a bucket.
    pub fn state(&self) -> PathBuf {
        match self.env.iter().find(|(name, _)| name == "STRATA_STATE") {
            Some((_, dir)) => PathBuf::from(dir),
            None => self.repo.clone(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = strata_command();
        cmd.args(args)
            .env("STRATA_REPO", &self.repo)
            .env("RUST_LOG", "error")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running strata")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Backs up `path` as `source`; returns the JSON summary.
    pub fn backup(&self, path: &Path, source: &str) -> serde_json::Value {
        self.json(&[
            "backup",
            "files",
            path.to_str().unwrap(),
            "--source",
            source,
        ])
    }

    /// Backs up `path` as `source` at `time` (as `--time` takes it);
    /// returns the restore point's id.
    pub fn backup_at(&self, path: &Path, source: &str, time: &str) -> String {
        let summary = self.json(&[
            "backup",
            "files",
            path.to_str().unwrap(),
            "--source",
            source,
            "--time",
            time,
        ]);
        summary["restore_point"].as_str().unwrap().to_string()
    }

    pub fn restore(&self, rp: &str, to: &Path) {
        self.ok(&["restore", "files", rp, "--to", to.to_str().unwrap()]);
    }
}

/// Starts `strata ARGS` on `t` with one retry per bucket request (a dead
/// server fails the run in seconds, not after a minute of retries), its
/// error output captured.
pub fn spawn_with_one_retry(t: &TestRepo, args: &[&str]) -> std::process::Child {
    t.command(args)
        .env("STRATA_BUCKET_RETRIES", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An RFC 3339 time `days` days before now, for `--time`.
pub fn time_days_ago(days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::days(days);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// `path` re-rooted under `target`, as restore lays it out.
pub fn under(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").unwrap())
}

pub fn random_bytes(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Text-like data: compressible but not trivially.
pub fn text_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let words = [
        "alpha", "beta", "gamma", "delta", "storage", "chunk", "pack", "index", "\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(words[rng.gen_range(0..words.len())].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// A tree holding every kind of entry Strata keeps.
pub fn make_full_tree(root: &Path, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("empty-file"), b"").unwrap();
    std::fs::write(root.join("small.txt"), b"hello strata\n").unwrap();
    std::fs::write(root.join("dir/text.log"), text_bytes(&mut rng, 3_000_000)).unwrap();
    std::fs::write(
        root.join("dir/sub/random.bin"),
        random_bytes(&mut rng, 5_000_000),
    )
    .unwrap();
    for i in 0..50 {
        std::fs::write(
            root.join(format!("dir/sub/deeper/f{i}")),
            text_bytes(&mut rng, i * 97),
        )
        .unwrap();
    }
    // Names that are not UTF-8.
    std::fs::write(
        root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"not utf-8 name",
    )
    .unwrap();
    std::fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xff"))).unwrap();
    // Symlinks, one dangling, one absolute.
    symlink("small.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    // Hard links.
    std::fs::write(root.join("dir/hard-a"), random_bytes(&mut rng, 100_000)).unwrap();
    std::fs::hard_link(root.join("dir/hard-a"), root.join("dir/sub/hard-b")).unwrap();
    std::fs::hard_link(root.join("dir/hard-a"), root.join("hard-c")).unwrap();
    // Sparse file: data, a large hole, data, trailing hole.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse.img")).unwrap();
        f.write_all_at(&random_bytes(&mut rng, 100_000), 0).unwrap();
        f.write_all_at(b"middle", 100 << 20).unwrap();
        f.set_len(256 << 20).unwrap();
    }
    // FIFO and a device node (root only).
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    if is_root() {
        nix::sys::stat::mknod(
            &root.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    // Permissions, including setuid and sticky bits.
    std::fs::set_permissions(
        root.join("small.txt"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("empty-dir"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("dir/sub/deeper/f3"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    // Owners other than root.
    if is_root() {
        std::os::unix::fs::lchown(root.join("dir/text.log"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).unwrap();
    }
    // Extended attributes.
    xattr::set(root.join("small.txt"), "user.color", b"blue").unwrap();
    xattr::set(root.join("dir"), "user.project", b"strata").unwrap();
    // Times with nanoseconds, including on a directory and a symlink.
    set_mtime(&root.join("small.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link-rel"), 1_500_000_000, 987_654_321);
    set_mtime(&root.join("dir/sub"), 1_400_000_000, 5);
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    utimensat(
        None,
        path,
        &TimeSpec::new(sec, nsec),
        &TimeSpec::new(sec, nsec),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq)]
pub struct EntrySummary {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<[u8; 32]>,
    target: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Which other entries (by relative path) share this inode.
    link_group: Option<Vec<PathBuf>>,
}

pub fn summarize(root: &Path) -> BTreeMap<PathBuf, EntrySummary> {
    let mut by_inode: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut entries = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "chardev"
            } else {
                "other"
            };
            if ft.is_file() && meta.nlink() > 1 {
                by_inode
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .map(|n| {
                        (
                            n.as_bytes().to_vec(),
                            xattr::get(&path, &n).unwrap().unwrap_or_default(),
                        )
                    })
                    .collect()
            };
            entries.insert(
                rel,
                (
                    (meta.dev(), meta.ino()),
                    EntrySummary {
                        kind: kind.into(),
                        mode: meta.mode() & 0o7777,
                        uid: meta.uid(),
                        gid: meta.gid(),
                        mtime: (meta.mtime(), meta.mtime_nsec()),
                        size: if ft.is_dir() { 0 } else { meta.size() },
                        content: ft
                            .is_file()
                            .then(|| *blake3::hash(&std::fs::read(&path).unwrap()).as_bytes()),
                        target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                        rdev: meta.rdev(),
                        xattrs,
                        link_group: None,
                    },
                ),
            );
        }
    }
    entries
        .into_iter()
        .map(|(rel, (inode, mut summary))| {
            // Only links within the compared tree count: a partial restore
            // cannot recreate links to names outside it.
            if let Some(group) = by_inode.get(&inode).filter(|g| g.len() > 1) {
                let mut group = group.clone();
                group.sort();
                summary.link_group = Some(group);
            }
            (rel, summary)
        })
        .collect()
}

pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = summarize(expected);
    let b = summarize(actual);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "entry names differ");
    for (path, want) in &a {
        assert_eq!(Some(want), b.get(path), "entry {} differs", path.display());
    }
}

/// Blocks allocated to a file, in bytes.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Every regular file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Flips one byte in the middle of the stored bytes of the chunk holding
/// byte `offset` of `file` (its path as backed up) in restore point
/// `selector`; returns the pack's path. The chunk is found through the
/// index, not by searching the packs for content, which an encrypted
/// repository does not hold in the clear.
pub fn flip_stored_byte(t: &TestRepo, selector: &str, file: &Path, offset: u64) -> PathBuf {
    use strata::tree::{Extent, NodeKind};
    let repo = strata::repository::Repository::open_with(&t.repo, &t.open_options()).unwrap();
    let rp = repo.resolve(selector).unwrap();
    let node = repo
        .lookup_path(&rp, file.to_str().unwrap())
        .unwrap()
        .unwrap_or_else(|| panic!("{} is not in {selector}", file.display()));
    let NodeKind::File { extents } = &node.kind else {
        panic!("{} is not a file", file.display());
    };
    let mut start = 0;
    for extent in extents {
        if let Extent::Data { id, .. } = extent {
            if offset < start + extent.len() {
                let location = repo.locate(id).unwrap();
                let pack = t.objects().join(strata::pack::object_name(&location.pack));
                let mut bytes = std::fs::read(&pack).unwrap();
                let at = location.entry.offset + u64::from(location.entry.stored_len) / 2;
                bytes[usize::try_from(at).unwrap()] ^= 0x01;
                std::fs::write(&pack, bytes).unwrap();
                return pack;
            }
        }
        start += extent.len();
    }
    panic!("no stored chunk holds byte {offset} of {}", file.display());
}

/// An executable shell script at `path` running `body`; returns its path.
pub fn write_script(path: &Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}
