//! Test servers: s3s-fs (a small S3-compatible server that checks
//! signatures and keeps each object as a plain file), Garage (a
//! production S3-compatible store, one node), Azurite (Microsoft's Azure
//! Blob emulator), moto (an S3 server with archive classes) and
//! fake-gcs-server (a Google Cloud Storage emulator). Each guard starts its server on free 127.0.0.1
//! ports with its data in a temporary directory, and kills and reaps it
//! when dropped, also when the test panics. `tools/setup` installs both
//! into `~/.cache/strata-tools` (or `$STRATA_TOOLS_DIR`); a test whose
//! server is not installed is skipped with a line on stderr.
//!
//! Shared by the store's tests (`crates/store/tests/servers.rs`) and the
//! command-line tests (`tests/integration/object_storage_servers.rs`),
//! which include this file by path: it depends on std, tempfile and the
//! store crate (how to reach each server: an `Access`).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_store::{Access, BucketStore, Location};

/// Where `tools/setup` installs the test servers.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("STRATA_TOOLS_DIR") {
        Some(dir) => dir.into(),
        None => {
            Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/strata-tools")
        }
    }
}

/// The installed tool at `relative` below the tools directory, or `None`
/// after a line saying the test is skipped.
pub fn installed(relative: &str, what: &str) -> Option<PathBuf> {
    let path = tools_dir().join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: {what} is not installed (tools/setup installs it)");
        None
    }
}

/// The bucket store at `url`, reached with `access`, new objects in
/// `class`, for a test that looks at objects directly.
pub fn bucket_store(url: &str, access: &Access, staging: &Path, class: Option<&str>) -> BucketStore {
    BucketStore::open(&Location::parse(url).unwrap(), access, staging, class).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `child` serves `port`, or panics with `log`'s end. The
/// port answering is not enough: a server that finds its port taken (by
/// another test's server or connection, between `free_port` and its
/// start) exits at once, and the answer came from someone else. So the
/// child must still run once the port answers and it has had a moment to
/// bind. Returns false when the child exited.
fn serving(child: &mut Option<Child>, port: u16, what: &str, log: &Path) -> bool {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let running = |child: &mut Option<Child>| matches!(child.as_mut().map(Child::try_wait), Some(Ok(None)));
    loop {
        if !running(child) {
            return false;
        }
        if started.elapsed() >= Duration::from_millis(300) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return running(child);
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`serving`], or a panic saying the server exited.
fn wait_for_port(child: &mut Option<Child>, port: u16, what: &str, log: &Path) {
    assert!(
        serving(child, port, what, log),
        "{what} exited as it started: {}",
        log_tail(log)
    );
}

/// The last lines of a server's log, for a failure message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Garage's test access key: an id and a secret imported into the node
/// (Garage's own keys are `GK` and 24 hex digits, secrets 64).
pub const GARAGE_KEY_ID: &str = "GK5374726174615465737400aa";
pub const GARAGE_SECRET: &str = "5374726174612074657374207365637265742c206e6f742061207265616c2121";
/// The region Garage answers to; requests signed for another are refused.
pub const GARAGE_REGION: &str = "garage";
/// The node's RPC secret (32 bytes in hex), shared by nobody else.
const GARAGE_RPC_SECRET: &str = "8a3b2c1d0e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819203";

/// A one-node Garage cluster with the test key, killed and reaped when
/// dropped. Its metadata and data survive [`GarageServer::kill`], so a
/// [`GarageServer::restart`] brings back the same node, layout, key and
/// buckets, as after a crash.
pub struct GarageServer {
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl GarageServer {
    /// How to reach the node with the test key and `secret`.
    pub fn access(&self, secret: &str) -> Access {
        Access {
            endpoint: Some(self.endpoint()),
            region: Some(GARAGE_REGION.into()),
            key_id: Some(GARAGE_KEY_ID.into()),
            secret: Some(secret.into()),
            ..Access::default()
        }
    }

    /// A started node with `buckets`, each readable and writable with the
    /// test key; `None` when Garage is not installed.
    pub fn start(buckets: &[&str]) -> Option<GarageServer> {
        let binary = installed("bin/garage", "Garage")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{GARAGE_RPC_SECRET}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"
"#,
            root = dir.path().display(),
            rpc = free_port(),
        );
        std::fs::write(dir.path().join("garage.toml"), config).unwrap();
        let mut server = GarageServer {
            child: None,
            binary,
            dir,
            port,
        };
        server.restart();
        // The CLI talks to the node over RPC: once it answers, give the
        // node its role in a one-node layout, then the key and buckets.
        let node = server.cli(&["node", "id", "--quiet"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        server.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        server.cli(&["layout", "apply", "--version", "1"]);
        server.cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "strata-test",
            GARAGE_KEY_ID,
            GARAGE_SECRET,
        ]);
        for bucket in buckets {
            server.create_bucket(bucket);
        }
        Some(server)
    }

    /// Starts the node (again) on its ports and data, and waits until its
    /// S3 API listens and its CLI gets answers.
    pub fn restart(&mut self) {
        let log = self.log();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(&mut self.child, self.port, "Garage", &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.command(&["status"]).output().unwrap();
            if status.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Garage does not answer: {}",
                stderr(&status)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node, as a crash or a cut network would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// A bucket the test key may read, write and own.
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            GARAGE_KEY_ID,
        ]);
    }

    /// `garage ARGS…` against this node; its stdout. A just-applied
    /// layout can take a moment to reach every table, so a failure is
    /// tried again for a few seconds before it fails the test.
    pub fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.command(args).output().unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} failed: {}\n{}",
                stderr(&out),
                log_tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args);
        cmd.env("RUST_LOG", "error");
        cmd
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a `strata` command needs to reach the node, with
    /// `secret` as the secret access key.
    pub fn env(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", GARAGE_REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", GARAGE_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// fake-gcs-server with its objects in a temporary directory (one
/// directory per bucket), killed and reaped when dropped. It takes
/// unsigned requests, as a client with `anonymous` access sends them.
pub struct GcsServer {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl GcsServer {
    /// How to reach the server: unsigned requests.
    pub fn access(&self) -> Access {
        Access {
            endpoint: Some(self.endpoint()),
            anonymous: true,
            ..Access::default()
        }
    }

    /// A started server holding the empty `buckets`; `None` when
    /// fake-gcs-server is not installed.
    pub fn start(buckets: &[&str]) -> Option<GcsServer> {
        let binary = installed("bin/fake-gcs-server", "fake-gcs-server")?;
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("buckets");
        for bucket in buckets {
            std::fs::create_dir_all(data.join(bucket)).unwrap();
        }
        let port = free_port();
        let log = root.path().join("fake-gcs-server.log");
        let child = Command::new(binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .args(["-external-url", &format!("http://127.0.0.1:{port}")])
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(&data)
            .args(["-log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = GcsServer {
            child: Some(child),
            port,
            root,
        };
        wait_for_port(&mut server.child, port, "fake-gcs-server", &log);
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a `strata` command needs to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("STRATA_GCS_ENDPOINT".to_string(), self.endpoint()),
            ("STRATA_GCS_ANONYMOUS".to_string(), "1".to_string()),
        ]
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Azurite's Blob service, killed and reaped when dropped.
pub struct AzuriteServer {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates a container with Blob's REST API, signed with the account key
/// (the store itself never creates containers). Node runs it: Azurite
/// needs Node, and Node's crypto signs without a dependency here.
const CREATE_CONTAINER_JS: &str = r#"
const [port, account, key, name] = process.argv.slice(1);
const date = new Date().toUTCString();
const version = "2021-08-06";
const toSign = `PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:${date}\nx-ms-version:${version}\n` +
  `/${account}/${account}/${name}\nrestype:container`;
const signature = require("crypto").createHmac("sha256", Buffer.from(key, "base64"))
  .update(toSign).digest("base64");
require("http").request({
  host: "127.0.0.1", port, method: "PUT", path: `/${account}/${name}?restype=container`,
  headers: { "x-ms-date": date, "x-ms-version": version, "Content-Length": 0,
             "Authorization": `SharedKey ${account}:${signature}` },
}, (res) => {
  if (res.statusCode !== 201) { console.error(`HTTP ${res.statusCode}`); process.exit(1); }
}).on("error", (e) => { console.error(e.message); process.exit(1); }).end();
"#;

impl AzuriteServer {
    /// How to reach the server as the development account, signing with
    /// `key`.
    pub fn access(&self, key: &str) -> Access {
        Access {
            endpoint: Some(self.endpoint()),
            key_id: Some(AZURITE_ACCOUNT.into()),
            secret: Some(key.into()),
            ..Access::default()
        }
    }

    /// The account's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    pub fn start() -> Option<AzuriteServer> {
        let binary = installed("azurite/node_modules/.bin/azurite-blob", "Azurite")?;
        // A free port can be taken by a server another test starts at the
        // same moment; Azurite then exits, and starts again on another.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let child = Command::new(&binary)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(dir.path())
                .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut server = AzuriteServer {
                child: Some(child),
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while server.is_running() {
                // The port answering is not enough: another server may
                // hold it.
                if answers_as_azurite(port) {
                    return Some(server);
                }
                assert!(Instant::now() < deadline, "Azurite did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("Azurite exited three times as it started");
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn create_container(&self, name: &str) {
        let out = Command::new("node")
            .args([
                "-e",
                CREATE_CONTAINER_JS,
                &self.port.to_string(),
                AZURITE_ACCOUNT,
                AZURITE_KEY,
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating container {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ENDPOINT".into(), self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT".into(), AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_KEY".into(), AZURITE_KEY.into()),
        ]
    }
}

/// Whether the server on `port` says it is Azurite (its `Server` header).
fn answers_as_azurite(port: u16) -> bool {
    answers_with(port, &format!("/{AZURITE_ACCOUNT}?comp=list"), "Azurite")
}

/// Whether a GET of `path` on `port` is answered with `needle` in the
/// answer: the server there is the one a test started, not another's.
fn answers_with(port: u16, path: &str, needle: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && String::from_utf8_lossy(&answer).contains(needle)
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// s3s-fs's test access key.
pub const S3S_KEY_ID: &str = "strata-test-key";
pub const S3S_SECRET: &str = "strata-test-secret-0123456789";

/// An s3s-fs server, killed and reaped when dropped. s3s-fs serves each
/// top directory of its data as a bucket and each object as a file below
/// it, so tests can look at (and damage) objects directly.
pub struct S3Server {
    child: Option<Child>,
    binary: PathBuf,
    pub port: u16,
    data: tempfile::TempDir,
    /// Its log, beside the data (inside, it would be a bucket).
    log: tempfile::NamedTempFile,
}

impl S3Server {
    /// How to reach the server with the test key.
    pub fn access(&self) -> Access {
        Access {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            key_id: Some(S3S_KEY_ID.into()),
            secret: Some(S3S_SECRET.into()),
            ..Access::default()
        }
    }

    /// A started server with one bucket; `None` when s3s-fs is not
    /// installed.
    pub fn start(bucket: &str) -> Option<S3Server> {
        let binary = installed("bin/s3s-fs", "s3s-fs")?;
        let data = tempfile::tempdir().unwrap();
        let mut server = S3Server {
            child: None,
            binary,
            port: free_port(),
            data,
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        server.add_bucket(bucket);
        // A port taken between `free_port` and the start: another one.
        for _ in 0..3 {
            if server.start_on_its_port() {
                return Some(server);
            }
            server.port = free_port();
        }
        panic!("s3s-fs exited three times as it started: {}", log_tail(server.log.path()));
    }

    /// Starts the server (again) on its port and data.
    pub fn restart(&mut self) {
        assert!(
            self.start_on_its_port(),
            "s3s-fs exited as it started: {}",
            log_tail(self.log.path())
        );
    }

    /// Starts the server on its port; false when it exited as it started.
    fn start_on_its_port(&mut self) -> bool {
        let log = self.log.reopen().unwrap();
        let child = Command::new(&self.binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3S_KEY_ID, "--secret-key", S3S_SECRET])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        serving(&mut self.child, self.port, "s3s-fs", self.log.path())
    }

    /// Kills the server, as a crash or a cut network would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// The directory where s3s-fs keeps the objects below `prefix` of
    /// `bucket`, one file each, as a local repository keeps them.
    pub fn objects_dir(&self, bucket: &str, prefix: &str) -> PathBuf {
        self.data.path().join(bucket).join(prefix)
    }

    /// Adds a bucket.
    pub fn add_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.data.path().join(bucket)).unwrap();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a `strata` command needs to reach the server, with
    /// `secret` (the right one, or a wrong one).
    pub fn env(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", S3S_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto's S3 server, which keeps archive classes as S3 does: a GLACIER or
/// DEEP_ARCHIVE object refuses reads (InvalidObjectState) until a
/// RestoreObject request, which it grants at once or, after
/// [`MotoServer::set_restore_time`], after some seconds in which the
/// object reports its restore as ongoing. It keeps objects in memory and
/// does not check signatures. Killed and reaped when dropped.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// Any key: moto takes every signature.
pub const MOTO_KEY_ID: &str = "strata-moto-key";
pub const MOTO_SECRET: &str = "strata-moto-secret";

impl MotoServer {
    /// How to reach the server (any key does).
    pub fn access(&self) -> Access {
        Access {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            key_id: Some(MOTO_KEY_ID.into()),
            secret: Some(MOTO_SECRET.into()),
            ..Access::default()
        }
    }

    /// A started server holding the empty `buckets`; `None` when moto is
    /// not installed.
    pub fn start(buckets: &[&str]) -> Option<MotoServer> {
        let binary = installed("moto/bin/moto_server", "moto")?;
        // As for Azurite: a port taken by another test's server at the
        // same moment makes moto exit, and it starts again on another.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let log = dir.path().join("moto.log");
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut server = MotoServer {
                child: Some(child),
                port,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(server.child.as_mut().map(Child::try_wait), Some(Ok(None))) {
                if answers_with(port, "/moto-api/data.json", "Werkzeug") {
                    for bucket in buckets {
                        server.create_bucket(bucket);
                    }
                    return Some(server);
                }
                assert!(Instant::now() < deadline, "moto did not start: {}", server.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("moto exited three times as it started");
    }

    /// Creates `bucket` with a bare CreateBucket request.
    pub fn create_bucket(&self, bucket: &str) {
        self.request("PUT", &format!("/{bucket}"), "", "200");
    }

    /// Makes restores take `seconds` (moto's state manager for restores),
    /// as S3's take hours. moto counts from the object's creation to the
    /// first look at a requested restore, which then starts it: request
    /// restores only of objects older than `seconds`.
    pub fn set_restore_time(&self, seconds: u64) {
        let body = format!(
            r#"{{"model_name": "s3::keyrestore", "transition": {{"progression": "time", "seconds": {seconds}}}}}"#
        );
        self.request("POST", "/moto-api/state-manager/set-transition", &body, "201");
    }

    /// Sends one unsigned request and checks the answer's status.
    fn request(&self, method: &str, path: &str, body: &str, status: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {}",
            answer.lines().next().unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a `strata` command needs to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), MOTO_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), MOTO_SECRET.into()),
        ]
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("moto.log"))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
