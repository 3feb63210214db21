//! Read-ahead for sequential readers: the kernel asks for 128 KiB at a
//! time, so on its own the mount would fetch one chunk at a time just
//! before it is needed. Once a reader is sequential, the chunks of a window
//! ahead of it are loaded (read, decompressed, verified) by a pool of
//! threads of their own, several at once, into the shared cache, where the
//! reader's requests find them or wait for their load. The window is four
//! times what the reader has read in a row, from 2 MiB up to
//! [`READ_AHEAD_BYTES`] and a quarter of the cache (a reader that stops
//! early wastes little), asked for in batches of a quarter, and dropped as
//! soon as the reader seeks elsewhere. A chunk that fails to
//! load is left out: the reader's own request loads it again and reports
//! the damage (EIO), so read-ahead never decides what a reader gets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};

use crate::chunk_cache::ChunkCache;
use super::namespace::{Inode, Namespace};
use super::read::{chunks_starting_in, load_chunk, Source, READ_AHEAD_BYTES};

type Job = Box<dyn FnOnce() + Send>;

/// The window of a reader that has just become sequential.
const MIN_WINDOW: u64 = 2 << 20;

/// Chunk loads waiting for a read-ahead thread, across all readers.
const QUEUED_MAX: usize = 256;

pub struct ReadAhead {
    jobs: Sender<Job>,
    window: u64,
}

impl ReadAhead {
    pub fn new(cache_bytes: u64) -> Arc<Self> {
        // Loads wait on the disk as much as on the CPU: more threads than
        // cores keep both busy.
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .saturating_mul(3)
            .clamp(4, 16);
        let (jobs, queued) = bounded::<Job>(QUEUED_MAX);
        for n in 0..threads {
            let queued = queued.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-ahead-{n}"))
                .spawn(move || {
                    for job in queued {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "fewer read-ahead threads");
                break;
            }
        }
        Arc::new(ReadAhead {
            jobs,
            window: READ_AHEAD_BYTES.min(cache_bytes / 4),
        })
    }

    /// After a read of `inode` that ended at `end`: for a sequential
    /// reader, asks for the chunks up to a window past `end` that are not
    /// asked for yet; for any other, forgets its window.
    pub fn follow(
        &self,
        ns: &Arc<Namespace>,
        cache: &Arc<ChunkCache>,
        inode: &Inode,
        source: &Source,
        end: u64,
        sequential: bool,
    ) {
        if !sequential || self.window == 0 {
            inode.read_ahead_to.store(0, Ordering::Relaxed);
            return;
        }
        let run = end.saturating_sub(inode.run_start.load(Ordering::Relaxed));
        let window = run
            .saturating_mul(4)
            .clamp(MIN_WINDOW.min(self.window), self.window);
        let asked = inode.read_ahead_to.load(Ordering::Relaxed);
        let want = end.saturating_add(window);
        if want < asked.saturating_add(window / 4) {
            return;
        }
        // Two workers finishing reads of the same file: one asks.
        if inode
            .read_ahead_to
            .compare_exchange(asked, want, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // A disk map page that cannot be read: the reader meets it itself.
        let Ok(chunks) = chunks_starting_in(ns, inode, source, asked.max(end), want) else {
            return;
        };
        for id in chunks {
            if cache.has(&id) {
                continue;
            }
            let (ns, cache) = (ns.clone(), cache.clone());
            let job: Job = Box::new(move || {
                let _ = load_chunk(&ns, &cache, &id);
            });
            if self.jobs.try_send(job).is_err() {
                break;
            }
        }
    }
}
