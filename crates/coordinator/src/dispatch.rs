//! How a mover takes work, keeps it, and gives it back: the claim, the
//! lease and the report. Every rule of placement and throttling is in the
//! claim, the SQL function `strata_claim` (migrations/0003), one round
//! trip: it first looks, without waiting for anything, whether anything
//! this mover reaches is queued at all; if so it takes a transaction-scoped
//! advisory lock (key 0x5354_5241_5441_0002), so the limits it checks are
//! still true when it takes the task (two movers claiming at once would
//! each see one free slot on a datastore). It looks at datastores, not
//! tasks: those this mover may take from (the ones it reaches, and those
//! of its own host's queued tasks) that are under their limit, and on each
//! the best queued task (from the queued-by-datastore index), then the
//! best of those; so a claim costs a few index probes per datastore
//! however long the queue is.
//!
//! A mover claims only when it has a free stream. Among the queued tasks
//! it may run (its own host's, or on a datastore it reaches), it takes:
//! 1. none on a datastore or host already at its limit (throttling comes
//!    before priority);
//! 2. none on a host that has an idle mover of its own, unless this mover
//!    is that host's (placement: same host, then datastore access);
//! 3. first its own host's, then the datastore with the fewest running
//!    tasks (different datastores before a second task on one), then the
//!    highest priority, then the largest, then the oldest.

use std::time::Duration;

use postgres::Client;

use crate::error::{DbContext, Result};

/// A task a mover took.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: i64,
    pub job: i64,
    pub attempt: i32,
    /// The source to back up, or the restore point to restore.
    pub source: String,
    /// The source's kind (`files`, `vm`, `image`), or `restore-files`,
    /// `restore-vm`.
    pub kind: String,
    /// The source's path, or where to restore.
    pub path: String,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub restore_point: Option<String>,
    pub bytes_read: Option<i64>,
    pub bytes_new: Option<i64>,
    pub bytes_stored: Option<i64>,
}

/// The claim: one call of `strata_claim` (migration 3), prepared once per
/// connection, so a claim is one round trip.
pub struct Claimer {
    statement: postgres::Statement,
}

impl Claimer {
    pub fn prepare(db: &mut Client) -> Result<Claimer> {
        Ok(Claimer {
            statement: db
                .prepare("SELECT * FROM strata_claim($1, $2, $3, $4)")
                .doing(|| "preparing the claim".into())?,
        })
    }

    /// Takes the next task `mover` (on `host`, reaching `datastores`)
    /// should run, leased for `lease`; `None` when there is none it may
    /// run now. `db` is the connection the claim was prepared on.
    pub fn claim(
        &self,
        db: &mut Client,
        mover: &str,
        host: &str,
        datastores: &[String],
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        let row = db
            .query_opt(&self.statement, &[&mover, &host, &datastores, &lease.as_secs_f64()])
            .doing(|| format!("claiming a task for mover {mover}"))?;
        Ok(row.map(|row| Claimed {
            task: row.get(0),
            job: row.get(1),
            attempt: row.get(2),
            source: row.get(3),
            kind: row.get(4),
            path: row.get(5),
        }))
    }
}

/// A mover's heartbeat: says it is alive and extends the leases of the
/// tasks it still holds; returns those tasks. A task it runs that is not
/// among them was taken from it (its lease expired, or its job was
/// cancelled): the mover stops it.
pub fn heartbeat(db: &mut Client, mover: &str, lease: Duration) -> Result<Vec<(i64, i32)>> {
    let seconds = lease.as_secs_f64();
    let mut tx = db.transaction().doing(|| format!("heartbeat of mover {mover}"))?;
    tx.execute("UPDATE movers SET last_heartbeat = now(), alive = true WHERE name = $1", &[&mover])
        .doing(|| format!("heartbeat of mover {mover}"))?;
    let held = tx
        .query(
            "UPDATE tasks SET lease_until = now() + make_interval(secs => $2)
             WHERE mover = $1 AND state = 'running' RETURNING id, attempts",
            &[&mover, &seconds],
        )
        .doing(|| format!("renewing the leases of mover {mover}"))?;
    tx.commit().doing(|| format!("heartbeat of mover {mover}"))?;
    Ok(held.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Reports a run that finished well. Only the run holding the lease may:
/// returns false (and changes nothing) if the task was taken from it.
pub fn report_done(db: &mut Client, mover: &str, claimed: &Claimed, outcome: &Outcome) -> Result<bool> {
    let mut tx = db.transaction().doing(|| format!("reporting task {}", claimed.task))?;
    let updated = tx
        .execute(
            "UPDATE tasks SET state = 'done', finished = clock_timestamp(), lease_until = NULL,
                 restore_point = $4, bytes_read = $5, bytes_new = $6, bytes_stored = $7
             WHERE id = $1 AND mover = $2 AND attempts = $3 AND state = 'running'",
            &[
                &claimed.task,
                &mover,
                &claimed.attempt,
                &outcome.restore_point,
                &outcome.bytes_read,
                &outcome.bytes_new,
                &outcome.bytes_stored,
            ],
        )
        .doing(|| format!("reporting task {}", claimed.task))?;
    finish_run(&mut tx, claimed, "done", None)?;
    tx.commit().doing(|| format!("committing the report of task {}", claimed.task))?;
    Ok(updated == 1)
}

/// Backoff before attempt `attempt + 1`: 5 s, 20 s, 80 s, … at most 10
/// minutes.
pub fn backoff(attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 6) - 1).unwrap_or(0);
    Duration::from_secs((5 * 4u64.pow(exponent)).min(600))
}

/// Reports a run that failed: the task goes back to the queue after a
/// backoff, or fails for good after its last attempt.
pub fn report_failed(db: &mut Client, mover: &str, claimed: &Claimed, error: &str, retry_after: Duration) -> Result<()> {
    let mut tx = db.transaction().doing(|| format!("reporting task {}", claimed.task))?;
    tx.execute(
        "UPDATE tasks SET
             state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
             finished = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END,
             not_before = now() + make_interval(secs => $5),
             mover = NULL, lease_until = NULL, error = $4
         WHERE id = $1 AND mover = $2 AND attempts = $3 AND state = 'running'",
        &[&claimed.task, &mover, &claimed.attempt, &error, &retry_after.as_secs_f64()],
    )
    .doing(|| format!("reporting task {}", claimed.task))?;
    finish_run(&mut tx, claimed, "failed", Some(error))?;
    tx.commit().doing(|| format!("committing the report of task {}", claimed.task))?;
    Ok(())
}

/// Records how a run ended, unless it was recorded already (as lost by
/// the coordinator, or cancelled). Run times are the clock's when they
/// are written, not their transaction's start (`now()`): a claim that
/// waited for the dispatch lock starts after the report it waited for,
/// and the recorded times must say so.
fn finish_run(tx: &mut postgres::Transaction<'_>, claimed: &Claimed, result: &str, error: Option<&str>) -> Result<()> {
    tx.execute(
        "UPDATE task_runs SET finished = clock_timestamp(), result = $3, error = $4
         WHERE task_id = $1 AND attempt = $2 AND finished IS NULL",
        &[&claimed.task, &claimed.attempt, &result, &error],
    )
    .doing(|| format!("recording the end of task {}", claimed.task))?;
    Ok(())
}

/// Records that a run stopped because its task was taken from it.
pub fn report_stopped(db: &mut Client, claimed: &Claimed) -> Result<()> {
    db.execute(
        "UPDATE task_runs SET finished = clock_timestamp(), result = 'cancelled'
         WHERE task_id = $1 AND attempt = $2 AND finished IS NULL",
        &[&claimed.task, &claimed.attempt],
    )
    .doing(|| format!("recording the stop of task {}", claimed.task))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(80));
        assert_eq!(backoff(50), Duration::from_secs(600));
    }
}
