//! A data mover in the pool: registers, heartbeats, takes a task whenever
//! one of its streams is free, runs it with the [`Runner`] it is given,
//! and reports. Its tasks are leased: a heartbeat renews the leases, and
//! a task the heartbeat no longer holds (its job was cancelled, or the
//! mover was cut off long enough for the coordinator to take it back) is
//! stopped before it commits anything, so a task taken back never also
//! finishes here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::dispatch::{self, Claimed, Outcome};
use crate::error::Result;
use crate::inventory::{register_mover, MoverSpec};

/// Runs one task: a backup of its source, here or in a child process.
pub trait Runner: Send + Sync {
    /// Runs `task` to its end, or until `stop` is set (then it must stop
    /// without committing). The error says why the run failed.
    fn run(&self, task: &Claimed, stop: &AtomicBool) -> std::result::Result<Outcome, String>;
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a claimed task is the mover's without a heartbeat.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Longest wait for new work before asking again.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_secs(2),
        }
    }
}

/// A task running here: its attempt and the flag that stops it.
type Running = Arc<Mutex<HashMap<i64, (i32, Arc<AtomicBool>)>>>;

/// Runs the mover until `stop` says so; then it takes no new task and
/// waits for the ones it runs.
pub fn run(url: &str, spec: &MoverSpec, settings: &Settings, runner: Arc<dyn Runner>, stop: &dyn Fn() -> bool) -> Result<()> {
    let mut db = crate::db::open(url)?;
    let streams = register_mover(&mut db, spec)?;
    tracing::info!(mover = %spec.name, host = %spec.host, streams, "mover registered");
    db.batch_execute("LISTEN strata_tasks")
        .map_err(|source| crate::Error::Db { what: "listening for new tasks".into(), source })?;
    let claimer = dispatch::Claimer::prepare(&mut db)?;
    let running: Running = Arc::default();
    let (finished_tx, finished_rx) = std::sync::mpsc::channel::<i64>();
    let quit = Arc::new(AtomicBool::new(false));
    let beating = {
        let (url, name, settings, running, quit) =
            (url.to_string(), spec.name.clone(), settings.clone(), Arc::clone(&running), Arc::clone(&quit));
        std::thread::spawn(move || heartbeats(&url, &name, &settings, &running, &quit))
    };
    let reporter = {
        let mut db = crate::db::open(url)?;
        let reporter = dispatch::Reporter::prepare(&mut db)?;
        Arc::new(Mutex::new(ReportLine { db, reporter }))
    };
    let mut workers = Vec::new();
    let outcome = (|| -> Result<()> {
        while !stop() {
            while finished_rx.try_recv().is_ok() {}
            let busy = running.lock().expect("running lock").len();
            if busy >= usize::try_from(streams).unwrap_or(1) {
                let _ = finished_rx.recv_timeout(settings.poll);
                continue;
            }
            let free = i32::try_from(usize::try_from(streams).unwrap_or(1) - busy).unwrap_or(1);
            let claimed = claimer.claim(&mut db, &spec.name, &spec.host, &spec.datastores, settings.lease, free)?;
            if claimed.is_empty() {
                // Nothing to do now: wait for new tasks, a freed stream
                // elsewhere or the next poll.
                let _ = db.notifications().timeout_iter(settings.poll).next();
                continue;
            }
            for claimed in claimed {
                tracing::info!(task = claimed.task, source = %claimed.source, attempt = claimed.attempt, "task taken");
                let flag = Arc::new(AtomicBool::new(false));
                running
                    .lock()
                    .expect("running lock")
                    .insert(claimed.task, (claimed.attempt, Arc::clone(&flag)));
                let (runner, reporter, running, finished, mover) = (
                    Arc::clone(&runner),
                    Arc::clone(&reporter),
                    Arc::clone(&running),
                    finished_tx.clone(),
                    spec.name.clone(),
                );
                workers.push(std::thread::spawn(move || {
                    work(&*runner, &reporter, &mover, &claimed, &flag);
                    running.lock().expect("running lock").remove(&claimed.task);
                    let _ = finished.send(claimed.task);
                }));
            }
            workers.retain(|w| !w.is_finished());
        }
        Ok(())
    })();
    for worker in workers {
        let _ = worker.join();
    }
    quit.store(true, Ordering::SeqCst);
    let _ = beating.join();
    outcome
}

/// The connection the mover's tasks report on, shared by its streams.
struct ReportLine {
    db: Client,
    reporter: dispatch::Reporter,
}

/// Runs one claimed task and reports how it ended.
fn work(runner: &dyn Runner, line: &Mutex<ReportLine>, mover: &str, claimed: &Claimed, stop: &AtomicBool) {
    let _span = tracing::info_span!("task", task = claimed.task, source = %claimed.source, attempt = claimed.attempt).entered();
    let started = Instant::now();
    let result = runner.run(claimed, stop);
    let mut line = line.lock().expect("report line lock");
    let ReportLine { db, reporter } = &mut *line;
    let reported = match &result {
        _ if stop.load(Ordering::SeqCst) => dispatch::report_stopped(db, claimed).map(|_| ()),
        Ok(outcome) => reporter.done(db, mover, claimed, outcome).map(|held| {
            if !held {
                tracing::warn!("the task was taken from this mover before it reported");
            }
        }),
        Err(error) => reporter.failed(db, mover, claimed, error, dispatch::backoff(claimed.attempt)),
    };
    match (&result, reported) {
        (_, Err(e)) => tracing::error!(error = %e, "reporting the task failed; its lease will expire and it runs again"),
        (Ok(_), Ok(())) => tracing::info!(seconds = started.elapsed().as_secs_f64(), "task done"),
        (Err(error), Ok(())) => tracing::warn!(%error, "task failed"),
    }
}

/// Renews the leases every heartbeat, and stops the tasks this mover no
/// longer holds; after a lease's length without a heartbeat it stops
/// them all (the coordinator will have given them to others).
fn heartbeats(url: &str, name: &str, settings: &Settings, running: &Running, quit: &AtomicBool) {
    let mut db: Option<Client> = None;
    let mut last_ok = Instant::now();
    while !quit.load(Ordering::SeqCst) {
        // Held across the renewal: a task claimed meanwhile is either in
        // what the renewal returns or not yet among those running here,
        // never stopped for having been claimed a moment too late.
        let running = running.lock().expect("running lock");
        let beat = match db.as_mut() {
            Some(client) => dispatch::heartbeat(client, name, settings.lease),
            None => crate::db::open(url).and_then(|mut client| {
                let held = dispatch::heartbeat(&mut client, name, settings.lease);
                db = Some(client);
                held
            }),
        };
        match beat {
            Ok(held) => {
                last_ok = Instant::now();
                for (task, (attempt, flag)) in running.iter() {
                    if !held.contains(&(*task, *attempt)) && !flag.swap(true, Ordering::SeqCst) {
                        tracing::warn!(task, "the task was taken from this mover (cancelled, or its lease expired): stopping it");
                    }
                }
            }
            Err(e) => {
                db = None;
                tracing::warn!(error = %e, "heartbeat failed");
                if last_ok.elapsed() >= settings.lease {
                    for (task, (_, flag)) in running.iter() {
                        if !flag.swap(true, Ordering::SeqCst) {
                            tracing::warn!(task, "no heartbeat for a lease's length: stopping the task");
                        }
                    }
                }
            }
        }
        drop(running);
        let until = Instant::now() + settings.heartbeat;
        while Instant::now() < until && !quit.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
