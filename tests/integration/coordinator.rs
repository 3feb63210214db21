//! The coordinator and its pool of data movers, as separate processes, on
//! a real PostgreSQL started by the test (Debian's, run as the `postgres`
//! user when the suite runs as root) and a repository server: every
//! source backed up once, the datastore and host limits never exceeded at
//! any moment (checked from the recorded start and end of every run),
//! placement preferring a source's own host, a mover and the active
//! coordinator killed with kill -9 mid-run. Every process sits behind a
//! guard that kills it when dropped, also on panic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::remote::{random_tree, Client, RepoServer};
use crate::util::*;

/// A PostgreSQL server in a temporary directory, on its own port of
/// 127.0.0.1; stopped (immediately: it holds nothing to keep) when
/// dropped.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PgServer {
    /// `None` (after saying so) when PostgreSQL is not installed.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = postgres_bin() else {
            eprintln!("skipped: PostgreSQL is not installed (tools/setup installs it)");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("strata-pg").tempdir().unwrap();
        let port = free_port();
        let server = PgServer { dir, bin, port };
        if is_root() {
            // initdb refuses root: the cluster belongs to `postgres`.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let status = Command::new("chown").arg("postgres:postgres").arg(server.dir.path()).status().unwrap();
            assert!(status.success(), "chown of the PostgreSQL directory");
        }
        let data = server.data();
        server.run(&["initdb", "-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c unix_socket_directories={} -c max_connections=200",
            server.dir.path().display()
        );
        let log = server.dir.path().join("postgres.log");
        server.run(&["pg_ctl", "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"]);
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, to run as `postgres` when root.
    fn program(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&program);
            cmd
        } else {
            Command::new(&program)
        }
    }

    fn run(&self, args: &[&str]) {
        let out = self
            .program(args[0])
            .args(&args[1..]).current_dir(self.dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout_of(&out),
            stderr_of(&out)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Rows of `sql` as psql prints them unaligned (`|` between fields).
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new("psql")
            .args([&self.url(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", stderr_of(&out));
        stdout_of(&out).lines().map(str::to_string).collect()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .program("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The newest PostgreSQL's programs, as Debian installs them.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `strata` process of the pool, killed and reaped when dropped.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn start(mut cmd: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Process { child: Some(child), log }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pool's side of a test: the database, the repository server, and
/// the client whose environment (token, fingerprint, password) movers
/// inherit.
struct Pool {
    pg: PgServer,
    client: Client,
    dir: PathBuf,
}

impl Pool {
    fn strata(&self, args: &[&str]) -> Command {
        let mut cmd = self.client.command(args);
        cmd.env("STRATA_DB", self.pg.url());
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.strata(args).output().unwrap();
        assert!(out.status.success(), "strata {args:?}: {}", stderr_of(&out));
        stdout_of(&out)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn coordinator(&self, name: &str) -> Process {
        let cmd = self.strata(&["coordinator", "--mover-timeout", "3"]);
        Process::start(cmd, self.dir.join(format!("{name}.log")))
    }

    /// The first coordinator, once it has made the schema.
    fn first_coordinator(&self, name: &str) -> Process {
        let coordinator = self.coordinator(name);
        crate::remote::wait_until("the coordinator's schema", || {
            self.strata(&["source", "list"]).output().unwrap().status.success()
        });
        coordinator
    }

    /// A mover named `name` on `host`, reaching `datastores`, running
    /// `streams` tasks at once, with a lease of 5 s (heartbeat each
    /// second); its backups send at most 2 MB/s, so that tasks overlap.
    fn mover(&self, name: &str, host: &str, datastores: &[&str], streams: u32) -> Process {
        self.mover_with(name, host, datastores, streams, &[])
    }

    /// [`Pool::mover`] with more arguments (`--maintenance`).
    fn mover_with(&self, name: &str, host: &str, datastores: &[&str], streams: u32, more: &[&str]) -> Process {
        let streams = streams.to_string();
        let mut args = vec!["mover", "--name", name, "--host", host, "--streams", &streams, "--lease", "5"];
        args.extend(more);
        for ds in datastores {
            args.extend(["--datastore", ds]);
        }
        let mut cmd = self.strata(&args);
        cmd.env("XDG_CACHE_HOME", self.dir.join(format!("cache-{name}")))
            .env("STRATA_LIMIT_UPLOAD", "2M");
        Process::start(cmd, self.dir.join(format!("mover-{name}.log")))
    }

    fn add_source(&self, name: &str, path: &Path, host: &str, datastore: &str) {
        self.ok(&[
            "source",
            "add",
            name,
            "--kind",
            "files",
            "--path",
            path.to_str().unwrap(),
            "--host",
            host,
            "--datastore",
            datastore,
        ]);
    }

    /// Waits until job `id` has ended; its `job show --json`.
    fn wait_for_job(&self, id: u64, limit: Duration, logs: &[&Process]) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let shown = self.json(&["job", "show", &id.to_string()]);
            if shown["job"]["state"] != "running" {
                return shown;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
                panic!("job {id} did not end: {shown:#}\n{}", logs.join("\n----\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn start_pool(t: &TestRepo) -> Option<(Pool, RepoServer)> {
    let pg = PgServer::start()?;
    let server = RepoServer::start(t, &[]);
    let client = server.client(t, "pool", &server.token("pool", "admin", &["*"]));
    let pool = Pool {
        pg,
        client,
        dir: t.path("pool"),
    };
    std::fs::create_dir_all(&pool.dir).unwrap();
    Some((pool, server))
}

/// One run of a task: `(task, attempt, mover, host, datastore, started,
/// finished)` with times in microseconds since the epoch.
struct Run {
    source: String,
    mover: String,
    host: String,
    datastore: String,
    result: String,
    started: i64,
    finished: i64,
}

fn runs(pg: &PgServer) -> Vec<Run> {
    pg.query(
        "SELECT t.source, r.mover, t.host, t.datastore, coalesce(r.result, ''),
                (extract(epoch FROM r.started) * 1e6)::bigint,
                (extract(epoch FROM coalesce(r.finished, now())) * 1e6)::bigint
         FROM task_runs r JOIN tasks t ON t.id = r.task_id ORDER BY r.started",
    )
    .iter()
    .map(|line| {
        let f: Vec<&str> = line.split('|').collect();
        Run {
            source: f[0].into(),
            mover: f[1].into(),
            host: f[2].into(),
            datastore: f[3].into(),
            result: f[4].into(),
            started: f[5].parse().unwrap(),
            finished: f[6].parse().unwrap(),
        }
    })
    .collect()
}

/// The most runs of one key (datastore, host, mover) at any moment.
fn peak_by(runs: &[Run], key: impl Fn(&Run) -> &str) -> BTreeMap<String, usize> {
    let mut peaks = BTreeMap::new();
    for run in runs {
        // At each start, count the runs of the same key under way.
        let at = run.started;
        let under_way = runs
            .iter()
            .filter(|r| key(r) == key(run) && r.started <= at && r.finished > at)
            .count();
        let peak = peaks.entry(key(run).to_string()).or_insert(0);
        *peak = (*peak).max(under_way);
    }
    peaks
}

/// Twelve sources on five datastores of three hosts; three movers (one on
/// each of two hosts, one proxy reaching everything); limits of one task
/// per datastore and two per host. The active coordinator is killed with
/// kill -9 mid-run and its standby finishes the job.
#[test]
fn a_pool_backs_up_every_source_once_within_its_limits_across_a_coordinator_failover() {
    let t = TestRepo::new();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let mut active = pool.first_coordinator("coordinator-a");
    let standby = pool.coordinator("coordinator-b");
    let layout = [("h0", "ds0"), ("h0", "ds1"), ("h1", "ds2"), ("h1", "ds3"), ("h2", "ds4")];
    let mut names = Vec::new();
    for i in 0..12 {
        let (host, ds) = layout[i % layout.len()];
        let path = t.path(&format!("src/s{i:02}"));
        random_tree(&path, 3, 300_000, 500 + i as u64);
        let name = format!("s{i:02}");
        pool.add_source(&name, &path, host, ds);
        names.push(name);
    }
    pool.ok(&["limit", "datastore", "*", "1"]);
    pool.ok(&["limit", "host", "*", "2"]);
    let movers = [
        pool.mover("m0", "h0", &["ds0", "ds1", "ds4"], 2),
        pool.mover("m1", "h1", &["ds2", "ds3", "ds4"], 2),
        pool.mover("proxy", "h9", &["ds0", "ds1", "ds2", "ds3", "ds4"], 1),
    ];
    let mut args = vec!["backup-now"];
    args.extend(names.iter().map(String::as_str));
    let job = pool.json(&args)["job"].as_u64().unwrap();

    // Kill the active coordinator once work is under way.
    crate::remote::wait_until("a task done", || {
        pool.pg.query("SELECT count(*) FROM tasks WHERE state = 'done'")[0] != "0"
    });
    active.kill9();
    let mut logs: Vec<&Process> = movers.iter().collect();
    logs.push(&standby);
    let shown = pool.wait_for_job(job, Duration::from_secs(240), &logs);
    assert_eq!(shown["job"]["state"], "done", "{shown:#}");
    assert!(standby.log().contains("this coordinator is active"), "{}", standby.log());

    // Every source once, in the database and in the repository.
    let tasks = shown["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), names.len());
    assert!(tasks.iter().all(|t| t["state"] == "done" && t["restore_point"].is_string()), "{shown:#}");
    let listed: Vec<String> = pool.client.json(&["list"]).as_array().unwrap().iter()
        .map(|rp| rp["source"].as_str().unwrap().to_string())
        .collect();
    let listed_set: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(listed.len(), names.len(), "{listed:?}");
    assert_eq!(listed_set, names.iter().collect::<BTreeSet<_>>());

    // The limits held at every moment, and movers ran at most their
    // streams.
    let runs = runs(&pool.pg);
    assert!(runs.iter().all(|r| r.result == "done"), "a run did not end well");
    for (ds, peak) in peak_by(&runs, |r| &r.datastore) {
        assert!(peak <= 1, "datastore {ds} ran {peak} tasks at once");
    }
    for (host, peak) in peak_by(&runs, |r| &r.host) {
        assert!(peak <= 2, "host {host} ran {peak} tasks at once");
    }
    let streams = BTreeMap::from([("m0", 2), ("m1", 2), ("proxy", 1)]);
    for (mover, peak) in peak_by(&runs, |r| &r.mover) {
        assert!(peak <= streams[mover.as_str()], "mover {mover} ran {peak} tasks at once");
    }
    // Placement: a task of h0 or h1 ran elsewhere than on its host's
    // mover only while that mover had no free stream.
    for run in &runs {
        let own = match run.host.as_str() {
            "h0" => "m0",
            "h1" => "m1",
            _ => continue,
        };
        if run.mover != own {
            let busy = runs
                .iter()
                .filter(|r| r.mover == own && r.started <= run.started && r.finished > run.started)
                .count();
            assert_eq!(busy, 2, "{} of host {} ran on {} while {own} had a free stream", run.source, run.host, run.mover);
        }
    }
    let listed_movers = pool.json(&["mover", "list"]);
    assert_eq!(listed_movers.as_array().unwrap().len(), 3, "{listed_movers}");
}

/// A mover killed with kill -9 in the middle of a backup: its backup dies
/// with it, nothing of it is committed, and once its lease expires the
/// task runs on the other mover. A backup-now queued while every stream
/// is busy waits and runs.
#[test]
fn a_mover_killed_mid_task_loses_its_task_to_another_and_nothing_is_duplicated() {
    let t = TestRepo::new();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let _coordinator = pool.first_coordinator("coordinator");
    let big = t.path("big");
    random_tree(&big, 4, 5_000_000, 77);
    pool.add_source("big", &big, "h0", "ds0");
    let small = t.path("small");
    random_tree(&small, 2, 100_000, 78);
    pool.add_source("small", &small, "h1", "ds1");

    let mut first = pool.mover("first", "h0", &["ds0"], 1);
    let job = pool.json(&["backup-now", "big"])["job"].as_u64().unwrap();
    crate::remote::wait_until("the big backup running", || {
        pool.pg.query("SELECT count(*) FROM tasks WHERE state = 'running' AND mover = 'first'")[0] == "1"
    });
    // Every stream is busy: this waits in the queue (the only mover that
    // reaches ds1 is not up yet).
    let queued = pool.json(&["backup-now", "small"])["job"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    first.kill9();
    let other = pool.mover("other", "h1", &["ds0", "ds1"], 1);
    let shown = pool.wait_for_job(job, Duration::from_secs(120), &[&other]);
    assert_eq!(shown["job"]["state"], "done", "{shown:#}");
    let task = &shown["tasks"][0];
    assert_eq!(task["mover"], "other", "{shown:#}");
    assert_eq!(task["attempts"], 2, "{shown:#}");
    let results = pool.pg.query("SELECT mover || ':' || result FROM task_runs ORDER BY task_id, attempt");
    assert_eq!(results[..2], ["first:lost".to_string(), "other:done".to_string()], "{results:?}");
    let small_job = pool.wait_for_job(queued, Duration::from_secs(60), &[&other]);
    assert_eq!(small_job["job"]["state"], "done", "{small_job:#}");

    // One restore point per source, and the big one restores whole.
    let sources: Vec<String> = pool.client.json(&["list"]).as_array().unwrap().iter()
        .map(|rp| rp["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    let target = t.path("restored");
    pool.client.ok(&["restore", "files", "big@latest", "--to", target.to_str().unwrap()]);
    assert_same_tree(&big, &under(&target, &big));
    let lost = pool.json(&["mover", "list"]);
    let first_row = lost.as_array().unwrap().iter().find(|m| m["name"] == "first").unwrap();
    assert_eq!(first_row["alive"], false, "{lost}");
}

#[test]
fn a_mover_backs_up_an_nbd_source_and_the_source_must_be_a_uri() {
    let t = TestRepo::new();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let _coordinator = pool.first_coordinator("coordinator");
    let image = crate::nbd::qcow2_with_ext4(t.dir.path(), "kvm01");
    let (_nbd, uri) = crate::nbd::qemu_nbd(t.dir.path(), &image, "qcow2", &["--read-only"]);
    let refused = pool.strata(&["source", "add", "kvm01", "--kind", "nbd", "--path", "/dev/nbd0", "--host", "h0", "--datastore", "ds0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(stderr_of(&refused).contains("is not an NBD URI"), "{}", stderr_of(&refused));
    pool.ok(&["source", "add", "kvm01", "--kind", "nbd", "--path", &uri, "--host", "h0", "--datastore", "ds0"]);
    let mover = pool.mover("m0", "h0", &["ds0"], 1);
    let job = pool.json(&["backup-now", "kvm01"])["job"].as_u64().unwrap();
    let shown = pool.wait_for_job(job, Duration::from_secs(120), &[&mover]);
    assert_eq!(shown["job"]["state"], "done", "{shown:#}");

    let raw = t.path("restored.raw");
    pool.client.ok(&["restore", "disk", "kvm01@latest", "disk", "--raw-to", raw.to_str().unwrap()]);
    let source = t.path("source.raw");
    crate::vm::qemu_img(&["convert", "-U", "-f", "qcow2", "-O", "raw", image.to_str().unwrap(), source.to_str().unwrap()]);
    assert!(std::fs::read(&raw).unwrap() == std::fs::read(&source).unwrap());
}

/// A six-field schedule naming one second `seconds` from now.
fn once_in(seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    format!("{} {} {} {} {} *", at.second(), at.minute(), at.hour(), at.day(), u8::from(at.month()))
}

/// A policy's run on its schedule: the source a mover reaches is backed
/// up; one whose path the mover cannot see and one no mover reaches are
/// skipped when their window closes, each with why, and the daily report
/// says so. A restore submitted as a task waits for a mover on its host
/// and runs when one registers.
#[test]
fn a_policy_runs_on_schedule_skips_what_cannot_start_and_restores_run_as_tasks() {
    let t = TestRepo::new();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let _coordinator = pool.first_coordinator("coordinator");
    let web = t.path("web01");
    random_tree(&web, 3, 200_000, 81);
    pool.add_source("web01", &web, "h0", "ds0");
    pool.add_source("gone", &t.path("not-there"), "h0", "ds0");
    pool.add_source("orphan", &t.path("elsewhere"), "h5", "ds9");
    let _mover = pool.mover("m0", "h0", &["ds0"], 2);
    pool.ok(&["policy", "add", "nightly", "--schedule", &once_in(3), "--sources", "*", "--window", "8s", "--priority", "5"]);
    let listed = pool.json(&["policy", "list"]);
    assert_eq!(listed[0]["name"], "nightly", "{listed}");

    crate::remote::wait_until("the scheduled job", || !pool.pg.query("SELECT id FROM jobs WHERE kind = 'scheduled'").is_empty());
    let job: u64 = pool.pg.query("SELECT id FROM jobs WHERE kind = 'scheduled'")[0].parse().unwrap();
    let shown = pool.wait_for_job(job, Duration::from_secs(60), &[&_mover]);
    let task = |source: &str| shown["tasks"].as_array().unwrap().iter().find(|t| t["source"] == source).unwrap().clone();
    assert_eq!(task("web01")["state"], "done", "{shown:#}");
    let gone = task("gone");
    assert_eq!(gone["state"], "skipped", "{shown:#}");
    assert!(gone["error"].as_str().unwrap().contains("not reachable"), "{shown:#}");
    let orphan = task("orphan");
    assert_eq!(orphan["state"], "skipped", "{shown:#}");
    assert!(orphan["error"].as_str().unwrap().contains("no live mover reaches host h5"), "{shown:#}");

    let report = pool.json(&["report"]);
    assert_eq!(report["succeeded"], 1, "{report:#}");
    assert_eq!(report["skipped"], 2, "{report:#}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report:#}");
    assert!(report["bytes_read"].as_u64().unwrap() >= 600_000, "{report:#}");
    let text = pool.ok(&["report"]);
    assert!(text.contains("1 tasks succeeded") && text.contains("no live mover reaches"), "{text}");

    // A restore for a host no mover is on waits, then runs on the mover
    // that registers there.
    let rp = task("web01")["restore_point"].as_str().unwrap().to_string();
    let target = t.path("restored");
    let restore = pool.json(&["job", "restore", &rp, "--to", target.to_str().unwrap(), "--host", "h7"])["job"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let waiting = pool.json(&["job", "show", &restore.to_string()]);
    assert_eq!(waiting["tasks"][0]["state"], "queued", "{waiting:#}");
    let late = pool.mover("m7", "h7", &[], 1);
    let restored = pool.wait_for_job(restore, Duration::from_secs(60), &[&late]);
    assert_eq!(restored["job"]["state"], "done", "{restored:#}");
    assert_eq!(restored["tasks"][0]["mover"], "m7", "{restored:#}");
    assert_same_tree(&web, &under(&target, &web));
}

/// A policy's retention and tiering after its run: its sources' restore
/// points the keep rules do not keep are forgotten and pruned, those
/// older than its tiering age go cold, and another source's restore
/// points, old as they are, are left alone. Only a mover started with
/// `--maintenance` runs it, and the job ends after it.
#[test]
fn a_policy_forgets_prunes_and_tiers_its_own_sources_after_each_run() {
    let t = TestRepo::with_cold();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let _coordinator = pool.first_coordinator("coordinator");
    let days_ago = |days: i64| {
        (time::OffsetDateTime::now_utc() - time::Duration::days(days))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let backup = |tree: &Path, source: &str, days: i64| -> String {
        pool.json(&["backup", "files", tree.to_str().unwrap(), "--source", source, "--time", &days_ago(days)])
            ["restore_point"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (oldest, old, web, other) = (t.path("oldest"), t.path("old"), t.path("web01"), t.path("other"));
    random_tree(&oldest, 2, 400_000, 91);
    random_tree(&old, 2, 400_000, 92);
    random_tree(&web, 2, 400_000, 93);
    random_tree(&other, 2, 400_000, 94);
    let forgotten = backup(&oldest, "web01", 200);
    let cold = backup(&old, "web01", 150);
    let recent = backup(&web, "web01", 10);
    let untouched = backup(&other, "db01", 200);
    pool.add_source("web01", &web, "h0", "ds0");
    pool.add_source("db01", &other, "h0", "ds0");

    // A mover without --maintenance backs up but never maintains.
    let _mover = pool.mover("m0", "h0", &["ds0"], 1);
    pool.ok(&[
        "policy", "add", "web", "--schedule", &once_in(3), "--sources", "web*", "--window", "60s",
        "--keep-last", "3", "--tier-after", "90d",
    ]);
    let listed = pool.ok(&["policy", "list"]);
    assert!(listed.contains("keep last 3") && listed.contains("tier after 90 days"), "{listed}");
    crate::remote::wait_until("the scheduled job", || {
        !pool.pg.query("SELECT id FROM tasks WHERE kind = 'maintenance'").is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pool.pg.query("SELECT state FROM tasks WHERE kind = 'maintenance'"),
        ["queued"],
        "only a maintenance mover may take it"
    );
    let job: u64 = pool.pg.query("SELECT id FROM jobs WHERE kind = 'scheduled'")[0].parse().unwrap();
    let maintainer = pool.mover_with("admin", "h9", &[], 1, &["--maintenance"]);
    let shown = pool.wait_for_job(job, Duration::from_secs(120), &[&_mover, &maintainer]);
    assert_eq!(shown["job"]["state"], "done", "{shown:#}");
    let tasks = shown["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "the backup of web01 and the maintenance: {shown:#}");
    assert!(tasks.iter().all(|t| t["state"] == "done"), "{shown:#}");
    let newest = tasks.iter().find_map(|t| t["restore_point"].as_str()).unwrap().to_string();

    let listed: BTreeSet<String> = pool.json(&["list"]).as_array().unwrap().iter().map(|rp| rp["id"].as_str().unwrap().to_string()).collect();
    assert!(!listed.contains(&forgotten), "the fourth newest of web01 stays: {listed:?}");
    for kept in [&cold, &recent, &newest, &untouched] {
        assert!(listed.contains(kept), "{kept} is gone: {listed:?}");
    }
    // Pruned: the forgotten restore point's data is gone from the
    // repository; a check finds everything else whole.
    pool.ok(&["check"]);
    // Tiered: web01's 150-day-old restore point is cold, db01's
    // 200-day-old one (not the policy's) is warm and restores at once.
    let status = pool.json(&["tier", "status"]);
    assert!(status["cold_packs"].as_u64().unwrap() >= 1, "{status:#}");
    let out = pool.strata(&["restore", "files", &cold, "--to", t.path("r-cold").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success() && stderr_of(&out).contains("strata thaw"), "{}", stderr_of(&out));
    let restored = t.path("r-other");
    pool.ok(&["restore", "files", &untouched, "--to", restored.to_str().unwrap()]);
    assert_same_tree(&other, &under(&restored, &other));
}

/// A VM folder in VMware's layout: `NAME.vmx` and one small
/// monolithicFlat disk, its descriptor adapted from `template` (one qemu-img
/// made for the test).
fn small_vm(dir: &Path, name: &str, template: &str, seed: u64) -> PathBuf {
    use rand::{RngCore, SeedableRng};
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let mut data = vec![0u8; 64 << 10];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data[..16 << 10]);
    std::fs::write(folder.join(format!("{name}-flat.vmdk")), &data).unwrap();
    std::fs::write(folder.join(format!("{name}.vmdk")), template.replace("TEMPLATE", name)).unwrap();
    std::fs::write(
        folder.join(format!("{name}.vmx")),
        format!("displayName = \"{name}\"\nguestOS = \"ubuntu-64\"\nscsi0:0.fileName = \"{name}.vmdk\"\n"),
    )
    .unwrap();
    folder
}

/// The estate of the issue: 1,000 small VMs on 20 datastores across 10
/// hosts, six movers of different sizes and reach as real processes, one
/// policy. One mover and the active coordinator are killed with kill -9
/// mid-run. Every VM is backed up exactly once, and no datastore or host
/// ever ran more than its limit.
#[test]
fn an_estate_of_a_thousand_vms_is_backed_up_once_each_through_a_mover_and_a_coordinator_dying() {
    let t = TestRepo::new();
    let Some((pool, _server)) = start_pool(&t) else {
        return;
    };
    let mut active = pool.first_coordinator("coordinator-a");
    let standby = pool.coordinator("coordinator-b");
    let raw = t.path("template.raw");
    std::fs::write(&raw, vec![0u8; 64 << 10]).unwrap();
    crate::vm::convert(&raw, "monolithicFlat", &t.path("TEMPLATE.vmdk"));
    let template = std::fs::read_to_string(t.path("TEMPLATE.vmdk")).unwrap();
    let mut sql = String::from("INSERT INTO sources (name, kind, path, host, datastore, size_hint, priority) VALUES ");
    for i in 0..1000 {
        let name = format!("vm{i:04}");
        let (ds, host) = (i % 20, (i % 20) / 2);
        let folder = small_vm(&t.path("vmfs"), &name, &template, i as u64);
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("('{name}', 'vm', '{}', 'esx{host}', 'ds{ds}', {}, 0)", folder.display(), 65_536 + i));
    }
    pool.pg.query(&sql);
    // Six movers: two on hosts of their own with their datastores, four
    // proxies of different sizes, each reaching half of the datastores.
    let all: Vec<String> = (0..20).map(|d| format!("ds{d}")).collect();
    let half = |odd: usize| -> Vec<&str> { all.iter().skip(odd).step_by(2).map(String::as_str).collect() };
    let mut movers = [
        pool.mover("esx0-mover", "esx0", &["ds0", "ds1"], 2),
        pool.mover("esx1-mover", "esx1", &["ds2", "ds3"], 2),
        pool.mover("proxy-a", "proxy-a", &half(0), 4),
        pool.mover("proxy-b", "proxy-b", &half(1), 4),
        pool.mover("proxy-c", "proxy-c", &half(0), 2),
        pool.mover("proxy-d", "proxy-d", &half(1), 3),
    ];
    pool.ok(&["policy", "add", "estate", "--schedule", &once_in(2), "--sources", "vm*", "--window", "2h"]);
    crate::remote::wait_until("the scheduled job", || !pool.pg.query("SELECT id FROM jobs WHERE kind = 'scheduled'").is_empty());
    let job: u64 = pool.pg.query("SELECT id FROM jobs WHERE kind = 'scheduled'")[0].parse().unwrap();

    crate::remote::wait_until("a quarter of the estate", || {
        pool.pg.query("SELECT count(*) FROM tasks WHERE state = 'done'")[0].parse::<u32>().unwrap() >= 250
    });
    movers[2].kill9();
    active.kill9();
    let logs: Vec<&Process> = movers.iter().chain([&standby]).collect();
    let shown = pool.wait_for_job(job, Duration::from_secs(900), &logs);
    assert_eq!(shown["job"]["state"], "done", "{}", shown["job"]);

    // Exactly once, from the database and from the repository.
    let done = pool.pg.query("SELECT count(*), count(DISTINCT source) FROM tasks WHERE state = 'done'");
    assert_eq!(done, ["1000|1000"]);
    let listed = pool.client.json(&["list"]);
    let sources: BTreeSet<&str> = listed.as_array().unwrap().iter().map(|rp| rp["source"].as_str().unwrap()).collect();
    assert_eq!((listed.as_array().unwrap().len(), sources.len()), (1000, 1000));
    let runs = runs(&pool.pg);
    for (ds, peak) in peak_by(&runs, |r| &r.datastore) {
        assert!(peak <= 1, "datastore {ds} ran {peak} tasks at once");
    }
    for (host, peak) in peak_by(&runs, |r| &r.host) {
        assert!(peak <= 2, "host {host} ran {peak} tasks at once");
    }
    let lost = runs.iter().filter(|r| r.result == "lost").count();
    assert!(lost <= 4, "{lost} runs lost: only the killed mover's may be");
    assert!(runs.iter().filter(|r| r.result == "lost").all(|r| r.mover == "proxy-a"));
}
