//! The coordinator and its data movers on PostgreSQL (`strata
//! coordinator`, `mover`, `source`, `backup-now`, `job`, `limit`). A mover
//! runs each task as a `strata backup …` child process of itself, with
//! its own environment (token, fingerprint, password) and `--repo`, so a
//! task taken from it is stopped by a signal, never half-committed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use strata::cancel::CancelToken;
use strata::coordinator::dispatch::{Claimed, Outcome};
use strata::coordinator::{coordinator, db, inventory, mover, policy, queue, report};

use super::args::{CoordinatorArgs, DbArg, DbListArgs, JobCommand, MoverArgs, MoverCommand, PolicyCommand, SourceCommand};
use super::render::{human_bytes, print_json};
use super::Status;

pub fn coordinator(args: CoordinatorArgs, cancel: &CancelToken) -> Result<Status> {
    let settings = coordinator::Settings {
        mover_timeout: Duration::from_secs(args.mover_timeout),
        ..Default::default()
    };
    match coordinator::run(&args.db.url, &settings, &|| cancel.is_cancelled()) {
        Err(strata::coordinator::Error::Interrupted(_)) => Ok(Status::Ok),
        outcome => {
            outcome?;
            Ok(Status::Ok)
        }
    }
}

pub fn mover(args: MoverArgs, repo: Result<PathBuf>, cancel: &CancelToken) -> Result<Status> {
    if let Some(MoverCommand::List(DbListArgs { db, json })) = args.command {
        let movers = inventory::movers(&mut db::open(&db.url)?)?;
        if json.json {
            print_json(&serde_json::to_value(&movers)?)?;
        } else {
            for m in movers {
                out!(
                    "{} on {}: {}/{} streams in use, {} cores, {} MiB, datastores [{}], last heartbeat {}{}",
                    m.name,
                    m.host,
                    m.streams_in_use,
                    m.streams,
                    m.cores,
                    m.memory_mib,
                    m.datastores.join(", "),
                    m.last_heartbeat,
                    if m.alive { "" } else { " (lost)" }
                );
            }
        }
        return Ok(Status::Ok);
    }
    let run = args.run;
    let url = run.db.context("strata mover needs the coordinator's database: --db URL or STRATA_DB")?;
    let repo = repo?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let spec = inventory::MoverSpec {
        name: run.name.unwrap_or_else(|| hostname.clone()),
        host: run.host.unwrap_or(hostname),
        cores: run.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| i32::try_from(n.get()).unwrap_or(i32::MAX))
        }),
        memory_mib: run.memory_mib.unwrap_or_else(memory_mib),
        streams: run.streams,
        datastores: run.datastores,
        transports: vec!["direct".into()],
        maintenance: run.maintenance,
    };
    let lease = Duration::from_secs(run.lease);
    let settings = mover::Settings {
        lease,
        heartbeat: lease / 5,
        poll: Duration::from_secs(1),
    };
    let runner = Arc::new(ChildTask {
        strata: std::env::current_exe().context("finding this program to run backups with")?,
        repo,
    });
    mover::run(&url, &spec, &settings, runner, &|| cancel.is_cancelled())?;
    Ok(Status::Ok)
}

/// This machine's memory, in MiB.
fn memory_mib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(1024, |kib| kib / 1024)
}

/// Runs a task as a child `strata --repo REPO … --json`: `backup`,
/// `restore`, or a policy's maintenance (`forget`, `prune`, `tier run`).
struct ChildTask {
    strata: PathBuf,
    repo: PathBuf,
}

/// How long a stopped child gets to end by itself before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl ChildTask {
    /// `strata --repo REPO ARGS… --json`, stopped when the mover dies.
    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(&self.strata);
        cmd.arg("--repo").arg(&self.repo).args(args);
        cmd.arg("--json").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // A mover killed outright stops its backups (SIGTERM: a backup
        // then ends its server session, so that its chunk claims do not
        // hold back the next attempt, and commits nothing): one left
        // running could commit a task the coordinator gives to another
        // mover. (The signal comes when the thread that started the
        // child ends, and that thread waits for the child.) A backup
        // already committing when the signal comes finishes within
        // moments, long before the lease expires and the task runs
        // again; the next attempt then finds its restore point by its
        // tag and reports it instead of backing up again.
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent.
        let parent = std::process::id();
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The mover died before the signal was armed.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("the mover ended"));
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `cmd` to its end (or until `stop`) and reads its JSON summary.
    fn run_child(&self, mut cmd: Command, what: &str, stop: &AtomicBool) -> std::result::Result<serde_json::Value, String> {
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.strata.display()))?;
        let output = wait_or_stop(&mut child, stop)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            return Err(format!("{what} failed ({}): {last}", output.status));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| format!("{what} said something unreadable: {e}"))
    }

    /// The restore point an earlier attempt of `task` committed, if any:
    /// its mover may have died between committing and reporting.
    fn committed_before(&self, task: &Claimed) -> std::result::Result<Option<String>, String> {
        // Nothing stops a listing: it is quick.
        let listed = self.run_child(self.command(["list"]), "listing restore points", &AtomicBool::new(false))?;
        let tag = serde_json::Value::String(task_tag(task));
        Ok(listed.as_array().into_iter().flatten().find_map(|rp| {
            rp["tags"]
                .as_array()
                .is_some_and(|tags| tags.contains(&tag))
                .then(|| rp["id"].as_str().map(str::to_string))
                .flatten()
        }))
    }

    /// A backup or a restore.
    fn transfer(&self, task: &Claimed, stop: &AtomicBool) -> std::result::Result<Outcome, String> {
        if task.attempt > 1 && !task.kind.starts_with("restore-") {
            if let Some(restore_point) = self.committed_before(task)? {
                tracing::info!(%restore_point, "an earlier attempt of the task committed it");
                return Ok(Outcome {
                    restore_point: Some(restore_point),
                    ..Outcome::default()
                });
            }
        }
        let needed = match task.kind.as_str() {
            // A restore makes its target; its parent must be here.
            "restore-files" | "restore-vm" => Path::new(&task.path).parent().unwrap_or(Path::new("/")),
            // An export is reached by connecting to it, which the backup does.
            "nbd" => Path::new("/"),
            _ => Path::new(&task.path),
        };
        if !needed.exists() {
            return Err(format!("{}: {} is not reachable from this mover", task.source, needed.display()));
        }
        let tag = task_tag(task);
        let (path, source) = (task.path.as_str(), task.source.as_str());
        let cmd = match task.kind.as_str() {
            "files" => self.command(["backup", "files", path, "--source", source, "--tag", &tag]),
            "vm" => self.command(["backup", "vm", path, "--tag", &tag]),
            "image" => self.command(["backup", "image", path, "--name", source, "--tag", &tag]),
            "nbd" => self.command(["backup", "nbd", path, "--name", source, "--tag", &tag]),
            "restore-files" => self.command(["restore", "files", source, "--to", path]),
            "restore-vm" => self.command(["restore", "vm", source, "--to", path]),
            other => return Err(format!("task of kind {other:?} for {source}: this mover cannot run it")),
        };
        let what = if task.kind.starts_with("restore-") { "the restore of " } else { "the backup of " };
        let summary = self.run_child(cmd, &format!("{what}{source}"), stop)?;
        let number = |field: &str| summary[field].as_u64().and_then(|n| i64::try_from(n).ok());
        Ok(Outcome {
            restore_point: summary["restore_point"].as_str().map(str::to_string),
            bytes_read: number("bytes_read"),
            bytes_new: number("bytes_new"),
            bytes_stored: number("bytes_stored"),
            recorded_source: summary["source"].as_str().map(str::to_string),
        })
    }

    /// A policy's retention (forget what its keep rules do not keep, then
    /// prune) and tiering, over its sources' restore points only.
    fn maintain(&self, task: &Claimed, stop: &AtomicBool) -> std::result::Result<Outcome, String> {
        let args = task.maintenance()?;
        let _span = tracing::info_span!("maintenance", policy = %args.policy).entered();
        if args.sources.is_empty() {
            tracing::info!("none of the policy's sources has a restore point yet");
            return Ok(Outcome::default());
        }
        let sources: Vec<String> = args.sources.iter().flat_map(|s| ["--source".to_string(), s.clone()]).collect();
        let keep = args.keep();
        if !keep.keeps_everything() {
            let mut forget = vec!["forget".to_string()];
            forget.extend(sources.iter().cloned());
            forget.extend(keep.rules().iter().flat_map(|(rule, n)| [format!("--keep-{rule}"), n.to_string()]));
            let decisions = self.run_child(self.command(&forget), &format!("the retention of policy {}", args.policy), stop)?;
            let removed = decisions.as_array().map_or(0, |d| d.iter().filter(|d| d["keep"] == false).count());
            tracing::info!(removed, "retention applied");
            let pruned = self.run_child(self.command(["prune"]), &format!("the prune after policy {}", args.policy), stop)?;
            tracing::info!(summary = %pruned, "pruned");
        }
        if let Some(days) = args.tier_after_days {
            let mut tier = vec!["tier".to_string(), "run".into(), "--warm-days".into(), days.to_string()];
            tier.extend(sources);
            let report = self.run_child(self.command(&tier), &format!("the tiering of policy {}", args.policy), stop)?;
            tracing::info!(summary = %report, "tiered");
        }
        Ok(Outcome::default())
    }
}

/// The tag a task's restore point carries: a later attempt of the task
/// finds an earlier one's commit by it.
fn task_tag(task: &Claimed) -> String {
    format!("strata-task-{}", task.task)
}

impl mover::Runner for ChildTask {
    fn run(&self, task: &Claimed, stop: &AtomicBool) -> std::result::Result<Outcome, String> {
        if task.kind == "maintenance" {
            self.maintain(task, stop)
        } else {
            self.transfer(task, stop)
        }
    }
}

/// Waits for `child`; if `stop` is set first, SIGTERM (a backup then ends
/// without committing), and SIGKILL after [`STOP_GRACE`].
fn wait_or_stop(child: &mut Child, stop: &AtomicBool) -> std::result::Result<std::process::Output, String> {
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let mut stopped_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the backup: {e}")),
        }
        if stop.load(Ordering::SeqCst) {
            match stopped_at {
                None => {
                    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    stopped_at = Some(Instant::now());
                }
                Some(at) if at.elapsed() > STOP_GRACE => {
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if stopped_at.is_some() {
        return Err("stopped: the task was taken from this mover".into());
    }
    Ok(output)
}

/// Reads a child's pipe to its end on a thread of its own (two pipes
/// read one after the other could fill and block the child).
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

pub fn source(command: SourceCommand) -> Result<Status> {
    match command {
        SourceCommand::Add {
            name,
            kind,
            path,
            host,
            datastore,
            priority,
            size_hint,
            db,
        } => {
            let source = inventory::Source {
                name,
                kind,
                path,
                host,
                datastore,
                size_hint,
                priority,
            };
            inventory::add_source(&mut db::open(&db.url)?, &source)?;
            out!("source {} added", source.name);
        }
        SourceCommand::List(DbListArgs { db, json }) => {
            let sources = inventory::sources(&mut db::open(&db.url)?)?;
            if json.json {
                print_json(&serde_json::to_value(&sources)?)?;
            } else {
                for s in sources {
                    out!(
                        "{} ({}) {} on host {}, datastore {}, priority {}",
                        s.name,
                        s.kind,
                        s.path,
                        s.host,
                        s.datastore,
                        s.priority
                    );
                }
            }
        }
    }
    Ok(Status::Ok)
}

pub fn backup_now(db: &DbArg, sources: &[String], as_json: bool) -> Result<Status> {
    let job = queue::backup_now(&mut db::open(&db.url)?, sources)?;
    if as_json {
        print_json(&serde_json::json!({ "job": job, "tasks": sources.len() }))?;
    } else {
        out!("job {job} queued: {} tasks", sources.len());
    }
    Ok(Status::Ok)
}

pub fn job(command: JobCommand) -> Result<Status> {
    match command {
        JobCommand::List(DbListArgs { db, json }) => {
            let jobs = queue::jobs(&mut db::open(&db.url)?)?;
            if json.json {
                print_json(&serde_json::to_value(&jobs)?)?;
            } else {
                for j in jobs {
                    out!(
                        "job {} ({}) {}: {} tasks, {} queued, {} running, {} done, {} failed, {} skipped, {} cancelled",
                        j.id,
                        j.kind,
                        j.state,
                        j.tasks,
                        j.queued,
                        j.running,
                        j.done,
                        j.failed,
                        j.skipped,
                        j.cancelled
                    );
                }
            }
        }
        JobCommand::Show { id, db, json } => {
            let (job, tasks) = queue::job(&mut db::open(&db.url)?, id)?;
            if json.json {
                print_json(&serde_json::json!({ "job": job, "tasks": tasks }))?;
            } else {
                out!("job {} ({}) {}, created {}", job.id, job.kind, job.state, job.created);
                for t in tasks {
                    out!(
                        "  task {} {}: {} after {} attempts on {}{}{}",
                        t.id,
                        t.source,
                        t.state,
                        t.attempts,
                        t.mover.as_deref().unwrap_or("-"),
                        t.restore_point.map(|rp| format!(", restore point {rp}")).unwrap_or_default(),
                        t.error.map(|e| format!(": {e}")).unwrap_or_default()
                    );
                }
            }
        }
        JobCommand::Restore {
            restore_point,
            to,
            host,
            datastore,
            vm,
            db,
            json,
        } => {
            let job = queue::restore(&mut db::open(&db.url)?, &restore_point, vm, &to, &host, datastore.as_deref())?;
            if json.json {
                print_json(&serde_json::json!({ "job": job }))?;
            } else {
                out!("job {job} queued: restore {restore_point} to {to} on {host}");
            }
        }
        JobCommand::Cancel { id, db } => {
            let cancelled = queue::cancel(&mut db::open(&db.url)?, id)?;
            out!("job {id} cancelled: {cancelled} tasks stopped or never started");
        }
    }
    Ok(Status::Ok)
}

pub fn limit(db: &DbArg, scope: &str, name: &str, max_tasks: i32) -> Result<Status> {
    inventory::set_limit(&mut db::open(&db.url)?, scope, name, max_tasks)?;
    out!("at most {max_tasks} running tasks per {scope} {name}");
    Ok(Status::Ok)
}

pub fn policy(command: PolicyCommand) -> Result<Status> {
    match command {
        PolicyCommand::Add {
            name,
            schedule,
            sources,
            priority,
            window,
            keep,
            tier_after,
            db,
        } => {
            let policy = policy::Policy {
                name,
                schedule,
                sources,
                priority,
                window_secs: window,
                keep: policy::Keep {
                    last: keep.keep_last,
                    hourly: keep.keep_hourly,
                    daily: keep.keep_daily,
                    weekly: keep.keep_weekly,
                    monthly: keep.keep_monthly,
                    yearly: keep.keep_yearly,
                },
                tier_after_days: tier_after,
            };
            let next = policy::add(&mut db::open(&db.url)?, &policy)?;
            out!("policy {} added; it runs next at {next}", policy.name);
        }
        PolicyCommand::List(DbListArgs { db, json }) => {
            let policies = policy::list(&mut db::open(&db.url)?)?;
            if json.json {
                print_json(&serde_json::to_value(&policies)?)?;
            } else {
                for p in policies {
                    let keep = p
                        .policy
                        .keep
                        .rules()
                        .iter()
                        .filter(|(_, n)| *n > 0)
                    .map(|(rule, n)| format!(" {rule} {n}"))
                    .collect::<String>();
                    out!(
                        "{}: \"{}\" sources {} priority {} window {} s, keep{}, tier {}, next run {}",
                        p.policy.name,
                        p.policy.schedule,
                        p.policy.sources,
                        p.policy.priority,
                        p.policy.window_secs,
                        if keep.is_empty() { " everything".to_string() } else { keep },
                        p.policy.tier_after_days.map_or("never".to_string(), |d| format!("after {d} days")),
                        p.next_run
                    );
                }
            }
        }
        PolicyCommand::Remove { name, db } => {
            policy::remove(&mut db::open(&db.url)?, &name)?;
            out!("policy {name} removed");
        }
    }
    Ok(Status::Ok)
}

pub fn report(db: &DbArg, day: Option<String>, as_json: bool) -> Result<Status> {
    let day = day.unwrap_or_else(|| {
        let now = time::OffsetDateTime::now_utc();
        format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day())
    });
    let report = report::daily(&mut db::open(&db.url)?, &day)?;
    if as_json {
        print_json(&serde_json::to_value(&report)?)?;
        return Ok(Status::Ok);
    }
    out!(
        "{}: {} jobs; {} tasks succeeded, {} failed, {} skipped, {} cancelled",
        report.day,
        report.jobs,
        report.succeeded,
        report.failed,
        report.skipped,
        report.cancelled
    );
    out!(
        "read {}, new {}, stored {}",
        human_bytes(u64::try_from(report.bytes_read).unwrap_or(0)),
        human_bytes(u64::try_from(report.bytes_new).unwrap_or(0)),
        human_bytes(u64::try_from(report.bytes_stored).unwrap_or(0))
    );
    for p in &report.problems {
        out!(
            "  {} task {} (job {}) {}{}: {}",
            p.state,
            p.task,
            p.job,
            p.source,
            p.mover.as_deref().map(|m| format!(" on {m}")).unwrap_or_default(),
            p.reason
        );
    }
    Ok(Status::Ok)
}
