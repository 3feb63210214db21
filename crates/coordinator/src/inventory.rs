//! What the coordinator knows of the estate: data movers (registered by
//! themselves) and sources (added by people), and the throttling limits.

use postgres::Client;
use serde::Serialize;

use crate::error::{DbContext, Error, Result};

/// Memory one backup stream may need (its chunk buffers, the packs it has
/// in flight, the read-ahead of its source): a mover runs at most one
/// stream per this much memory.
pub const MEMORY_PER_STREAM_MIB: i64 = 2048;

/// A mover's streams: one per core, at most one per
/// [`MEMORY_PER_STREAM_MIB`] of memory, at least one.
pub fn streams_for(cores: i32, memory_mib: i64) -> i32 {
    let by_memory = i32::try_from(memory_mib / MEMORY_PER_STREAM_MIB).unwrap_or(i32::MAX);
    cores.min(by_memory).max(1)
}

/// A data mover as it registers.
#[derive(Debug, Clone)]
pub struct MoverSpec {
    pub name: String,
    pub host: String,
    pub cores: i32,
    pub memory_mib: i64,
    /// The formula's streams unless given.
    pub streams: Option<i32>,
    pub datastores: Vec<String>,
    pub transports: Vec<String>,
    /// It holds an admin token: it may run policies' retention and tiering.
    pub maintenance: bool,
}

/// A mover as `strata mover list` shows it.
#[derive(Debug, Serialize)]
pub struct MoverRow {
    pub name: String,
    pub host: String,
    pub cores: i32,
    pub memory_mib: i64,
    pub streams: i32,
    pub streams_in_use: i64,
    pub datastores: Vec<String>,
    pub transports: Vec<String>,
    pub last_heartbeat: String,
    pub alive: bool,
    pub maintenance: bool,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "{what} {name:?}: a name is 1 to 200 characters, none of them control characters"
        )));
    }
    Ok(())
}

/// Registers `spec` (again): a mover that comes back is used again.
pub fn register_mover(db: &mut Client, spec: &MoverSpec) -> Result<i32> {
    check_name("mover", &spec.name)?;
    check_name("host", &spec.host)?;
    if spec.cores < 1 || spec.memory_mib < 1 {
        return Err(Error::InvalidInput(format!("mover {}: cores and memory must be positive", spec.name)));
    }
    let streams = match spec.streams {
        Some(s) if s < 1 => return Err(Error::InvalidInput(format!("mover {}: --streams must be at least 1", spec.name))),
        Some(s) => s,
        None => streams_for(spec.cores, spec.memory_mib),
    };
    db.execute(
        "INSERT INTO movers (name, host, cores, memory_mib, streams, datastores, transports, maintenance)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name) DO UPDATE SET host = $2, cores = $3, memory_mib = $4, streams = $5,
             datastores = $6, transports = $7, maintenance = $8, last_heartbeat = now(), alive = true",
        &[
            &spec.name,
            &spec.host,
            &spec.cores,
            &spec.memory_mib,
            &streams,
            &spec.datastores,
            &spec.transports,
            &spec.maintenance,
        ],
    )
    .doing(|| format!("registering mover {}", spec.name))?;
    Ok(streams)
}

pub fn movers(db: &mut Client) -> Result<Vec<MoverRow>> {
    let rows = db
        .query(
            "SELECT m.name, m.host, m.cores, m.memory_mib, m.streams,
                    (SELECT count(*) FROM tasks t WHERE t.state = 'running' AND t.mover = m.name),
                    m.datastores, m.transports,
                    to_char(m.last_heartbeat AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), m.alive,
                    m.maintenance
             FROM movers m ORDER BY m.name",
            &[],
        )
        .doing(|| "listing movers".into())?;
    Ok(rows
        .iter()
        .map(|r| MoverRow {
            name: r.get(0),
            host: r.get(1),
            cores: r.get(2),
            memory_mib: r.get(3),
            streams: r.get(4),
            streams_in_use: r.get(5),
            datastores: r.get(6),
            transports: r.get(7),
            last_heartbeat: r.get(8),
            alive: r.get(9),
            maintenance: r.get(10),
        })
        .collect())
}

/// A source of backups: a file tree on a host, or a VM folder on a
/// datastore.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub name: String,
    /// `files`, `vm` or `image`.
    pub kind: String,
    pub path: String,
    pub host: String,
    pub datastore: String,
    /// Bytes, as known: larger sources go first among equal priorities.
    pub size_hint: i64,
    pub priority: i32,
}

pub fn add_source(db: &mut Client, source: &Source) -> Result<()> {
    check_name("source", &source.name)?;
    check_name("host", &source.host)?;
    check_name("datastore", &source.datastore)?;
    if !["files", "vm", "image", "nbd"].contains(&source.kind.as_str()) {
        return Err(Error::InvalidInput(format!(
            "source {}: kind {:?} is not files, vm, image or nbd",
            source.name, source.kind
        )));
    }
    if source.kind == "nbd" {
        // The mover parses the URI fully; here only its scheme is checked.
        let schemes = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"];
        if !schemes.iter().any(|s| source.path.starts_with(s)) {
            return Err(Error::InvalidInput(format!(
                "source {}: the path {:?} of an nbd source is not an NBD URI (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)",
                source.name, source.path
            )));
        }
    } else if !source.path.starts_with('/') {
        return Err(Error::InvalidInput(format!("source {}: the path {:?} is not absolute", source.name, source.path)));
    }
    db.execute(
        "INSERT INTO sources (name, kind, path, host, datastore, size_hint, priority)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (name) DO UPDATE SET kind = $2, path = $3, host = $4, datastore = $5,
             size_hint = $6, priority = $7",
        &[
            &source.name,
            &source.kind,
            &source.path,
            &source.host,
            &source.datastore,
            &source.size_hint,
            &source.priority,
        ],
    )
    .doing(|| format!("adding source {}", source.name))?;
    Ok(())
}

pub fn sources(db: &mut Client) -> Result<Vec<Source>> {
    let rows = db
        .query("SELECT name, kind, path, host, datastore, size_hint, priority FROM sources ORDER BY name", &[])
        .doing(|| "listing sources".into())?;
    Ok(rows
        .iter()
        .map(|r| Source {
            name: r.get(0),
            kind: r.get(1),
            path: r.get(2),
            host: r.get(3),
            datastore: r.get(4),
            size_hint: r.get(5),
            priority: r.get(6),
        })
        .collect())
}

/// Sets the most running tasks per datastore or per host (`name` `*`:
/// the default of the scope).
pub fn set_limit(db: &mut Client, scope: &str, name: &str, max_tasks: i32) -> Result<()> {
    if !["datastore", "host"].contains(&scope) {
        return Err(Error::InvalidInput(format!("limit scope {scope:?} is not datastore or host")));
    }
    if max_tasks < 1 {
        return Err(Error::InvalidInput("a limit is at least 1 running task".into()));
    }
    check_name(scope, name)?;
    db.execute(
        "INSERT INTO limits (scope, name, max_tasks) VALUES ($1, $2, $3)
         ON CONFLICT (scope, name) DO UPDATE SET max_tasks = $3",
        &[&scope, &name, &max_tasks],
    )
    .doing(|| format!("setting the {scope} limit of {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_follow_cores_and_memory() {
        assert_eq!(streams_for(8, 32 * 1024), 8);
        assert_eq!(streams_for(16, 8 * 1024), 4);
        assert_eq!(streams_for(2, 1024), 1);
        assert_eq!(streams_for(1, i64::MAX), 1);
    }
}
