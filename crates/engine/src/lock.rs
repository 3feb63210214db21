//! The repository's writer lock: one writer at a time, readers never wait.
//!
//! `flock` on `<repo>/lock` is released by the kernel when its holder exits,
//! even by kill -9, so a crash never leaves a stale lock. The holder writes
//! who it is into the file so that a second writer can say who is busy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

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
