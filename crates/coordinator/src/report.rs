//! The daily report: what the pool did in one UTC day — tasks that
//! succeeded, failed and were skipped (with why), and the data volumes.

use postgres::Client;
use serde::Serialize;

use crate::error::{DbContext, Error, Result};

#[derive(Debug, Serialize)]
pub struct DailyReport {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub jobs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub cancelled: i64,
    pub bytes_read: i64,
    pub bytes_new: i64,
    pub bytes_stored: i64,
    /// Tasks that failed or were skipped: source, state, mover, reason.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub task: i64,
    pub job: i64,
    pub source: String,
    pub state: String,
    pub mover: Option<String>,
    pub reason: String,
}

/// The report of `day` (`YYYY-MM-DD`): the tasks that ended that day.
pub fn daily(db: &mut Client, day: &str) -> Result<DailyReport> {
    let valid = day.len() == 10
        && day.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !valid {
        return Err(Error::InvalidInput(format!("day {day:?} is not YYYY-MM-DD")));
    }
    let range = "t.finished >= $1::text::date AND t.finished < $1::text::date + 1";
    let totals = db
        .query_one(
            &format!(
                "SELECT count(DISTINCT t.job_id),
                        count(*) FILTER (WHERE t.state = 'done'),
                        count(*) FILTER (WHERE t.state = 'failed'),
                        count(*) FILTER (WHERE t.state = 'skipped'),
                        count(*) FILTER (WHERE t.state = 'cancelled'),
                        coalesce(sum(t.bytes_read), 0)::bigint,
                        coalesce(sum(t.bytes_new), 0)::bigint,
                        coalesce(sum(t.bytes_stored), 0)::bigint
                 FROM tasks t WHERE {range}"
            ),
            &[&day],
        )
        .doing(|| format!("summing the tasks of {day}"))?;
    let problems = db
        .query(
            &format!(
                "SELECT t.id, t.job_id, coalesce(t.source, t.restore_from, 'policy ' || (t.args ->> 'policy'), ''), t.state, t.mover,
                        coalesce(t.error, '')
                 FROM tasks t WHERE {range} AND t.state IN ('failed', 'skipped') ORDER BY t.finished, t.id"
            ),
            &[&day],
        )
        .doing(|| format!("listing the failed and skipped tasks of {day}"))?;
    Ok(DailyReport {
        day: day.to_string(),
        jobs: totals.get(0),
        succeeded: totals.get(1),
        failed: totals.get(2),
        skipped: totals.get(3),
        cancelled: totals.get(4),
        bytes_read: totals.get(5),
        bytes_new: totals.get(6),
        bytes_stored: totals.get(7),
        problems: problems
            .iter()
            .map(|r| Problem {
                task: r.get(0),
                job: r.get(1),
                source: r.get(2),
                state: r.get(3),
                mover: r.get(4),
                reason: r.get(5),
            })
            .collect(),
    })
}
