//! Policies: a schedule (cron, UTC), the sources it covers (a glob), the
//! priority of its tasks and the window they must start in, and what to
//! do after each run: retention (keep rules; forget, then prune) and
//! tiering (restore points older than some days go cold). The
//! coordinator turns each due policy into a scheduled job, and adds the
//! maintenance task to the job once its backups have ended.

use chrono::{DateTime, Utc};
use postgres::Client;
use serde::Serialize;

use crate::error::{DbContext, Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    /// Five fields: minute hour day-of-month month day-of-week, UTC (or
    /// six, with seconds first).
    pub schedule: String,
    /// A glob over source names: `*` any run of characters, `?` one.
    pub sources: String,
    pub priority: i32,
    /// Seconds after a run's time within which its tasks must start.
    pub window_secs: i64,
    pub keep: Keep,
    /// Restore points older than this many days go to the cold tier.
    pub tier_after_days: Option<i32>,
}

/// Keep rules, as `strata forget` takes them; all zero: no retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Keep {
    pub last: i32,
    pub hourly: i32,
    pub daily: i32,
    pub weekly: i32,
    pub monthly: i32,
    pub yearly: i32,
}

impl Keep {
    fn as_array(&self) -> [i32; 6] {
        [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly]
    }

    /// Each rule with its name as `strata forget --keep-NAME` takes it.
    pub fn rules(&self) -> [(&'static str, i32); 6] {
        let [last, hourly, daily, weekly, monthly, yearly] = self.as_array();
        [
            ("last", last),
            ("hourly", hourly),
            ("daily", daily),
            ("weekly", weekly),
            ("monthly", monthly),
            ("yearly", yearly),
        ]
    }

    /// No rule: the policy keeps everything (it has no retention).
    pub fn keeps_everything(&self) -> bool {
        self.as_array().iter().all(|&n| n == 0)
    }
}

/// The first time after `after` that `schedule` names.
pub fn next_run(schedule: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let cron = croner::Cron::new(schedule)
        .with_seconds_optional()
        .parse()
        .map_err(|e| Error::InvalidInput(format!("schedule {schedule:?}: {e}")))?;
    cron.find_next_occurrence(&after, false)
        .map_err(|e| Error::InvalidInput(format!("schedule {schedule:?} names no time after {after}: {e}")))
}

/// A glob as a LIKE pattern (with `\` escaping LIKE's own wildcards).
pub fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub fn add(db: &mut Client, policy: &Policy) -> Result<String> {
    if policy.name.is_empty() || policy.name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!("policy name {:?}", policy.name)));
    }
    if policy.window_secs <= 0 {
        return Err(Error::InvalidInput(format!("policy {}: the window must be positive", policy.name)));
    }
    if policy.keep.as_array().iter().any(|&n| n < 0) || policy.tier_after_days.is_some_and(|d| d < 1) {
        return Err(Error::InvalidInput(format!(
            "policy {}: keep rules are at least 0 and tiering at least 1 day",
            policy.name
        )));
    }
    let first = next_run(&policy.schedule, Utc::now())?;
    let [last, hourly, daily, weekly, monthly, yearly] = policy.keep.as_array();
    db.execute(
        "INSERT INTO policies (name, schedule, sources, priority, window_secs, next_run, keep_last, keep_hourly,
                               keep_daily, keep_weekly, keep_monthly, keep_yearly, tier_after_days)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (name) DO UPDATE SET schedule = $2, sources = $3, priority = $4, window_secs = $5,
             next_run = $6, keep_last = $7, keep_hourly = $8, keep_daily = $9, keep_weekly = $10,
             keep_monthly = $11, keep_yearly = $12, tier_after_days = $13",
        &[
            &policy.name,
            &policy.schedule,
            &policy.sources,
            &policy.priority,
            &policy.window_secs,
            &first,
            &last,
            &hourly,
            &daily,
            &weekly,
            &monthly,
            &yearly,
            &policy.tier_after_days,
        ],
    )
    .doing(|| format!("adding policy {}", policy.name))?;
    Ok(first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[derive(Debug, Serialize)]
pub struct PolicyRow {
    #[serde(flatten)]
    pub policy: Policy,
    pub next_run: String,
}

pub fn list(db: &mut Client) -> Result<Vec<PolicyRow>> {
    let rows = db
        .query(
            "SELECT name, schedule, sources, priority, window_secs, next_run, keep_last, keep_hourly, keep_daily,
                    keep_weekly, keep_monthly, keep_yearly, tier_after_days
             FROM policies ORDER BY name",
            &[],
        )
        .doing(|| "listing policies".into())?;
    Ok(rows
        .iter()
        .map(|r| PolicyRow {
            policy: Policy {
                name: r.get(0),
                schedule: r.get(1),
                sources: r.get(2),
                priority: r.get(3),
                window_secs: r.get(4),
                keep: Keep {
                    last: r.get(6),
                    hourly: r.get(7),
                    daily: r.get(8),
                    weekly: r.get(9),
                    monthly: r.get(10),
                    yearly: r.get(11),
                },
                tier_after_days: r.get(12),
            },
            next_run: r
                .get::<_, DateTime<Utc>>(5)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .collect())
}

pub fn remove(db: &mut Client, name: &str) -> Result<()> {
    let removed = db
        .execute("DELETE FROM policies WHERE name = $1", &[&name])
        .doing(|| format!("removing policy {name}"))?;
    if removed == 0 {
        return Err(Error::NotFound(format!("no policy {name:?}")));
    }
    Ok(())
}

/// Turns every due policy into a scheduled job, in `tx`: one task per
/// source the glob matches, to start before the run's time plus the
/// window. A source whose previous task has not ended gets a skipped task
/// instead (reported, not queued behind the first). Returns the jobs
/// made.
pub fn start_due(tx: &mut postgres::Transaction<'_>) -> Result<Vec<i64>> {
    let due = tx
        .query(
            "SELECT name, schedule, sources, priority, window_secs, next_run FROM policies
             WHERE next_run <= now() FOR UPDATE SKIP LOCKED",
            &[],
        )
        .doing(|| "finding due policies".into())?;
    let mut jobs = Vec::new();
    for row in due {
        let (name, schedule, sources, priority, window, due_at): (String, String, String, i32, i64, DateTime<Utc>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        let job: i64 = tx
            .query_one("INSERT INTO jobs (kind, policy) VALUES ('scheduled', $1) RETURNING id", &[&name])
            .doing(|| format!("starting a run of policy {name}"))?
            .get(0);
        let pattern = like_pattern(&sources);
        let deadline = due_at + chrono::Duration::seconds(window);
        tx.execute(
            "INSERT INTO tasks (job_id, source, host, datastore, size_hint, priority, deadline, state, finished, error)
             SELECT $1, s.name, s.host, s.datastore, s.size_hint, $3, $4,
                    CASE WHEN busy.source IS NULL THEN 'queued' ELSE 'skipped' END,
                    CASE WHEN busy.source IS NULL THEN NULL ELSE now() END,
                    CASE WHEN busy.source IS NULL THEN NULL
                         ELSE 'its previous backup (job ' || busy.job_id || ') has not ended' END
             FROM sources s
             LEFT JOIN LATERAL (SELECT t.source, t.job_id FROM tasks t
                                WHERE t.source = s.name AND t.state IN ('queued', 'running') LIMIT 1) busy ON true
             WHERE s.name LIKE $2 ESCAPE '\\'",
            &[&job, &pattern, &priority, &deadline],
        )
        .doing(|| format!("queueing the tasks of policy {name}"))?;
        // A coordinator that was down over several times runs one: the
        // next time is the first after now.
        let next = next_run(&schedule, Utc::now().max(due_at))?;
        tx.execute("UPDATE policies SET next_run = $2 WHERE name = $1", &[&name, &next])
            .doing(|| format!("scheduling policy {name}"))?;
        tracing::info!(policy = %name, job, next = %next, "scheduled run started");
        jobs.push(job);
    }
    if !jobs.is_empty() {
        tx.execute("NOTIFY strata_tasks", &[]).doing(|| "waking the movers".into())?;
    }
    Ok(jobs)
}

/// Adds, in `tx`, the maintenance task to each scheduled job whose
/// backups have all ended and whose policy keeps or tiers: it forgets and
/// prunes what the keep rules do not keep, and tiers, among the restore
/// points of the job's sources (by the names their backups recorded). It
/// must start before the policy's next run, which queues another. Returns
/// how many.
pub fn queue_maintenance(tx: &mut postgres::Transaction<'_>) -> Result<u64> {
    let queued = tx
        .execute(
            "INSERT INTO tasks (job_id, kind, host, datastore, size_hint, priority, deadline, args)
             SELECT j.id, 'maintenance', '', '', 0, p.priority, p.next_run, jsonb_build_object(
                        'policy', p.name,
                        'sources', (SELECT coalesce(jsonb_agg(DISTINCT s.recorded_as), '[]') FROM sources s
                                    WHERE s.recorded_as IS NOT NULL
                                      AND s.name IN (SELECT t.source FROM tasks t WHERE t.job_id = j.id)),
                        'keep_last', p.keep_last, 'keep_hourly', p.keep_hourly, 'keep_daily', p.keep_daily,
                        'keep_weekly', p.keep_weekly, 'keep_monthly', p.keep_monthly,
                        'keep_yearly', p.keep_yearly, 'tier_after_days', p.tier_after_days)
             FROM jobs j JOIN policies p ON p.name = j.policy
             WHERE j.state = 'running' AND j.kind = 'scheduled'
               AND (p.keep_last + p.keep_hourly + p.keep_daily + p.keep_weekly + p.keep_monthly + p.keep_yearly > 0
                    OR p.tier_after_days IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id
                               AND (t.state IN ('queued', 'running') OR t.kind = 'maintenance'))",
            &[],
        )
        .doing(|| "queueing the policies' retention and tiering".into())?;
    if queued > 0 {
        tx.execute("NOTIFY strata_tasks", &[]).doing(|| "waking the movers".into())?;
    }
    Ok(queued)
}

/// Skips, in `tx`, the queued tasks whose window has closed, each with
/// why it could not start. Returns how many.
pub fn skip_expired(tx: &mut postgres::Transaction<'_>) -> Result<u64> {
    let skipped = tx
        .query(
            "UPDATE tasks t SET state = 'skipped', finished = now(), error = CASE
                 WHEN t.kind = 'maintenance' AND NOT EXISTS (SELECT 1 FROM movers m WHERE m.alive AND m.maintenance)
                     THEN 'no live mover may maintain the repository (strata mover --maintenance)'
                 WHEN t.kind = 'maintenance' AND t.error IS NULL
                     THEN 'it had not started when the policy ran again'
                 WHEN t.kind <> 'maintenance' AND NOT EXISTS (SELECT 1 FROM movers m WHERE m.alive
                                  AND (m.host = t.host OR t.datastore = ANY (m.datastores)))
                     THEN 'no live mover reaches host ' || t.host || ' or datastore ' || t.datastore
                 WHEN t.error IS NOT NULL
                     THEN 'its window closed after failed attempts: ' || t.error
                 ELSE 'no free stream before its window closed' END
             WHERE t.state = 'queued' AND t.deadline < now()
             RETURNING t.id, coalesce(t.source, t.restore_from, 'policy ' || (t.args ->> 'policy'), ''), t.error",
            &[],
        )
        .doing(|| "skipping tasks whose window closed".into())?;
    for row in &skipped {
        tracing::warn!(task = row.get::<_, i64>(0), source = row.get::<_, String>(1), reason = row.get::<_, String>(2), "task skipped");
    }
    Ok(skipped.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn globs_become_like_patterns_with_their_wildcards_escaped() {
        assert_eq!(like_pattern("web*"), "web%");
        assert_eq!(like_pattern("db?"), "db_");
        assert_eq!(like_pattern("50%_off\\"), "50\\%\\_off\\\\");
    }

    #[test]
    fn the_next_run_follows_the_schedule_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 10, 15, 0).unwrap();
        assert_eq!(next_run("0 2 * * *", at).unwrap(), Utc.with_ymd_and_hms(2026, 11, 29, 2, 0, 0).unwrap());
        assert_eq!(next_run("*/20 * * * *", at).unwrap(), Utc.with_ymd_and_hms(2026, 11, 28, 10, 20, 0).unwrap());
        assert_eq!(next_run("30 15 10 * * *", at).unwrap(), Utc.with_ymd_and_hms(2026, 11, 28, 10, 15, 30).unwrap());
        assert!(next_run("61 * * * *", at).is_err());
        assert!(next_run("not a schedule", at).is_err());
    }
}
