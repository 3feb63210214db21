//! How a mover takes work, keeps it, and gives it back: the claim, the
//! lease and the report. Every rule of placement and throttling is in the
//! claim's one query, run under a transaction-scoped advisory lock so the
//! limits it checks are still true when it takes the task (two movers
//! claiming at once would each see one free slot on a datastore).
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

/// Key of the advisory lock a claim holds for its transaction.
const DISPATCH_LOCK: i64 = 0x5354_5241_5441_0002;

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

const CLAIM: &str = "
WITH ds_running AS (
    SELECT datastore, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY datastore
), host_running AS (
    SELECT host, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY host
), mover_running AS (
    SELECT mover, count(*) AS n FROM tasks WHERE state = 'running' GROUP BY mover
), idle_hosts AS (
    SELECT DISTINCT m.host FROM movers m LEFT JOIN mover_running r ON r.mover = m.name
    WHERE m.alive AND m.name <> $1 AND coalesce(r.n, 0) < m.streams
), ds_limit AS (
    SELECT name, max_tasks FROM limits WHERE scope = 'datastore'
), host_limit AS (
    SELECT name, max_tasks FROM limits WHERE scope = 'host'
)
SELECT t.id, t.job_id, t.attempts, coalesce(t.source, t.restore_from),
       CASE WHEN t.kind = 'backup' THEN s.kind ELSE t.kind END, coalesce(s.path, t.restore_to)
FROM tasks t
LEFT JOIN sources s ON s.name = t.source
LEFT JOIN ds_running dr ON dr.datastore = t.datastore
LEFT JOIN host_running hr ON hr.host = t.host
WHERE t.state = 'queued' AND t.not_before <= now()
  AND (t.host = $2 OR t.datastore = ANY($3))
  AND coalesce(dr.n, 0) < coalesce((SELECT max_tasks FROM ds_limit WHERE name = t.datastore),
                                   (SELECT max_tasks FROM ds_limit WHERE name = '*'), 1)
  AND coalesce(hr.n, 0) < coalesce((SELECT max_tasks FROM host_limit WHERE name = t.host),
                                   (SELECT max_tasks FROM host_limit WHERE name = '*'), 1)
  AND (t.host = $2 OR t.host NOT IN (SELECT host FROM idle_hosts))
ORDER BY (t.host = $2) DESC, coalesce(dr.n, 0), t.priority DESC, t.size_hint DESC, t.id
LIMIT 1
FOR UPDATE OF t SKIP LOCKED";

/// Takes the next task `mover` (on `host`, reaching `datastores`) should
/// run, leased for `lease`; `None` when there is none it may run now.
pub fn claim(
    db: &mut Client,
    mover: &str,
    host: &str,
    datastores: &[String],
    lease: Duration,
) -> Result<Option<Claimed>> {
    let mut tx = db.transaction().doing(|| format!("claiming a task for mover {mover}"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DISPATCH_LOCK])
        .doing(|| "waiting for the dispatch lock".into())?;
    let Some(row) = tx
        .query_opt(CLAIM, &[&mover, &host, &datastores])
        .doing(|| format!("finding a task for mover {mover}"))?
    else {
        return Ok(None);
    };
    let claimed = Claimed {
        task: row.get(0),
        job: row.get(1),
        attempt: row.get::<_, i32>(2) + 1,
        source: row.get(3),
        kind: row.get(4),
        path: row.get(5),
    };
    let seconds = lease.as_secs_f64();
    tx.execute(
        "UPDATE tasks SET state = 'running', mover = $2, attempts = $3, started = now(),
             lease_until = now() + make_interval(secs => $4), error = NULL
         WHERE id = $1",
        &[&claimed.task, &mover, &claimed.attempt, &seconds],
    )
    .doing(|| format!("leasing task {} to mover {mover}", claimed.task))?;
    tx.execute(
        "INSERT INTO task_runs (task_id, attempt, mover, started) VALUES ($1, $2, $3, now())",
        &[&claimed.task, &claimed.attempt, &mover],
    )
    .doing(|| format!("recording the run of task {}", claimed.task))?;
    tx.commit().doing(|| format!("committing the claim of task {}", claimed.task))?;
    Ok(Some(claimed))
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
            "UPDATE tasks SET state = 'done', finished = now(), lease_until = NULL,
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
             finished = CASE WHEN attempts >= max_attempts THEN now() END,
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
/// the coordinator, or cancelled).
fn finish_run(tx: &mut postgres::Transaction<'_>, claimed: &Claimed, result: &str, error: Option<&str>) -> Result<()> {
    tx.execute(
        "UPDATE task_runs SET finished = now(), result = $3, error = $4
         WHERE task_id = $1 AND attempt = $2 AND finished IS NULL",
        &[&claimed.task, &claimed.attempt, &result, &error],
    )
    .doing(|| format!("recording the end of task {}", claimed.task))?;
    Ok(())
}

/// Records that a run stopped because its task was taken from it.
pub fn report_stopped(db: &mut Client, claimed: &Claimed) -> Result<()> {
    db.execute(
        "UPDATE task_runs SET finished = now(), result = 'cancelled'
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
