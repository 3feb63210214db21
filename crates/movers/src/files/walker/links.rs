//! Hard links: a file with several names is read once, under the first
//! name the walk meets; later names take its chunk list, or wait for it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use super::Walker;
use crate::error::Result;
use crate::index::FileFingerprint;
use crate::metadata::EntryStat;
use crate::tree::Extent;

/// Hard-linked files are read once; later names wait for the first.
pub(super) enum LinkState {
    Done(Result<Vec<Extent>, String>),
    Waiting(Vec<(usize, usize)>),
}

impl Walker<'_> {
    /// Settles a later name of a hard-linked file from its first name, and
    /// returns true; returns false for the first name, which is read.
    pub(super) fn follow_link(
        &mut self,
        dir: usize,
        slot: usize,
        path: &Path,
        stat: &EntryStat,
    ) -> bool {
        match self.links.get_mut(&(stat.dev, stat.ino)) {
            Some(LinkState::Done(Ok(extents))) => {
                let extents = extents.clone();
                self.set_extents(dir, slot, extents);
                true
            }
            Some(LinkState::Done(Err(reason))) => {
                let reason = reason.clone();
                self.miss(path, reason);
                let d = self.dirs[dir].as_mut().expect("pending directory");
                d.missed[slot] = true;
                true
            }
            Some(LinkState::Waiting(waiters)) => {
                waiters.push((dir, slot));
                self.dirs[dir].as_mut().expect("pending directory").pending += 1;
                true
            }
            None => {
                self.links
                    .insert((stat.dev, stat.ino), LinkState::Waiting(Vec::new()));
                false
            }
        }
    }

    /// Hands the first name's content to later names of a hard link.
    pub(super) fn resolve_links(
        &mut self,
        fingerprint: &FileFingerprint,
        outcome: Result<Vec<Extent>, String>,
    ) -> Result<()> {
        let key = (fingerprint.device, fingerprint.inode);
        let Some(state) = self.links.get_mut(&key) else {
            return Ok(());
        };
        let LinkState::Waiting(waiters) =
            std::mem::replace(state, LinkState::Done(outcome.clone()))
        else {
            return Ok(());
        };
        for (dir, slot) in waiters {
            match &outcome {
                Ok(extents) => {
                    self.set_extents(dir, slot, extents.clone());
                    self.dirs[dir].as_mut().expect("pending directory").pending -= 1;
                    self.try_finish_dir(dir)?;
                }
                Err(reason) => {
                    let path = self.dirs[dir]
                        .as_ref()
                        .expect("pending directory")
                        .path
                        .join(OsString::from_vec(
                            self.dirs[dir].as_ref().expect("pending directory").nodes[slot]
                                .name
                                .clone(),
                        ));
                    self.miss(&path, reason.clone());
                    self.mark_missed(dir, slot)?;
                }
            }
        }
        Ok(())
    }
}
