//! Jobs and their tasks as people see them: `backup-now` queues a job of
//! one task per source, `job restore` a job of one restore; `job
//! list|show|cancel`.

use postgres::Client;
use serde::Serialize;

use crate::error::{DbContext, Error, Result};

/// Queues a job backing up `sources` now. It is never refused for want of
/// a free stream: its tasks wait in the queue until a mover that reaches
/// each source has one.
pub fn backup_now(db: &mut Client, sources: &[String]) -> Result<i64> {
    if sources.is_empty() {
        return Err(Error::InvalidInput("backup-now needs at least one source".into()));
    }
    let mut tx = db.transaction().doing(|| "queueing a backup".into())?;
    for name in sources {
        let known = tx
            .query_opt("SELECT 1 FROM sources WHERE name = $1", &[name])
            .doing(|| format!("looking up source {name}"))?;
        if known.is_none() {
            return Err(Error::NotFound(format!(
                "no source {name:?} in the inventory (`strata source add` adds one)"
            )));
        }
    }
    let job: i64 = tx
        .query_one("INSERT INTO jobs (kind) VALUES ('backup-now') RETURNING id", &[])
        .doing(|| "creating the job".into())?
        .get(0);
    tx.execute(
        "INSERT INTO tasks (job_id, source, host, datastore, size_hint, priority)
         SELECT $1, name, host, datastore, size_hint, priority FROM sources WHERE name = ANY($2)",
        &[&job, &sources],
    )
    .doing(|| format!("queueing the tasks of job {job}"))?;
    tx.execute("NOTIFY strata_tasks", &[]).doing(|| "waking the movers".into())?;
    tx.commit().doing(|| format!("committing job {job}"))?;
    if sources.len() >= crate::db::MANY_TASKS {
        crate::db::refresh_statistics(db)?;
    }
    Ok(job)
}

/// Queues a job restoring restore point `restore_point` to `to` on
/// `host` (or on a mover that reaches `datastore`): it runs when such a
/// mover has a free stream, and waits in the queue while none is up.
pub fn restore(
    db: &mut Client,
    restore_point: &str,
    vm: bool,
    to: &str,
    host: &str,
    datastore: Option<&str>,
) -> Result<i64> {
    if !to.starts_with('/') {
        return Err(Error::InvalidInput(format!("the restore target {to:?} is not an absolute path")));
    }
    if restore_point.is_empty() || host.is_empty() {
        return Err(Error::InvalidInput("a restore task needs a restore point and a host".into()));
    }
    let mut tx = db.transaction().doing(|| "queueing a restore".into())?;
    let job: i64 = tx
        .query_one("INSERT INTO jobs (kind) VALUES ('restore') RETURNING id", &[])
        .doing(|| "creating the restore job".into())?
        .get(0);
    tx.execute(
        "INSERT INTO tasks (job_id, kind, restore_from, restore_to, host, datastore, size_hint, priority)
         VALUES ($1, $6, $2, $3, $4, $5, 0, 100)",
        &[
            &job,
            &restore_point,
            &to,
            &host,
            &datastore.unwrap_or(""),
            &if vm { "restore-vm" } else { "restore-files" },
        ],
    )
    .doing(|| format!("queueing the restore of job {job}"))?;
    tx.execute("NOTIFY strata_tasks", &[]).doing(|| "waking the movers".into())?;
    tx.commit().doing(|| format!("committing job {job}"))?;
    Ok(job)
}

#[derive(Debug, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub created: String,
    pub finished: Option<String>,
    pub tasks: i64,
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    pub cancelled: i64,
}

#[derive(Debug, Serialize)]
pub struct TaskRow {
    pub id: i64,
    /// `backup`, `restore-files` or `restore-vm`.
    pub kind: String,
    /// The source backed up, or the restore point restored.
    pub source: String,
    pub state: String,
    pub attempts: i32,
    pub mover: Option<String>,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub restore_point: Option<String>,
    pub bytes_read: Option<i64>,
    pub bytes_new: Option<i64>,
    pub bytes_stored: Option<i64>,
    pub error: Option<String>,
}

const TIME: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

fn job_query(filter: &str) -> String {
    format!(
        "SELECT j.id, j.kind, j.state, to_char(j.created AT TIME ZONE 'UTC', {TIME}),
                to_char(j.finished AT TIME ZONE 'UTC', {TIME}),
                count(t.id),
                count(t.id) FILTER (WHERE t.state = 'queued'),
                count(t.id) FILTER (WHERE t.state = 'running'),
                count(t.id) FILTER (WHERE t.state = 'done'),
                count(t.id) FILTER (WHERE t.state = 'failed'),
                count(t.id) FILTER (WHERE t.state = 'skipped'),
                count(t.id) FILTER (WHERE t.state = 'cancelled')
         FROM jobs j LEFT JOIN tasks t ON t.job_id = j.id
         {filter}
         GROUP BY j.id ORDER BY j.id"
    )
}

fn job_row(r: &postgres::Row) -> JobRow {
    JobRow {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        created: r.get(3),
        finished: r.get(4),
        tasks: r.get(5),
        queued: r.get(6),
        running: r.get(7),
        done: r.get(8),
        failed: r.get(9),
        skipped: r.get(10),
        cancelled: r.get(11),
    }
}

pub fn jobs(db: &mut Client) -> Result<Vec<JobRow>> {
    let rows = db.query(&job_query(""), &[]).doing(|| "listing jobs".into())?;
    Ok(rows.iter().map(job_row).collect())
}

pub fn job(db: &mut Client, id: i64) -> Result<(JobRow, Vec<TaskRow>)> {
    let row = db
        .query_opt(&job_query("WHERE j.id = $1"), &[&id])
        .doing(|| format!("reading job {id}"))?
        .ok_or_else(|| Error::NotFound(format!("no job {id}")))?;
    let tasks = db
        .query(
            &format!(
                "SELECT id, kind, coalesce(source, restore_from, 'policy ' || (args ->> 'policy'), ''), state, attempts, mover,
                        to_char(started AT TIME ZONE 'UTC', {TIME}), to_char(finished AT TIME ZONE 'UTC', {TIME}),
                        restore_point, bytes_read, bytes_new, bytes_stored, error
                 FROM tasks WHERE job_id = $1 ORDER BY id"
            ),
            &[&id],
        )
        .doing(|| format!("reading the tasks of job {id}"))?;
    let tasks = tasks
        .iter()
        .map(|r| TaskRow {
            id: r.get(0),
            kind: r.get(1),
            source: r.get(2),
            state: r.get(3),
            attempts: r.get(4),
            mover: r.get(5),
            started: r.get(6),
            finished: r.get(7),
            restore_point: r.get(8),
            bytes_read: r.get(9),
            bytes_new: r.get(10),
            bytes_stored: r.get(11),
            error: r.get(12),
        })
        .collect();
    Ok((job_row(&row), tasks))
}

/// Cancels a job: its queued tasks never start, and its running ones are
/// stopped by their movers at the next heartbeat (nothing of them is
/// committed). Returns how many tasks it cancelled.
pub fn cancel(db: &mut Client, id: i64) -> Result<u64> {
    let mut tx = db.transaction().doing(|| format!("cancelling job {id}"))?;
    let state: Option<String> = tx
        .query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
        .doing(|| format!("reading job {id}"))?
        .map(|r| r.get(0));
    match state.as_deref() {
        None => return Err(Error::NotFound(format!("no job {id}"))),
        Some("running") => {}
        Some(other) => return Err(Error::InvalidInput(format!("job {id} is {other} already"))),
    }
    let cancelled = tx
        .execute(
            "UPDATE tasks SET state = 'cancelled', finished = now(), lease_until = NULL,
                 error = 'cancelled by a person'
             WHERE job_id = $1 AND state IN ('queued', 'running')",
            &[&id],
        )
        .doing(|| format!("cancelling the tasks of job {id}"))?;
    tx.execute("UPDATE jobs SET state = 'cancelled', finished = now() WHERE id = $1", &[&id])
        .doing(|| format!("cancelling job {id}"))?;
    tx.commit().doing(|| format!("committing the cancel of job {id}"))?;
    Ok(cancelled)
}
