//! The repository server (`strata server`) and its clients as separate
//! processes talking HTTPS on 127.0.0.1: backups, restores, mounts and
//! disk images through the server; movers at the same time; what each
//! role may not do; a mover and the server killed with kill -9; a pinned
//! fingerprint that does not match; hostile requests sent with curl.
//! Every server and every mover started in the background sits behind a
//! guard that kills and reaps it when dropped, also on panic.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::SeedableRng;

use crate::mount::{fuse_available, is_mounted};
use crate::util::*;
use crate::vm::{convert, ext4_image};

/// `strata server` serving the test repository as `main`, in a child
/// process whose log (RUST_LOG=info) goes to `server.log` in the test's
/// directory. Killed and reaped when dropped.
pub(crate) struct RepoServer {
    child: Option<Child>,
    stdout: Option<BufReader<ChildStdout>>,
    /// The server's own state (`--dir`): tokens, its certificate.
    dir: PathBuf,
    repo: PathBuf,
    /// A bucket's endpoint, credentials and state directory, if any.
    env: Vec<(String, String)>,
    extra: Vec<String>,
    log: PathBuf,
    port: u16,
    fingerprint: String,
}

impl RepoServer {
    /// Starts a server on a free port with `--dir` in the test's
    /// directory and `extra` options; returns once it said it listens.
    pub(crate) fn start(t: &TestRepo, extra: &[&str]) -> RepoServer {
        let mut server = RepoServer {
            child: None,
            stdout: None,
            dir: t.path("server"),
            repo: t.repo.clone(),
            env: t.env.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: t.path("server.log"),
            port: 0,
            fingerprint: String::new(),
        };
        let (port, fingerprint) = server.spawn("127.0.0.1:0");
        server.port = port;
        server.fingerprint = fingerprint;
        server
    }

    /// Starts the process and reads its one line: `listening ADDR
    /// fingerprint FP`. The log is appended to, so a restarted server's
    /// log follows the first one's.
    fn spawn(&mut self, listen: &str) -> (u16, String) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(strata_bin())
            .args(["server", "--listen", listen, "--dir"])
            .arg(&self.dir)
            .arg("--serve")
            .arg(format!("main={}", self.repo.display()))
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // The server never holds the key: it runs without the password.
            .env_remove("STRATA_PASSWORD")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        self.child = Some(child);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        self.stdout = Some(stdout);
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(&"listening"), Some(address), Some(&"fingerprint"), Some(fingerprint), None) = (
            words.first(),
            words.get(1),
            words.get(2),
            words.get(3),
            words.get(4),
        ) else {
            panic!(
                "the server did not say it listens: {line:?}\nits log:\n{}",
                self.log()
            );
        };
        let port: u16 = address
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("listening on {address:?}"));
        let pairs: Vec<&str> = fingerprint.split(':').collect();
        assert!(
            pairs.len() == 32
                && pairs
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())),
            "not a SHA-256 fingerprint in pairs: {fingerprint}"
        );
        (port, fingerprint.to_string())
    }

    /// SIGTERM, as an operator stops it: it says `stopped` and exits 0.
    pub(crate) fn stop(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        let mut rest = String::new();
        self.stdout
            .take()
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        assert!(
            status.success(),
            "server exited with {status:?}\n{}",
            self.log()
        );
        assert_eq!(rest.trim(), "stopped", "{}", self.log());
    }

    /// kill -9, as a crash would.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        child.kill().unwrap();
        child.wait().unwrap();
        self.stdout = None;
    }

    /// Starts the server again on the same port and `--dir`: it keeps its
    /// certificate, so clients keep trusting it.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        let (port, fingerprint) = self.spawn(&format!("127.0.0.1:{}", self.port));
        assert_eq!(port, self.port);
        assert_eq!(
            fingerprint, self.fingerprint,
            "the certificate changed on restart"
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    fn wait_for_log(&self, needle: &str) {
        wait_until(&format!("{needle:?} in the server's log"), || {
            self.log().contains(needle)
        });
    }

    /// Makes a token with `strata server token add`; returns its secret.
    pub(crate) fn token(&self, name: &str, role: &str, sources: &[&str]) -> String {
        let mut cmd = Command::new(strata_bin());
        cmd.args(["server", "token", "add", name, "--role", role, "--dir"])
            .arg(&self.dir);
        for glob in sources {
            cmd.args(["--sources", glob]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "token add: {}", stderr_of(&out));
        let secret = stdout_of(&out).trim().to_string();
        let hex = secret
            .strip_prefix(&format!("{name}:"))
            .unwrap_or_else(|| panic!("token {secret:?} is not {name}:SECRET"));
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{secret}"
        );
        secret
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}/main", self.port)
    }

    /// The URL of `path` below the repository in the HTTP API.
    fn api(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/api/v1/repos/main{path}", self.port)
    }

    /// A client presenting `token`, pinning this server's certificate,
    /// with its own file cache in `host` (as a mover on its own machine).
    pub(crate) fn client(&self, t: &TestRepo, host: &str, token: &str) -> Client {
        Client {
            url: self.url(),
            token: token.to_string(),
            fingerprint: self.fingerprint.clone(),
            cache: t.path(&format!("host-{host}")),
        }
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `strata` client of a server.
pub(crate) struct Client {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) fingerprint: String,
    /// XDG_CACHE_HOME: where this client keeps its file cache.
    cache: PathBuf,
}

impl Client {
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = strata_command();
        cmd.args(args)
            .env("STRATA_REPO", &self.url)
            .env("STRATA_TOKEN", &self.token)
            .env("STRATA_FINGERPRINT", &self.fingerprint)
            .env("XDG_CACHE_HOME", &self.cache)
            .env_remove("STRATA_STATE")
            .env("RUST_LOG", "error");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} through the server failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            stdout_of(&out),
            stderr_of(&out)
        );
        stdout_of(&out)
    }

    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn backup(&self, path: &Path, source: &str) -> serde_json::Value {
        self.json(&[
            "backup",
            "files",
            path.to_str().unwrap(),
            "--source",
            source,
        ])
    }

    fn restore(&self, rp: &str, to: &Path) {
        self.ok(&["restore", "files", rp, "--to", to.to_str().unwrap()]);
    }

    /// The sources of the restore points this client sees, sorted.
    fn sources(&self) -> Vec<String> {
        let mut sources: Vec<String> = self
            .json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|rp| rp["source"].as_str().unwrap().to_string())
            .collect();
        sources.sort();
        sources
    }

    /// Runs, expects exit status 1 and every one of `expected` in the
    /// error output; returns it.
    fn refused(&self, args: &[&str], expected: &[&str]) -> String {
        let out = self.run(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        for e in expected {
            assert!(err.contains(e), "{args:?}: expected {e:?} in: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    /// Starts `strata [GLOBAL…] backup files PATH --source SOURCE --json`
    /// in the background, its output captured.
    fn spawn_backup(&self, global: &[&str], path: &Path, source: &str) -> Reaped {
        let mut args = global.to_vec();
        args.extend([
            "backup",
            "files",
            path.to_str().unwrap(),
            "--source",
            source,
            "--json",
        ]);
        Reaped(Some(
            self.command(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    }
}

/// A child process killed and reaped when dropped.
struct Reaped(Option<Child>);

impl Reaped {
    fn running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn kill9(&mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }

    /// Waits for a backup with `--json`; asserts success; its summary.
    fn summary(self) -> serde_json::Value {
        let out = self.output();
        assert!(
            out.status.success(),
            "backup failed with {:?}: {}",
            out.status.code(),
            stderr_of(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `ready`; a minute without it fails the test (a hang, not
/// a slow machine).
pub(crate) fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository's pack files (its objects as files, also in a bucket).
fn pack_files(t: &TestRepo) -> BTreeSet<PathBuf> {
    let packs = t.objects().join("packs");
    if packs.exists() {
        files_under(&packs).into_iter().collect()
    } else {
        BTreeSet::new()
    }
}

/// Packs of 1 MiB instead of 32: a backup of some MB is many uploads, so
/// a kill lands between them.
fn small_packs(t: &TestRepo) {
    let edit = |bytes: &[u8]| {
        let mut config: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        config["pack_target_size"] = serde_json::json!(1 << 20);
        serde_json::to_vec_pretty(&config).unwrap()
    };
    match &t.server {
        Some(server) => {
            use strata::storage::ObjectStore;
            let store = server.store(t.repo.to_str().unwrap(), &t.path("config-staging"));
            let config = store.get("config.json").unwrap();
            store.put("config.json", &edit(&config)).unwrap();
        }
        None => {
            let path = t.repo.join("config.json");
            std::fs::write(&path, edit(&std::fs::read(&path).unwrap())).unwrap();
        }
    }
}

/// A directory of `files` files of `each` random bytes.
pub(crate) fn random_tree(dir: &Path, files: usize, each: usize, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(dir.join(format!("r{i}")), random_bytes(&mut rng, each)).unwrap();
    }
}

/// `key add` of the password "another password", written to a file in
/// the test's directory, at a cheap cost.
fn key_add_args(t: &TestRepo) -> Vec<String> {
    let password_file = t.path("new-password");
    std::fs::write(&password_file, "another password").unwrap();
    ["key", "add", "--new-password-file", password_file.to_str().unwrap()]
        .into_iter()
        .chain(["--kdf-memory-mib", "8", "--kdf-passes", "1"])
        .map(str::to_string)
        .collect()
}

fn number(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

/// curl with the token; returns the HTTP status and body. `-k`: curl
/// cannot pin a certificate's fingerprint, and what these requests test
/// is the server's answer to them.
fn curl(token: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sSk", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(args)
        .output()
        .expect("curl is installed");
    let text = stdout_of(&out);
    let (body, status) = text.rsplit_once('\n').unwrap();
    let status = status
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: {text} {}", stderr_of(&out)));
    (status, body.to_string())
}

/// The error code of a JSON error body.
fn error_code(body: &str) -> String {
    let parsed: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON error: {body}"));
    parsed["error"]["code"].as_str().unwrap().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a pack of `bytes` has: the first 16 bytes of their BLAKE3.
fn pack_name(bytes: &[u8]) -> String {
    hex(&blake3::hash(bytes).as_bytes()[..16])
}

#[test]
fn backs_up_lists_shows_lists_files_and_restores_through_the_server() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 81);
    let mut server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "web01", &server.token("admin", "admin", &["*"]));

    // The server holds the repository's writer lock while it runs.
    let busy = t.run(&["prune"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(stderr_of(&busy).contains("busy"), "{}", stderr_of(&busy));

    let first = admin.backup(&src, "web01");
    let rp = first["restore_point"].as_str().unwrap().to_string();
    let sent = number(&first, "bytes_sent");
    assert!(
        sent >= number(&first, "bytes_stored") && number(&first, "bytes_stored") > 5_000_000,
        "{first}"
    );

    let listed = admin.json(&["list"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], rp.as_str());
    assert_eq!(listed[0]["source"], "web01");
    let shown = admin.ok(&["show", "web01@latest"]);
    assert!(shown.contains(&rp) && shown.contains("web01"), "{shown}");
    let files = admin.ok(&["ls", "-R", "web01@latest"]);
    for path in [
        "small.txt",
        "dir/sub/deeper/f3",
        "dir/sub/hard-b",
        "link-dangling",
    ] {
        let full = src.join(path);
        assert!(
            files.contains(full.to_str().unwrap()),
            "{path} not in:\n{files}"
        );
    }

    let target = t.path("restored");
    admin.restore("web01@latest", &target);
    assert_same_tree(&src, &under(&target, &src));

    // An incremental backup sends about nothing: one changed small file.
    std::fs::write(src.join("small.txt"), b"changed").unwrap();
    let second = admin.backup(&src, "web01");
    assert!(
        number(&second, "bytes_sent") * 50 < sent && number(&second, "chunks_new") <= 8,
        "first {first}\nsecond {second}"
    );
    let target = t.path("restored-2");
    admin.restore("web01@latest", &target);
    assert_same_tree(&src, &under(&target, &src));

    server.stop();
    assert_eq!(t.json(&["list"]).as_array().unwrap().len(), 2);
    t.ok(&["check", "--read-data"]);
}

/// `strata mount` through the server, unmounted when dropped.
struct RemoteMount {
    path: PathBuf,
    child: Option<Child>,
}

impl RemoteMount {
    fn mount(client: &Client, path: &Path) -> RemoteMount {
        std::fs::create_dir_all(path).unwrap();
        let child = client
            .command(&["mount", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut mount = RemoteMount {
            path: path.to_path_buf(),
            child: Some(child),
        };
        wait_until("the mount", || {
            assert!(
                mount.child.as_mut().unwrap().try_wait().unwrap().is_none(),
                "strata mount exited"
            );
            is_mounted(path)
        });
        mount
    }

    /// SIGTERM: unmounts; returns whether it exited 0.
    fn stop(&mut self) -> bool {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap().success()
    }
}

impl Drop for RemoteMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[test]
fn a_mount_through_the_server_reads_the_source_bytes() {
    if !fuse_available() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    make_full_tree(&src, 82);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(82);
    let big = random_bytes(&mut rng, 12_000_000);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let server = RepoServer::start(&t, &[]);
    let mover = server.client(&t, "mover", &server.token("mover", "backup", &["web*"]));
    mover.backup(&src, "web01");

    // Mounted with a token that may only read.
    let reader = server.client(&t, "reader", &server.token("reader", "restore", &["web*"]));
    let mnt = t.path("mnt");
    let mut mount = RemoteMount::mount(&reader, &mnt);
    let mounted = under(&mnt.join("files/web01/latest"), &src);
    assert_same_tree(&src, &mounted);
    // Reads at offsets that start and end inside chunks.
    let file = std::fs::File::open(mounted.join("big.bin")).unwrap();
    for (offset, len) in [
        (0, 4096),
        (1_234_567, 700_000),
        (11_999_000, 1000),
        (5_000_001, 3),
    ] {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == big[offset..offset + len], "bytes at {offset} differ");
    }
    drop(file);
    assert!(mount.stop(), "strata mount did not exit 0 on SIGTERM");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn a_disk_image_backs_up_and_restores_through_the_server_byte_for_byte() {
    let t = TestRepo::new();
    let raw = ext4_image(t.dir.path(), "disk", 32, 83);
    let vmdk = t.path("disk.vmdk");
    convert(&raw, "monolithicSparse", &vmdk);
    let server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "vmhost", &server.token("admin", "admin", &["*"]));

    let first = admin.json(&["backup", "image", vmdk.to_str().unwrap(), "--name", "disk"]);
    assert_eq!(first["kind"], "vm", "{first}");
    let out = t.path("disk.restored");
    admin.ok(&[
        "restore",
        "disk",
        "disk@latest",
        "image",
        "--raw-to",
        out.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap(),
        "the disk restored through the server differs from the source image"
    );
    // The same image again: its chunks are all stored, and not sent.
    let second = admin.json(&["backup", "image", vmdk.to_str().unwrap(), "--name", "disk"]);
    assert!(
        number(&second, "bytes_sent") * 20 < number(&first, "bytes_sent"),
        "first {first}\nsecond {second}"
    );
}

#[test]
fn two_movers_with_different_sources_back_up_at_once() {
    let t = TestRepo::new();
    let (a, b) = (t.path("a"), t.path("b"));
    random_tree(&a, 4, 3_000_000, 84);
    random_tree(&b, 4, 3_000_000, 85);
    let server = RepoServer::start(&t, &[]);
    let secret = server.token("movers", "backup", &["host-*"]);
    // Two machines, each with its own file cache.
    let (on_a, on_b) = (
        server.client(&t, "a", &secret),
        server.client(&t, "b", &secret),
    );
    let run_a = on_a.spawn_backup(&[], &a, "host-a");
    let run_b = on_b.spawn_backup(&[], &b, "host-b");
    run_a.summary();
    run_b.summary();
    assert_eq!(on_a.sources(), ["host-a", "host-b"]);
    for (dir, source) in [(&a, "host-a"), (&b, "host-b")] {
        let target = t.path(&format!("restored-{source}"));
        on_a.restore(&format!("{source}@latest"), &target);
        assert_same_tree(dir, &under(&target, dir));
    }
}

/// Two `strata backup` processes on one machine (one file cache) into
/// one server at once: both must complete.
#[test]
fn two_movers_on_one_machine_back_up_at_once() {
    let t = TestRepo::new();
    let (a, b) = (t.path("a"), t.path("b"));
    random_tree(&a, 4, 3_000_000, 86);
    random_tree(&b, 4, 3_000_000, 87);
    let server = RepoServer::start(&t, &[]);
    let one_host = server.client(&t, "one", &server.token("mover", "backup", &["*"]));
    let run_a = one_host.spawn_backup(&[], &a, "a");
    let run_b = one_host.spawn_backup(&[], &b, "b");
    run_a.summary();
    run_b.summary();
    for (dir, source) in [(&a, "a"), (&b, "b")] {
        let target = t.path(&format!("restored-{source}"));
        one_host.restore(&format!("{source}@latest"), &target);
        assert_same_tree(dir, &under(&target, dir));
    }
}

#[test]
fn two_movers_with_the_same_data_upload_it_about_once() {
    let t = TestRepo::new();
    let data = t.path("data");
    random_tree(&data, 3, 8_000_000, 88);
    let size = 24_000_000u64;
    let server = RepoServer::start(&t, &[]);
    let secret = server.token("movers", "backup", &["copy-*"]);
    let (on_a, on_b) = (
        server.client(&t, "a", &secret),
        server.client(&t, "b", &secret),
    );
    // Both upload slowly, so that each asks for chunks while the other
    // still uploads them.
    let run_a = on_a.spawn_backup(&["--limit-upload", "8M"], &data, "copy-a");
    let run_b = on_b.spawn_backup(&["--limit-upload", "8M"], &data, "copy-b");
    let (a, b) = (run_a.summary(), run_b.summary());

    // Both sessions were open before either committed.
    let log = server.log();
    let opened: Vec<usize> = log
        .match_indices("backup session opened")
        .map(|(i, _)| i)
        .collect();
    let committed = log.find("restore point committed").unwrap();
    assert!(opened.len() == 2 && opened[1] < committed, "{log}");

    let stored = number(&a, "bytes_stored") + number(&b, "bytes_stored");
    assert!(
        stored >= size && stored * 2 < size * 3,
        "{stored} bytes stored for {size} bytes of random data\n{a}\n{b}"
    );
    for source in ["copy-a", "copy-b"] {
        let target = t.path(&format!("restored-{source}"));
        on_a.restore(&format!("{source}@latest"), &target);
        assert_same_tree(&data, &under(&target, &data));
    }
}

#[test]
fn each_role_is_refused_what_it_may_not_do() {
    let t = TestRepo::new();
    let src = t.path("src");
    random_tree(&src, 2, 500_000, 89);
    // Made before the server: in an encrypted repository the server
    // cannot read its source, so only tokens for '*' see it.
    t.backup(&src, "web-local");
    let server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));
    let mover = server.client(&t, "web", &server.token("web-mover", "backup", &["web*"]));
    let reader = server.client(
        &t,
        "reader",
        &server.token("web-reader", "restore", &["web*"]),
    );

    // A backup token backs up its sources, and only those.
    mover.backup(&src, "web01");
    mover.refused(
        &["backup", "files", src.to_str().unwrap(), "--source", "db01"],
        &["may not back up source \"db01\""],
    );
    server.wait_for_log("refused: source");
    admin.backup(&src, "db01");
    assert_eq!(admin.sources(), ["db01", "web-local", "web01"]);
    // It sees its sources' restore points, not the others'.
    let mut expected = if encrypted() {
        vec![]
    } else {
        vec!["web-local"]
    };
    expected.push("web01");
    assert_eq!(mover.sources(), expected);
    mover.refused(&["ls", "db01@latest"], &["no restore point matches"]);

    // A restore token reads its sources and backs up nothing.
    reader.refused(
        &[
            "backup",
            "files",
            src.to_str().unwrap(),
            "--source",
            "web02",
        ],
        &["has role restore", "back up needs role backup"],
    );
    server.wait_for_log("refused: role");
    assert_eq!(reader.sources(), expected);
    let target = t.path("restored");
    reader.restore("web01@latest", &target);
    assert_same_tree(&src, &under(&target, &src));
    reader.refused(
        &[
            "restore",
            "files",
            "db01@latest",
            "--to",
            t.path("no").to_str().unwrap(),
        ],
        &["no restore point matches"],
    );
    assert!(!t.path("no").exists());

    // What needs the repository itself is refused to every token.
    for args in [&["init"][..], &["repair", "index"], &["unlock"]] {
        for client in [&admin, &mover, &reader] {
            client.refused(args, &["not available through a repository server"]);
        }
    }
    // Deleting, tiering, thawing, checking, the repository's figures and
    // its key slots are never a backup or restore token's to do.
    let key_add = key_add_args(&t);
    let key_add: Vec<&str> = key_add.iter().map(String::as_str).collect();
    for args in [
        &["forget", "--keep-last", "1"][..],
        &["prune"],
        &["tier", "run"],
        &["tier", "status"],
        &["thaw", "web01@latest"],
        &["check"],
        &["check", "--read-data"],
        &["stats"],
        &key_add[..],
    ] {
        if args[0] == "key" && !encrypted() {
            continue;
        }
        for client in [&mover, &reader] {
            client.refused(args, &["needs role admin"]);
        }
    }
    assert_eq!(admin.sources(), ["db01", "web-local", "web01"]);

    // A wrong secret: 401, and a clear error.
    let wrong = Client {
        token: "admin:0000000000000000000000000000000000000000000000000000000000000000".into(),
        ..server.client(&t, "admin", "")
    };
    wrong.refused(&["list"], &["no valid API token", "unauthorized"]);
    let (status, body) = curl(&wrong.token, &[&server.api("/restore-points")]);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    server.wait_for_log("refused: no valid token");

    // Tokens are listed without their secrets; a removed one is refused.
    let list = Command::new(strata_bin())
        .args(["server", "token", "list", "--json", "--dir"])
        .arg(&server.dir)
        .output()
        .unwrap();
    let listed = stdout_of(&list);
    for name in ["\"admin\"", "\"web-mover\"", "\"web-reader\""] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(
        !listed.contains(reader.token.split_once(':').unwrap().1),
        "{listed}"
    );
    let removed = Command::new(strata_bin())
        .args(["server", "token", "remove", "web-reader", "--dir"])
        .arg(&server.dir)
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", stderr_of(&removed));
    reader.refused(&["list"], &["no valid API token"]);
    assert_eq!(admin.sources(), ["db01", "web-local", "web01"]);
}

#[test]
fn repeated_wrong_tokens_are_refused_for_the_rest_of_the_minute() {
    let t = TestRepo::new();
    let server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));
    admin.ok(&["list"]);
    let guesser = Client {
        token: "admin:1111111111111111111111111111111111111111111111111111111111111111".into(),
        ..server.client(&t, "guesser", "")
    };
    // One try per request, so that a refusal is not waited out.
    let guess = || {
        let out = guesser
            .command(&["list"])
            .env("STRATA_REMOTE_TRIES", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        stderr_of(&out)
    };
    for attempt in 1..=10 {
        let err = guess();
        assert!(
            err.contains("no valid API token"),
            "attempt {attempt}: {err}"
        );
    }
    let err = guess();
    assert!(err.contains("too many failed"), "{err}");
    let (status, body) = curl(&guesser.token, &[&server.api("/restore-points")]);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "rate_limited"),
        "{body}"
    );
    // The address is refused whatever it presents until the minute ends.
    let out = admin
        .command(&["list"])
        .env("STRATA_REMOTE_TRIES", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("too many failed"),
        "{}",
        stderr_of(&out)
    );
    server.wait_for_log("refused: too many failed authentications");
}

#[test]
fn a_mover_killed_mid_upload_commits_nothing_and_prune_reclaims_what_it_sent() {
    let t = TestRepo::new();
    small_packs(&t);
    let big = t.path("big");
    random_tree(&big, 1, 30_000_000, 90);
    let mut server = RepoServer::start(&t, &["--session-timeout", "2"]);
    let admin = server.client(&t, "mover", &server.token("admin", "admin", &["*"]));

    let before = pack_files(&t);
    let mut mover = admin.spawn_backup(&["--limit-upload", "2M"], &big, "big");
    wait_until("packs of the mover", || {
        pack_files(&t).len() >= before.len() + 3
    });
    assert!(mover.running(), "the backup ended before it was killed");
    mover.kill9();
    let orphans: BTreeSet<PathBuf> = pack_files(&t).difference(&before).cloned().collect();
    assert!(!orphans.is_empty());

    server.wait_for_log("backup session timed out");
    assert_eq!(
        admin.sources(),
        Vec::<String>::new(),
        "a restore point appeared"
    );
    // Another backup, of other data, succeeds.
    let other = t.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(90);
    std::fs::write(other.join("notes"), text_bytes(&mut rng, 2_000_000)).unwrap();
    admin.backup(&other, "other");
    let target = t.path("restored");
    admin.restore("other@latest", &target);
    assert_same_tree(&other, &under(&target, &other));

    // Prune through the server, by the admin client: it walks, the
    // server sweeps what the killed mover left.
    let pruned = admin.json(&["prune"]);
    assert!(
        number(&pruned, "packs_deleted") >= orphans.len() as u64,
        "{} orphan packs: {pruned}",
        orphans.len()
    );
    let left: Vec<_> = orphans.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "prune kept orphan packs: {left:?}");
    server.wait_for_log("maintenance ended");
    server.stop();
    t.ok(&["check", "--read-data"]);
    assert_eq!(
        t.staging_leftovers(),
        Vec::<PathBuf>::new(),
        "staging leftovers remain"
    );
    let target = t.path("restored-locally");
    t.restore("other@latest", &target);
    assert_same_tree(&other, &under(&target, &other));
}

#[test]
fn a_server_killed_mid_backup_and_restarted_lets_the_mover_finish() {
    let t = TestRepo::new();
    small_packs(&t);
    let big = t.path("big");
    random_tree(&big, 3, 10_000_000, 91);
    let size = 30_000_000u64;
    let mut server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "mover", &server.token("admin", "admin", &["*"]));

    let before = pack_files(&t);
    // Default tries: the mover rides out the restart.
    let mut mover = admin.spawn_backup(&["--limit-upload", "4M"], &big, "big");
    wait_until("packs of the mover", || {
        pack_files(&t).len() >= before.len() + 8
    });
    assert!(
        mover.running(),
        "the backup ended before the server was killed"
    );
    server.kill9();
    server.restart();
    let summary = mover.summary();
    // What was stored before the kill was not sent again.
    assert!(number(&summary, "bytes_sent") < 2 * size, "{summary}");

    let target = t.path("restored");
    admin.restore("big@latest", &target);
    assert_same_tree(&big, &under(&target, &big));
    server.stop();
    t.ok(&["check", "--read-data"]);
}

/// A TCP proxy on 127.0.0.1 in front of a server, whose open connections
/// the test can cut at once, as a network drop would (the proxy itself
/// keeps accepting, as a network that comes back). Its threads end when
/// it is dropped.
struct CuttableLink {
    port: u16,
    /// Bytes carried from clients to the server, cut requests included.
    upstream: std::sync::Arc<std::sync::atomic::AtomicU64>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepter: Option<std::thread::JoinHandle<()>>,
}

impl CuttableLink {
    fn to(port: u16) -> CuttableLink {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap().port();
        let open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let upstream: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
        let accepter = {
            let (open, stop, upstream) = (open.clone(), stop.clone(), upstream.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    let mut both = open.lock().unwrap();
                    for (from, to, counted) in [(&client, &server, true), (&server, &client, false)] {
                        let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                        let upstream = upstream.clone();
                        std::thread::spawn(move || {
                            use std::io::Write;
                            let mut buf = vec![0u8; 64 << 10];
                            while let Ok(n @ 1..) = from.read(&mut buf) {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                if counted {
                                    upstream.fetch_add(n as u64, Ordering::Relaxed);
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    both.push(client);
                    both.push(server);
                }
            })
        };
        CuttableLink {
            port: local,
            upstream,
            open,
            stop,
            accepter: Some(accepter),
        }
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the stop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        self.cut();
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}

/// The network between a mover and the server drops twice mid-upload:
/// the mover reconnects and finishes, sending again at most the packs
/// that were in flight, and the restore point restores byte for byte.
#[test]
fn a_network_cut_mid_upload_is_ridden_out_without_sending_it_all_again() {
    let t = TestRepo::new();
    small_packs(&t);
    let big = t.path("big");
    random_tree(&big, 3, 8_000_000, 92);
    let size = 24_000_000u64;
    let server = RepoServer::start(&t, &[]);
    let link = CuttableLink::to(server.port);
    let admin = server.client(&t, "mover", &server.token("admin", "admin", &["*"]));
    let through_link = Client {
        url: format!("https://127.0.0.1:{}/main", link.port),
        ..server.client(&t, "mover", &admin.token)
    };

    let before = pack_files(&t).len();
    let mover = through_link.spawn_backup(&["--limit-upload", "4M"], &big, "big");
    for packs in [4, 10] {
        wait_until("packs of the mover", || pack_files(&t).len() >= before + packs);
        link.cut();
    }
    let summary = mover.summary();
    // What crossed the link: the data once, plus at most the three packs
    // in flight at each cut (1 MiB each) and the protocol's own bytes.
    let carried = link.upstream.load(std::sync::atomic::Ordering::Relaxed);
    assert!(carried < size + 8 * (1 << 20), "{carried} bytes carried for {size}: {summary}");
    assert!(number(&summary, "bytes_sent") < size + 8 * (1 << 20), "{summary}");

    let target = t.path("restored");
    admin.restore("big@latest", &target);
    assert_same_tree(&big, &under(&target, &big));
}

#[test]
fn a_wrong_fingerprint_is_refused_before_anything_is_sent() {
    let t = TestRepo::new();
    let src = t.path("src");
    random_tree(&src, 1, 100_000, 92);
    let server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));
    // The same fingerprint with its last digit changed.
    let mut wrong = server.fingerprint.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    let fooled = Client {
        fingerprint: wrong.clone(),
        ..server.client(&t, "admin", &admin.token)
    };
    fooled.refused(&["list"], &["fingerprint"]);
    fooled.refused(
        &["backup", "files", src.to_str().unwrap(), "--source", "s"],
        &["fingerprint"],
    );
    // With a wrong secret too: had any request been sent, the server
    // would have refused the secret.
    let guesser = Client {
        fingerprint: wrong,
        token: "admin:2222222222222222222222222222222222222222222222222222222222222222".into(),
        ..server.client(&t, "guesser", "")
    };
    guesser.refused(&["list"], &["fingerprint"]);
    server.wait_for_log("TLS handshake failed");
    let log = server.log();
    assert!(
        !log.contains("refused") && !log.contains("session opened"),
        "{log}"
    );

    // The right fingerprint, written in capitals without colons, is the
    // same fingerprint.
    let pinned = server.fingerprint.replace(':', "").to_uppercase();
    let out = admin
        .command(&["--fingerprint", &pinned, "list"])
        .env_remove("STRATA_FINGERPRINT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(admin.sources(), Vec::<String>::new());
}

#[test]
fn hostile_requests_are_refused_and_the_server_keeps_serving() {
    let t = TestRepo::new();
    let src = t.path("src");
    random_tree(&src, 2, 2_000_000, 93);
    t.backup(&src, "before");
    let real_pack = pack_files(&t)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let real = std::fs::read(&real_pack).unwrap();
    let real_name = real_pack.file_stem().unwrap().to_str().unwrap().to_string();
    assert_eq!(pack_name(&real), real_name);

    let mut server = RepoServer::start(&t, &[]);
    let secret = server.token("mover", "backup", &["*"]);
    let (status, body) = curl(
        &secret,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"host":"hostile"}"#,
            &server.api("/sessions"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let opened: serde_json::Value = serde_json::from_str(&body).unwrap();
    let session = opened["session"].as_str().unwrap().to_string();
    let before = pack_files(&t);

    let body_file = |name: &str, bytes: &[u8]| {
        let path = t.path(name);
        std::fs::write(&path, bytes).unwrap();
        format!("@{}", path.display())
    };
    let put_pack = |name: &str, file: &str| {
        curl(
            &secret,
            &[
                "-X",
                "PUT",
                "--data-binary",
                file,
                &server.api(&format!("/sessions/{session}/packs/{name}")),
            ],
        )
    };

    // Ids that are not a whole number of ids.
    let odd = body_file("odd-ids", &[7u8; 33]);
    let (status, body) = curl(
        &secret,
        &[
            "-X",
            "POST",
            "--data-binary",
            &odd,
            &server.api(&format!("/sessions/{session}/known")),
        ],
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad_request"),
        "{body}"
    );

    // A real pack cut short: under its name, and under the name of what
    // is left (the name matches, the trailer is gone).
    let cut = &real[..real.len() / 2];
    let cut_file = body_file("cut.pack", cut);
    for name in [real_name.clone(), pack_name(cut)] {
        let (status, body) = put_pack(&name, &cut_file);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "pack_invalid"),
            "{name}: {body}"
        );
    }
    // Garbage, under its own name.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(93);
    let garbage = random_bytes(&mut rng, 300_000);
    let (status, body) = put_pack(&pack_name(&garbage), &body_file("garbage.pack", &garbage));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "pack_invalid"),
        "{body}"
    );
    server.wait_for_log("refused an invalid pack");

    // 120 MiB of zeros, streamed: more than any pack may be. Over
    // HTTP/1.1: curl 7.88 reports an HTTP/2 stream reset after an early
    // answer as a framing error and drops the answer.
    let script = format!(
        "head -c {} /dev/zero | curl -sSk --http1.1 -w '\\n%{{http_code}}' -H 'Authorization: Bearer {secret}' -X PUT -T - '{}'",
        120u64 << 20,
        server.api(&format!("/sessions/{session}/packs/{real_name}"))
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let text = stdout_of(&out);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(
        (status.trim(), error_code(body).as_str()),
        ("413", "too_large"),
        "{text} {}",
        stderr_of(&out)
    );
    server.wait_for_log("pack upload refused or cut");

    // Nothing was added, and the server serves normally.
    assert_eq!(pack_files(&t), before);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));
    assert_eq!(admin.sources(), ["before"]);
    let later = t.path("later");
    random_tree(&later, 2, 1_000_000, 94);
    admin.backup(&later, "later");
    let target = t.path("restored");
    admin.restore("later@latest", &target);
    assert_same_tree(&later, &under(&target, &later));
    admin.restore("before@latest", &t.path("restored-before"));
    assert_same_tree(&src, &under(&t.path("restored-before"), &src));

    server.stop();
    t.ok(&["check", "--read-data"]);
}

#[test]
fn an_admin_forgets_and_prunes_through_the_server_and_what_is_kept_still_restores() {
    let t = TestRepo::new();
    small_packs(&t);
    let src = t.path("src");
    random_tree(&src, 2, 3_000_000, 7);
    let mut server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "web01", &server.token("admin", "admin", &["*"]));
    admin.backup(&src, "web01");
    // Replace the data: the first restore point alone references the old.
    std::fs::remove_dir_all(&src).unwrap();
    random_tree(&src, 2, 3_000_000, 8);
    let kept = admin.backup(&src, "web01")["restore_point"]
        .as_str()
        .unwrap()
        .to_string();

    let dry = admin.json(&["prune", "--dry-run"]);
    assert_eq!(number(&dry, "packs_deleted"), 0, "{dry}");
    let forgot = admin.json(&["forget", "--keep-last", "1"]);
    let removed: Vec<_> = forgot
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .collect();
    assert_eq!(removed.len(), 1, "{forgot}");
    assert_eq!(admin.sources(), ["web01"]);
    let before = pack_files(&t);
    let pruned = admin.json(&["prune"]);
    assert!(number(&pruned, "packs_deleted") > 0, "{pruned}");
    assert!(number(&pruned, "bytes_freed") >= 6_000_000, "{pruned}");
    assert!(pack_files(&t).len() < before.len());
    server.wait_for_log("maintenance ended");

    // What is kept restores, through the server and locally afterwards.
    let target = t.path("restored");
    admin.restore(&kept, &target);
    assert_same_tree(&src, &under(&target, &src));
    server.stop();
    t.ok(&["check", "--read-data"]);
}

/// `tier run`, `tier status`, `thaw`, `stats`, `check` and `key` by an
/// admin client: it walks and seals with the key, the server moves,
/// copies, counts and checks without it; and the same repository, opened
/// directly once the server stops, agrees.
#[test]
fn an_admin_tiers_thaws_counts_and_checks_through_the_server() {
    let t = TestRepo::with_cold();
    small_packs(&t);
    let (src, old, old_data) = crate::object_storage::old_and_young_backups(&t, 41);
    let mut server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));

    let tiered = admin.json(&["tier", "run"]);
    assert_eq!(tiered["restore_points_cold"], 1, "{tiered}");
    assert_eq!(tiered["restore_points_warm"], 1, "{tiered}");
    assert!(number(&tiered, "chunks_moved") >= 1, "{tiered}");
    assert!(number(&tiered, "bytes_moved") >= old_data.len() as u64, "{tiered}");
    assert!(number(&tiered, "cold_packs_written") >= 1, "{tiered}");
    let status = admin.json(&["tier", "status"]);
    assert!(number(&status, "cold_packs") >= 1, "{status}");
    assert_eq!(status["restore_points_cold"], 1, "{status}");
    assert!(!files_under(&t.cold_objects().join("packs")).is_empty());

    // Cold data is not read without a thaw; a thaw through the server
    // makes it readable, and is then found thawed already.
    let out = admin.run(&["restore", "files", &old, "--to", t.path("cold").to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "a cold restore point restored without a thaw");
    assert!(stderr_of(&out).contains("strata thaw"), "{}", stderr_of(&out));
    let plan = admin.json(&["thaw", &old, "--plan"]);
    assert!(!plan["packs"].as_object().unwrap().is_empty(), "{plan}");
    assert_eq!(plan["complete"], false, "{plan}");
    let thawed = admin.json(&["thaw", &old]);
    assert_eq!(thawed["complete"], true, "{thawed}");
    assert!(number(&thawed, "packs_fetched") >= 1, "{thawed}");
    let again = admin.json(&["thaw", &old]);
    assert_eq!(again["packs_fetched"], 0, "{again}");
    assert_eq!(again["packs_already_thawed"], thawed["packs_fetched"], "{again}");
    let target = t.path("thawed");
    admin.restore(&old, &target);
    assert_eq!(std::fs::read(under(&target, &src).join("old-only")).unwrap(), old_data);

    let stats = admin.json(&["stats"]);
    assert_eq!(stats["restore_points"], 2, "{stats}");
    let check = admin.json(&["check", "--read-data"]);
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "{check}");
    assert!(number(&check, "bytes_verified") > 0, "{check}");
    assert_eq!(check["restore_points"], 2, "{check}");

    if encrypted() {
        // A second password, added through the server, opens the
        // repository; the last slot is never removed.
        let key_add = key_add_args(&t);
        let added = admin.json(&key_add.iter().map(String::as_str).collect::<Vec<_>>());
        let slot = added["id"].as_str().unwrap().to_string();
        let other = admin.command(&["list"]).env("STRATA_PASSWORD", "another password").output().unwrap();
        assert!(other.status.success(), "{}", stderr_of(&other));
        let slots = admin.json(&["key", "list"]);
        assert_eq!(slots.as_array().unwrap().len(), 2, "{slots}");
        admin.ok(&["key", "remove", &slot]);
        let slots = admin.json(&["key", "list"]);
        assert_eq!(slots.as_array().unwrap().len(), 1, "{slots}");
        let in_use = slots[0]["id"].as_str().unwrap().to_string();
        admin.refused(&["key", "remove", &in_use, "--force"], &["last"]);
        // The server refuses it too, to a client that would not.
        let (status, body) = curl(
            &admin.token,
            &["-X", "DELETE", &server.api(&format!("/objects/keys/{in_use}"))],
        );
        assert_eq!((status, error_code(&body).as_str()), (409, "last_key"), "{body}");
        // And it takes only a key slot, and only one that decodes.
        let garbage = t.path("garbage");
        std::fs::write(&garbage, b"not a key slot").unwrap();
        let (status, body) = curl(
            &admin.token,
            &["-X", "PUT", "--data-binary", &format!("@{}", garbage.display()), &server.api(&format!("/objects/keys/{}", "ab".repeat(8)))],
        );
        assert_eq!((status, error_code(&body).as_str()), (400, "bad_request"), "{body}");
        let (status, _) = curl(
            &admin.token,
            &["-X", "PUT", "--data-binary", "x", &server.api("/objects/config.json")],
        );
        assert_eq!(status, 403);
    } else {
        admin.refused(&["key", "list"], &["not encrypted"]);
    }

    // The repository opened directly agrees with what the server said.
    server.stop();
    let local = t.json(&["stats"]);
    for field in ["restore_points", "packs", "chunks", "unique_bytes", "stored_bytes", "logical_bytes"] {
        assert_eq!(stats[field], local[field], "{field}: {stats} vs {local}");
    }
    t.ok(&["check", "--read-data"]);
}

/// A byte flipped in a stored pack: the server says the pack does not
/// hash to its name, the admin client's read of the chunks names the
/// damaged chunk and the file using it, and check exits non-zero.
#[test]
fn a_check_through_the_server_finds_a_flipped_byte() {
    if directory_only("flips a byte in a pack file the server may hold in its read cache") {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    random_tree(&src, 1, 4_000_000, 43);
    t.backup(&src, "web01");
    let packs = pack_files(&t);
    // The largest pack holds the file's data.
    let pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let len = std::fs::metadata(pack).unwrap().len();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(pack).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, len / 2).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], len / 2).unwrap();

    let server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "admin", &server.token("admin", "admin", &["*"]));
    let out = admin.run(&["check", "--read-data", "--json"]);
    assert_ne!(out.status.code(), Some(0), "a damaged repository checked clean");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("does not hash to its name"), "{report}");
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    let affected = damaged[0]["affected"].to_string();
    assert!(affected.contains("web01") && affected.contains("r0"), "{report}");
    // Without reading data, the structure is whole.
    let quick = admin.json(&["check"]);
    assert_eq!(quick["errors"].as_array().unwrap().len(), 0, "{quick}");
}

#[test]
fn a_backup_beyond_max_sessions_waits_for_a_slot_and_then_runs() {
    let t = TestRepo::new();
    let (slow, quick) = (t.path("slow"), t.path("quick"));
    random_tree(&slow, 1, 8_000_000, 31);
    random_tree(&quick, 1, 1_000_000, 32);
    let server = RepoServer::start(&t, &["--max-sessions", "1"]);
    let admin = server.client(&t, "mover", &server.token("admin", "admin", &["*"]));
    let first = admin.spawn_backup(&["--limit-upload", "2M"], &slow, "slow");
    server.wait_for_log("backup session opened");
    let second = admin.spawn_backup(&[], &quick, "quick");
    server.wait_for_log("the server is at --max-sessions");
    let (first, second) = (first.summary(), second.summary());
    let restored = t.path("restored");
    for (summary, src) in [(&first, &slow), (&second, &quick)] {
        admin.restore(summary["restore_point"].as_str().unwrap(), &restored);
        assert_same_tree(src, &under(&restored, src));
    }
}

/// A tmpfs mounted at a path for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_on_the_server_gives_the_mover_a_clear_error() {
    if directory_only("a full file system under the repository") || !is_root() {
        return;
    }
    let t = TestRepo::uninitialized();
    let _full = Tmpfs::mount(&t.repo, "12m");
    t.ok(&init_args());
    let big = t.path("big");
    random_tree(&big, 1, 30_000_000, 41);
    let mut server = RepoServer::start(&t, &[]);
    let admin = server.client(&t, "mover", &server.token("admin", "admin", &["*"]));
    let err = admin.refused(&["backup", "files", big.to_str().unwrap(), "--source", "big"], &[]);
    assert!(
        err.contains("insufficient_storage") && err.contains("No space left"),
        "{err}"
    );
    // Nothing was committed, and the server still answers.
    assert_eq!(admin.sources(), Vec::<String>::new());
    server.stop();
}
