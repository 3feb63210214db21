//! How a mover takes work, keeps it, and gives it back: the claim, the
//! lease and the report. Every rule of placement and throttling is in the
//! claim, the SQL function `strata_claim` (migrations/0004), one round
//! trip that takes as many tasks as the mover has free streams: it first
//! looks, without waiting for anything, whether anything this mover may
//! take is queued at all; if so it takes a transaction-scoped advisory
//! lock (key 0x5354_5241_5441_0002), so the limits it checks are still
//! true when it takes the tasks (two movers claiming at once would each
//! see one free slot on a datastore). Under the lock it reads once which
//! datastores it may take from are under their limit, and which hosts are
//! closed to it; then, for each task, it probes the best queued task of
//! each open datastore (from the queued-by-datastore index) and takes the
//! best of those, updating both lists. A claim so costs a few index
//! probes per open datastore however long the queue is.
//!
//! Among the queued tasks a mover may run (its own host's, or on a
//! datastore it reaches), it takes:
//! 1. none on a datastore or host already at its limit (throttling comes
//!    before priority);
//! 2. none on a host that has an idle mover of its own, unless this mover
//!    is that host's (placement: same host, then datastore access);
//! 3. first its own host's, then the datastore with the fewest running
//!    tasks (different datastores before a second task on one), then the
//!    highest priority, then the largest, then the oldest.
//!
//! A maintenance task (a policy's retention and tiering) goes only to a
//! mover registered with `maintenance`, one at a time in the pool, before
//! any backup.

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
    /// A maintenance task's arguments (JSON, see [`MaintenanceArgs`]).
    pub args: Option<String>,
}

/// What a maintenance task does: forget (then prune) the restore points
/// of `sources` the keep rules do not keep, and move those of `sources`
/// older than `tier_after_days` to the cold tier.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaintenanceArgs {
    pub policy: String,
    /// The source names the restore points were recorded under.
    pub sources: Vec<String>,
    pub keep_last: i32,
    pub keep_hourly: i32,
    pub keep_daily: i32,
    pub keep_weekly: i32,
    pub keep_monthly: i32,
    pub keep_yearly: i32,
    pub tier_after_days: Option<i32>,
}

impl MaintenanceArgs {
    pub fn keep(&self) -> crate::policy::Keep {
        crate::policy::Keep {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
        }
    }
}

impl Claimed {
    /// The arguments of a maintenance task.
    pub fn maintenance(&self) -> std::result::Result<MaintenanceArgs, String> {
        let args = self.args.as_deref().ok_or_else(|| format!("task {} has no maintenance arguments", self.task))?;
        serde_json::from_str(args).map_err(|e| format!("task {}: unreadable maintenance arguments: {e}", self.task))
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub restore_point: Option<String>,
    pub bytes_read: Option<i64>,
    pub bytes_new: Option<i64>,
    pub bytes_stored: Option<i64>,
    /// The source name the backup recorded its restore point under (a
    /// VM's display name may differ from its name in the inventory).
    pub recorded_source: Option<String>,
}

/// The claim: one call of `strata_claim` (migration 4), prepared once per
/// connection, so a claim is one round trip.
pub struct Claimer {
    statement: postgres::Statement,
}

impl Claimer {
    pub fn prepare(db: &mut Client) -> Result<Claimer> {
        Ok(Claimer {
            statement: db
                .prepare("SELECT * FROM strata_claim($1, $2, $3, $4, $5)")
                .doing(|| "preparing the claim".into())?,
        })
    }

    /// Takes up to `max` tasks `mover` (on `host`, reaching `datastores`)
    /// should run, each leased for `lease`; none when there is none it may
    /// run now. `db` is the connection the claim was prepared on.
    pub fn claim(
        &self,
        db: &mut Client,
        mover: &str,
        host: &str,
        datastores: &[String],
        lease: Duration,
        max: i32,
    ) -> Result<Vec<Claimed>> {
        let rows = db
            .query(&self.statement, &[&mover, &host, &datastores, &lease.as_secs_f64(), &max.max(1)])
            .doing(|| format!("claiming tasks for mover {mover}"))?;
        Ok(rows
            .iter()
            .map(|row| Claimed {
                task: row.get(0),
                job: row.get(1),
                attempt: row.get(2),
                source: row.get(3),
                kind: row.get(4),
                path: row.get(5),
                args: row.get(6),
            })
            .collect())
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

/// Backoff before attempt `attempt + 1`: 5 s, 20 s, 80 s, … at most 10
/// minutes.
pub fn backoff(attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.clamp(1, 6) - 1).unwrap_or(0);
    Duration::from_secs((5 * 4u64.pow(exponent)).min(600))
}

/// The report of a run: one call of `strata_report` (migration 4),
/// prepared once per connection, so a report is one round trip. Only the
/// run holding the lease may report; a report from a run whose task was
/// taken from it changes nothing but the end of its run.
pub struct Reporter {
    statement: postgres::Statement,
}

impl Reporter {
    pub fn prepare(db: &mut Client) -> Result<Reporter> {
        Ok(Reporter {
            statement: db
                .prepare("SELECT strata_report($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
                .doing(|| "preparing the report".into())?,
        })
    }

    /// Reports a run that finished well; false if the task was taken from
    /// it.
    pub fn done(&self, db: &mut Client, mover: &str, claimed: &Claimed, outcome: &Outcome) -> Result<bool> {
        let row = db
            .query_one(
                &self.statement,
                &[
                    &claimed.task,
                    &mover,
                    &claimed.attempt,
                    &"done",
                    &outcome.restore_point,
                    &outcome.bytes_read,
                    &outcome.bytes_new,
                    &outcome.bytes_stored,
                    &outcome.recorded_source,
                    &None::<String>,
                    &0f64,
                ],
            )
            .doing(|| format!("reporting task {}", claimed.task))?;
        Ok(row.get(0))
    }

    /// Reports a run that failed: the task goes back to the queue after
    /// `retry_after`, or fails for good after its last attempt.
    pub fn failed(&self, db: &mut Client, mover: &str, claimed: &Claimed, error: &str, retry_after: Duration) -> Result<()> {
        db.query_one(
            &self.statement,
            &[
                &claimed.task,
                &mover,
                &claimed.attempt,
                &"failed",
                &None::<String>,
                &None::<i64>,
                &None::<i64>,
                &None::<i64>,
                &None::<String>,
                &error,
                &retry_after.as_secs_f64(),
            ],
        )
        .doing(|| format!("reporting task {}", claimed.task))?;
        Ok(())
    }
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
