//! Connecting to the coordinator's database and migrating its schema.
//!
//! Migrations are SQL files compiled into the binary, applied in order,
//! each in its own transaction, and recorded in `schema_migrations`; a
//! transaction-scoped advisory lock makes concurrent starts (a coordinator
//! and its standby) apply each one once. A database whose schema is newer
//! than this binary knows is refused rather than used.

use postgres::{Client, NoTls};

use crate::error::{DbContext, Error, Result};

/// `(version, name, SQL)`, in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "inventory and queue", include_str!("../migrations/0001_inventory_and_queue.sql")),
    (
        2,
        "policies, windows and restores",
        include_str!("../migrations/0002_policies_windows_restores.sql"),
    ),
    (3, "the claim as one function", include_str!("../migrations/0003_claim_function.sql")),
    (
        4,
        "batched claims, retention and tiering",
        include_str!("../migrations/0004_batched_claims_and_maintenance.sql"),
    ),
    (5, "sources read over NBD", include_str!("../migrations/0005_nbd_sources.sql")),
];

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = 5;

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x5354_5241_5441_0001;

/// Connects to `url` (`postgres://user@host:port/db`). The URL's password,
/// if any, is never logged.
pub fn connect(url: &str) -> Result<Client> {
    Client::connect(url, NoTls).doing(|| format!("connecting to the coordinator database at {}", redact(url)))
}

/// `url` with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Applies the migrations the database lacks; returns its version.
pub fn migrate(client: &mut Client) -> Result<i32> {
    let mut tx = client.transaction().doing(|| "starting the migration".into())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .doing(|| "waiting for another migration".into())?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied timestamptz NOT NULL DEFAULT now())",
    )
    .doing(|| "creating schema_migrations".into())?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
        .doing(|| "reading the schema version".into())?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::InvalidInput(format!(
            "the coordinator database has schema version {current}, newer than this strata knows ({SCHEMA_VERSION}): upgrade strata"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tracing::info!(version, name, "migrating the coordinator database");
        tx.batch_execute(sql).doing(|| format!("applying migration {version} ({name})"))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .doing(|| format!("recording migration {version}"))?;
    }
    tx.commit().doing(|| "committing the migration".into())?;
    Ok(SCHEMA_VERSION)
}

/// Connects and checks the schema is the one this binary knows (for
/// commands other than the coordinator, which migrates).
pub fn open(url: &str) -> Result<Client> {
    let mut client = connect(url)?;
    let version: Option<i32> = client
        .query_opt(
            "SELECT max(version) FROM schema_migrations WHERE to_regclass('schema_migrations') IS NOT NULL",
            &[],
        )
        .ok()
        .flatten()
        .and_then(|row| row.get(0));
    match version {
        Some(SCHEMA_VERSION) => Ok(client),
        Some(v) => Err(Error::InvalidInput(format!(
            "the coordinator database {} has schema version {v}; this strata knows {SCHEMA_VERSION}",
            redact(url)
        ))),
        None => Err(Error::InvalidInput(format!(
            "{} has no coordinator schema: start `strata coordinator --db URL` once to create it",
            redact(url)
        ))),
    }
}

/// A job of at least this many tasks changes the queue enough for the
/// planner's statistics to be refreshed at once.
pub const MANY_TASKS: usize = 500;

/// Refreshes the planner's statistics of the queue. The claim's plans
/// depend on how many tasks are queued per host and datastore: with the
/// statistics of an empty queue just after a large job was queued, the
/// planner scans the whole queue per claim (autovacuum would analyze only
/// a minute later).
pub fn refresh_statistics(db: &mut Client) -> Result<()> {
    db.batch_execute("ANALYZE tasks").doing(|| "refreshing the statistics of the queue".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://strata:secret@db:5432/strata"), "postgres://strata:***@db:5432/strata");
        assert_eq!(redact("postgres://strata@db/strata"), "postgres://strata@db/strata");
        assert_eq!(redact("host=db user=strata"), "host=db user=strata");
    }
}

