//! The coordinator: one active at a time (it holds a session advisory
//! lock, which PostgreSQL releases when its connection dies, so a standby
//! waiting for it takes over), migrating the schema at start and then,
//! every tick:
//! - starting a job for each policy whose time has come, and skipping
//!   (with the reason) the queued tasks whose window has closed;
//! - marking movers whose heartbeat is older than the timeout lost;
//! - putting the tasks whose lease expired (their mover died or lost the
//!   network) back in the queue, or failing them after their last attempt;
//! - adding to each scheduled job whose backups have ended its policy's
//!   maintenance task (retention and tiering);
//! - ending jobs whose every task has ended.
//!
//! All of its state is in the database: a restarted coordinator picks up
//! where the last one stopped.

use std::time::Duration;

use postgres::Client;

use crate::error::{DbContext, Error, Result};

/// Key of the advisory lock the active coordinator holds.
const LEADER_LOCK: i64 = 0x5354_5241_5441_0003;

#[derive(Debug, Clone)]
pub struct Settings {
    /// A mover not heard from for this long is lost.
    pub mover_timeout: Duration,
    pub tick: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mover_timeout: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}

/// What one tick did.
#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    pub jobs_started: u64,
    pub tasks_skipped: u64,
    pub movers_lost: u64,
    pub tasks_requeued: u64,
    pub tasks_failed: u64,
    pub maintenance_queued: u64,
    pub jobs_finished: u64,
}

/// Waits until this coordinator is the active one (`stop` ends the wait).
pub fn become_leader(db: &mut Client, stop: &dyn Fn() -> bool) -> Result<()> {
    let mut said = false;
    loop {
        let got: bool = db
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .doing(|| "asking to be the active coordinator".into())?
            .get(0);
        if got {
            return Ok(());
        }
        if !said {
            tracing::info!("another coordinator is active; standing by");
            said = true;
        }
        if stop() {
            return Err(Error::Interrupted("stopped while standing by".into()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn tick(db: &mut Client, settings: &Settings) -> Result<Tick> {
    let mut tx = db.transaction().doing(|| "a coordinator tick".into())?;
    let timeout = settings.mover_timeout.as_secs_f64();
    let lost = tx
        .query(
            "UPDATE movers SET alive = false
             WHERE alive AND last_heartbeat < now() - make_interval(secs => $1) RETURNING name",
            &[&timeout],
        )
        .doing(|| "marking silent movers lost".into())?;
    for row in &lost {
        tracing::warn!(mover = row.get::<_, String>(0), "mover lost: no heartbeat");
    }
    let expired = tx
        .query(
            "UPDATE tasks SET
                 state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                 finished = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END,
                 error = 'its mover ' || mover || ' stopped answering',
                 mover = NULL, lease_until = NULL
             WHERE state = 'running' AND lease_until < now()
             RETURNING id, attempts, state",
            &[],
        )
        .doing(|| "taking back expired leases".into())?;
    let mut result = Tick {
        movers_lost: lost.len() as u64,
        ..Tick::default()
    };
    result.jobs_started = crate::policy::start_due(&mut tx)?.len() as u64;
    result.tasks_skipped = crate::policy::skip_expired(&mut tx)?;
    for row in &expired {
        let (task, attempt, state): (i64, i32, String) = (row.get(0), row.get(1), row.get(2));
        tx.execute(
            "UPDATE task_runs SET finished = clock_timestamp(), result = 'lost', error = 'lease expired'
             WHERE task_id = $1 AND attempt = $2 AND finished IS NULL",
            &[&task, &attempt],
        )
        .doing(|| format!("recording the lost run of task {task}"))?;
        if state == "failed" {
            result.tasks_failed += 1;
        } else {
            result.tasks_requeued += 1;
        }
        tracing::warn!(task, attempt, %state, "a task's lease expired");
    }
    if result.tasks_requeued > 0 {
        tx.execute("NOTIFY strata_tasks", &[]).doing(|| "waking the movers".into())?;
    }
    result.maintenance_queued = crate::policy::queue_maintenance(&mut tx)?;
    result.jobs_finished = tx
        .execute(
            "UPDATE jobs j SET finished = now(),
                 state = CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'failed')
                              THEN 'failed' ELSE 'done' END
             WHERE j.state = 'running'
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state IN ('queued', 'running'))",
            &[],
        )
        .doing(|| "ending finished jobs".into())?;
    tx.commit().doing(|| "committing a coordinator tick".into())?;
    if result.jobs_started > 0 {
        crate::db::refresh_statistics(db)?;
    }
    Ok(result)
}

/// Runs the coordinator until `stop` says so: migrate, wait to be the
/// active one, then tick.
pub fn run(url: &str, settings: &Settings, stop: &dyn Fn() -> bool) -> Result<()> {
    let mut db = crate::db::connect(url)?;
    let version = crate::db::migrate(&mut db)?;
    tracing::info!(schema = version, "coordinator database ready");
    become_leader(&mut db, stop)?;
    tracing::info!("this coordinator is active");
    while !stop() {
        let done = tick(&mut db, settings)?;
        if done != Tick::default() {
            tracing::info!(?done, "coordinator tick");
        }
        std::thread::sleep(settings.tick);
    }
    Ok(())
}
