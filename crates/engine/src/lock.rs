//! The repository's writer lock: one writer at a time, readers never wait.
//!
//! `flock` on `<repo>/lock` is released by the kernel when its holder exits,
//! even by kill -9, so a crash never leaves a stale lock. The holder writes
//! who it is into the file so that a second writer can say who is busy.
//! A repository in a bucket is shared by machines that cannot see each
//! other's `flock`s, so its writers also hold an [`ObjectLock`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};
use crate::storage::ObjectStore;

pub struct RepositoryLock {
    _held: Flock<File>,
}

impl RepositoryLock {
    pub fn acquire(repo: &Path, command: &str) -> Result<Self> {
        let path = repo.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at("opening lock", &path)?;
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Busy {
                    holder: if holder.is_empty() {
                        "another writer holds its lock".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err((_, errno)) => return Err(Error::io("locking", path, errno.into())),
        };
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let since = crate::selector::format_time(crate::clock::now());
        let info = format!(
            "held by `{command}` (pid {} on {host}) since {since}\n",
            std::process::id()
        );
        held.set_len(0).at("writing lock", &path)?;
        held.rewind().at("writing lock", &path)?;
        held.write_all(info.as_bytes()).at("writing lock", &path)?;
        Ok(RepositoryLock { _held: held })
    }
}

/// The writer lock of a repository in a bucket, which writers on other
/// machines share: an object `lock` naming its holder, with a lease the
/// holder renews while it runs. A holder that died leaves a lease that
/// runs out; such a stale lock is reported, with how to break it, rather
/// than broken silently (its holder may only be cut off from the bucket).
pub struct ObjectLock {
    store: Arc<dyn ObjectStore>,
    token: String,
    renewer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// The lock object's name in the repository's warm store.
pub const LOCK_OBJECT: &str = "lock";
/// How long a lease lasts, and how often its holder renews it.
const LEASE_SECS: i64 = 600;
const RENEW_EVERY: Duration = Duration::from_secs(120);

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct LockRecord {
    token: String,
    holder: String,
    since: String,
    /// Unix seconds.
    expires: i64,
    /// Where the holder runs, so that a writer on the same host can tell
    /// a holder that died (kill -9, a crash) from one that is alive.
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
}

impl LockRecord {
    /// Whether the holder ran on this host and is no longer running.
    fn holder_died_here(&self, host: &str) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        self.host == host
            && pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
    }
}

impl ObjectLock {
    pub fn acquire(store: Arc<dyn ObjectStore>, command: &str) -> Result<Self> {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(other) = read_lock(store.as_ref())? {
            if !other.holder_died_here(&host) {
                return Err(busy(store.as_ref(), &other));
            }
            tracing::info!(holder = %other.holder, "taking over the lock of a writer that died on this host");
        }
        let token = crate::config_file::random_id()?;
        let record = LockRecord {
            token: token.clone(),
            holder: format!("`{command}` (pid {} on {host})", std::process::id()),
            since: crate::selector::format_time(crate::clock::now()),
            expires: 0,
            host,
            pid: std::process::id(),
        };
        write_lock(store.as_ref(), &record)?;
        // Two writers that both found no lock both wrote one: the last
        // write stands, and the other sees it here and backs off.
        match read_lock(store.as_ref())? {
            Some(current) if current.token == record.token => {}
            Some(current) => return Err(busy(store.as_ref(), &current)),
            None => {
                return Err(Error::Busy {
                    holder: format!("the lock object in {} vanished as it was taken", store.location()),
                })
            }
        }
        let (stop, stopped) = mpsc::channel();
        let renewer = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("lock-lease".into())
                .spawn(move || renew(store.as_ref(), record, &stopped))
                .map_err(|e| Error::io("starting", "the lock's lease renewer", e))?
        };
        Ok(ObjectLock {
            store,
            token,
            renewer: Some((stop, renewer)),
        })
    }

    /// Removes the lock object whoever holds it: `strata unlock`, for a
    /// holder known to be gone. Returns who held it.
    pub fn break_lock(store: &dyn ObjectStore) -> Result<Option<String>> {
        let holder = match store.get(LOCK_OBJECT) {
            Ok(bytes) => Some(
                serde_json::from_slice::<LockRecord>(&bytes)
                    .map(|r| r.holder)
                    .unwrap_or_else(|_| "an unreadable lock object".into()),
            ),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        store.delete(LOCK_OBJECT)?;
        Ok(holder)
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        if let Some((stop, renewer)) = self.renewer.take() {
            let _ = stop.send(());
            let _ = renewer.join();
        }
        let ours = read_lock(self.store.as_ref())
            .ok()
            .flatten()
            .is_some_and(|r| r.token == self.token);
        if ours {
            if let Err(e) = self.store.delete(LOCK_OBJECT) {
                tracing::warn!(error = %e, "could not remove the lock object; it expires with its lease");
            }
        }
    }
}

/// The lock object, if there is one (expired or not).
fn read_lock(store: &dyn ObjectStore) -> Result<Option<LockRecord>> {
    match store.get(LOCK_OBJECT) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::corrupt(
                format!("lock object {}/{LOCK_OBJECT}", store.location()),
                format!("{e}; if no writer is running, remove it with `strata unlock`"),
            )
        }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_lock(store: &dyn ObjectStore, record: &LockRecord) -> Result<()> {
    let record = LockRecord {
        expires: crate::clock::now().sec + LEASE_SECS,
        ..record.clone()
    };
    let bytes = serde_json::to_vec(&record).expect("lock records serialize");
    store.put(LOCK_OBJECT, &bytes)
}

fn renew(store: &dyn ObjectStore, record: LockRecord, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(RENEW_EVERY) {
        if let Err(e) = write_lock(store, &record) {
            tracing::warn!(error = %e, "could not renew the writer lock's lease");
        }
    }
}

fn busy(store: &dyn ObjectStore, other: &LockRecord) -> Error {
    let location = store.location();
    if other.expires > crate::clock::now().sec {
        Error::Busy {
            holder: format!("held by {} since {} (lock object {location}/{LOCK_OBJECT})", other.holder, other.since),
        }
    } else {
        Error::Busy {
            holder: format!(
                "a stale lock of {} (since {}) has run out of lease; if that process is gone, \
                 break it with `strata unlock` (lock object {location}/{LOCK_OBJECT})",
                other.holder, other.since
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn hostname() -> String {
        nix::unistd::gethostname().unwrap().to_string_lossy().into_owned()
    }

    fn put_lock(store: &dyn ObjectStore, host: &str, pid: u32, expires: i64) {
        let record = LockRecord {
            token: "other".into(),
            holder: "`strata backup files` (elsewhere)".into(),
            since: "2026-01-01T00:00:00Z".into(),
            expires,
            host: host.into(),
            pid,
        };
        store.put(LOCK_OBJECT, &serde_json::to_vec(&record).unwrap()).unwrap();
    }

    #[test]
    fn a_live_holder_keeps_the_lock_and_a_dead_one_on_this_host_loses_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let far_future = i64::MAX / 2;
        put_lock(store.as_ref(), &hostname(), std::process::id(), far_future);
        let err = ObjectLock::acquire(Arc::clone(&store), "test").err().unwrap().to_string();
        assert!(err.contains("busy"), "{err}");
        put_lock(store.as_ref(), "another-host", 999_999, far_future);
        assert!(ObjectLock::acquire(Arc::clone(&store), "test").is_err());
        put_lock(store.as_ref(), &hostname(), 999_999, far_future);
        let held = ObjectLock::acquire(Arc::clone(&store), "test").unwrap();
        drop(held);
        assert!(store.get(LOCK_OBJECT).unwrap_err().is_not_found(), "released on drop");
    }
}
