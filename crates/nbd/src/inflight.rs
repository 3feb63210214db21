//! Requests in flight on a connection: what each waits for, what its
//! reply has delivered so far, and how a connection that ended fails
//! them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::transport::Stream;
use crate::wire::Descriptor;

/// The pieces of a read delivered so far: none may overlap another, and
/// a read of N bytes takes at most N / 512 + 64 of them (a server
/// sending millions of one-byte pieces is not waited out).
#[derive(Default)]
pub(crate) struct Coverage {
    /// Start → end of each piece.
    pieces: BTreeMap<u64, u64>,
    pub bytes: u64,
}

impl Coverage {
    pub fn add(&mut self, start: u64, len: u64) -> std::result::Result<(), String> {
        let end = start + len;
        let before = self.pieces.range(..=start).next_back().is_some_and(|(_, &b)| b > start);
        let after = self.pieces.range(start..).next().is_some_and(|(&a, _)| a < end);
        if before || after {
            return Err(format!("two chunks of one read both cover bytes {start}..{end}"));
        }
        if self.pieces.len() as u64 >= (self.bytes + len) / 512 + 64 {
            return Err(format!("a read in more than {} chunks", self.pieces.len()));
        }
        self.pieces.insert(start, end);
        self.bytes += len;
        Ok(())
    }
}

/// What a request waits for, and what its reply has delivered so far.
pub(crate) enum Expect {
    /// `span.len()` bytes at `offset`, into `data[span]` (the caller's
    /// buffer, filled in place); `covered` the pieces delivered.
    Read { offset: u64, data: Vec<u8>, span: std::ops::Range<usize>, covered: Coverage },
    BlockStatus { extents: Vec<(u32, Vec<Descriptor>)> },
    Done,
}

pub(crate) struct Pending {
    pub command: &'static str,
    /// Whether a structured chunk of its reply has come (a simple reply
    /// may then no longer end it).
    pub started: bool,
    pub expect: Expect,
    pub error: Option<(u32, String)>,
    pub reply: mpsc::SyncSender<Result<Delivered>>,
}

pub(crate) enum Delivered {
    Data(Vec<u8>),
    Status(Vec<(u32, Vec<Descriptor>)>),
    Done,
}

#[derive(Default)]
pub(crate) struct State {
    pub pending: HashMap<u64, Pending>,
    /// Why the connection ended, once it has.
    pub closed: Option<String>,
}

pub(crate) struct Shared {
    pub server: String,
    pub state: Mutex<State>,
    /// Shut down when the connection ends, so that a caller blocked
    /// writing to a server that stopped reading fails too.
    pub socket: Stream,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection: every waiting request fails with `why`.
    pub fn close(&self, why: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(why.clone());
        }
        for (_, p) in state.pending.drain() {
            let _ = p.reply.send(Err(lost(&self.server, &why)));
        }
        self.socket.shutdown();
    }
}

pub(crate) fn lost(server: &str, why: &str) -> Error {
    Error::io(
        "talking to NBD server",
        server,
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
    )
}
