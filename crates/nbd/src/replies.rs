//! The reply thread: reads every reply of a connection and checks it
//! against the request it answers before handing it to the caller (data
//! and holes inside the read and covering it exactly once, block status
//! for negotiated contexts only, no unknown cookies, bounded lengths, no
//! simple reply where the protocol forbids one). A reply that breaks the
//! protocol ends the connection.

use std::io::{BufReader, Read};

use crate::error::{Error, Result};
use crate::inflight::{lost, Delivered, Expect, Pending, Shared};
use crate::wire::*;

/// How long requests may wait with nothing at all from the server.
pub(crate) const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The reply thread's reading side.
pub(crate) struct Receiver<'a, R> {
    pub input: BufReader<R>,
    pub shared: &'a Shared,
    pub contexts: Vec<u32>,
    pub max_payload: u32,
    /// Whether structured replies were agreed.
    pub structured: bool,
}

impl<R: Read> Receiver<'_, R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::result::Result<(), String> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            _ => format!("reading a reply failed: {e}"),
        })
    }

    /// Reads replies until the connection ends; returns why it ended.
    pub fn run(&mut self) -> std::result::Result<(), String> {
        let mut silent_since: Option<std::time::Instant> = None;
        loop {
            let mut magic = [0u8; 4];
            match self.input.read(&mut magic[..1]) {
                Ok(0) => return Ok(()),
                Ok(_) => silent_since = None,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    // Between replies: silence is fine while nothing waits.
                    if self.shared.lock().pending.is_empty() {
                        silent_since = None;
                    } else if silent_since.get_or_insert_with(std::time::Instant::now).elapsed() >= STALL_LIMIT {
                        return Err(format!(
                            "the server answered nothing for {} s while requests waited",
                            STALL_LIMIT.as_secs()
                        ));
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading a reply failed: {e}")),
            }
            self.read_exact(&mut magic[1..])?;
            match u32::from_be_bytes(magic) {
                SIMPLE_REPLY_MAGIC => self.simple()?,
                STRUCTURED_REPLY_MAGIC => self.structured()?,
                other => return Err(format!("the server sent a reply with magic {other:#x}, which is not NBD")),
            }
        }
    }

    fn take_pending(&self, cookie: u64) -> std::result::Result<Pending, String> {
        self.shared
            .lock()
            .pending
            .remove(&cookie)
            .ok_or_else(|| format!("the server replied to cookie {cookie}, which no request in flight has"))
    }

    fn simple(&mut self) -> std::result::Result<(), String> {
        let mut head = [0u8; 12];
        self.read_exact(&mut head)?;
        let mut f = Fields::new(&head);
        let (error, cookie) = (f.u32().unwrap_or(0), f.u64().unwrap_or(0));
        let mut pending = self.take_pending(cookie)?;
        let server = &self.shared.server;
        // A reply begun in chunks ends in chunks, and once structured
        // replies are on, a read is never answered simply (the spec's
        // MUST NOT): either would let a failure pass as success.
        let misfit = if pending.started {
            Some(format!("a simple reply to a {} whose structured reply had begun", pending.command))
        } else if self.structured && matches!(pending.expect, Expect::Read { .. }) {
            Some("a simple reply to a read after structured replies were agreed".to_string())
        } else {
            None
        };
        if let Some(why) = misfit {
            let _ = pending.reply.send(Err(lost(server, &why)));
            return Err(why);
        }
        let result = if error != 0 {
            Err(refused(server, pending.command, error, ""))
        } else {
            match &mut pending.expect {
                Expect::Read { data, span, .. } => {
                    let mut data = std::mem::take(data);
                    if let Err(why) = self.read_exact(&mut data[span.clone()]) {
                        let _ = pending.reply.send(Err(lost(server, &why)));
                        return Err(why);
                    }
                    Ok(Delivered::Data(data))
                }
                Expect::BlockStatus { .. } => {
                    return Err("the server answered block status with a simple reply, which cannot carry extents".into())
                }
                Expect::Done => Ok(Delivered::Done),
            }
        };
        let _ = pending.reply.send(result);
        Ok(())
    }

    fn structured(&mut self) -> std::result::Result<(), String> {
        let mut head = [0u8; 16];
        self.read_exact(&mut head)?;
        let mut f = Fields::new(&head);
        let (flags, kind, cookie, length) =
            (f.u16().unwrap_or(0), f.u16().unwrap_or(0), f.u64().unwrap_or(0), f.u32().unwrap_or(0));
        let mut pending = self.take_pending(cookie)?;
        pending.started = true;
        let outcome = if kind == REPLY_TYPE_NONE && flags & REPLY_FLAG_DONE == 0 {
            Err("an NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE".to_string())
        } else {
            self.chunk(&mut pending, kind, length)
        };
        match outcome {
            Err(why) => {
                let _ = pending.reply.send(Err(lost(&self.shared.server, &why)));
                Err(why)
            }
            Ok(()) if flags & REPLY_FLAG_DONE != 0 => match self.finish(&mut pending) {
                Ok(result) => {
                    let _ = pending.reply.send(result);
                    Ok(())
                }
                Err(why) => {
                    let _ = pending.reply.send(Err(lost(&self.shared.server, &why)));
                    Err(why)
                }
            },
            Ok(()) => {
                self.shared.lock().pending.insert(cookie, pending);
                Ok(())
            }
        }
    }

    /// A request's whole reply, once its last chunk is in: what the
    /// caller gets, or why the reply breaks the protocol.
    fn finish(&self, pending: &mut Pending) -> std::result::Result<Result<Delivered>, String> {
        let server = &self.shared.server;
        Ok(match (pending.error.take(), std::mem::replace(&mut pending.expect, Expect::Done)) {
            (Some((error, message)), _) => Err(refused(server, pending.command, error, &message)),
            (None, Expect::Read { data, span, covered, .. }) => {
                // Pieces never overlap, so their sum is what was covered.
                if covered.bytes != span.len() as u64 {
                    return Err(format!(
                        "the server ended a read of {} bytes having sent {} bytes of it",
                        span.len(),
                        covered.bytes
                    ));
                }
                Ok(Delivered::Data(data))
            }
            (None, Expect::BlockStatus { extents }) => {
                if extents.len() != self.contexts.len() {
                    return Err(format!(
                        "the server answered block status for {} of the {} negotiated contexts",
                        extents.len(),
                        self.contexts.len()
                    ));
                }
                Ok(Delivered::Status(extents))
            }
            (None, Expect::Done) => Ok(Delivered::Done),
        })
    }

    /// One chunk of a structured reply, checked against its request.
    fn chunk(&mut self, pending: &mut Pending, kind: u16, length: u32) -> std::result::Result<(), String> {
        if kind & REPLY_TYPE_ERROR_BIT != 0 {
            if length > MAX_ERROR_CHUNK {
                return Err(format!("an error reply of {length} bytes"));
            }
            let mut payload = vec![0u8; length as usize];
            self.read_exact(&mut payload)?;
            let (error, message) = error_chunk(&payload)?;
            if error == 0 {
                return Err("an error reply with error number 0".into());
            }
            pending.error.get_or_insert((error, message));
            return Ok(());
        }
        match (kind, &mut pending.expect) {
            (REPLY_TYPE_NONE, _) if length == 0 => Ok(()),
            (REPLY_TYPE_NONE, _) => Err(format!("an NBD_REPLY_TYPE_NONE of {length} bytes")),
            (REPLY_TYPE_OFFSET_DATA, Expect::Read { offset, data, span, covered }) => {
                if length < 8 || length - 8 > self.max_payload.max(span.len() as u32) {
                    return Err(format!("a data chunk of {length} bytes"));
                }
                let mut at = [0u8; 8];
                self.read_exact(&mut at)?;
                let (start, len) = place(*offset, span.len(), u64::from_be_bytes(at), u64::from(length - 8))?;
                covered.add(start, len)?;
                let into = span.start + start as usize;
                self.read_exact(&mut data[into..into + len as usize])?;
                Ok(())
            }
            (REPLY_TYPE_OFFSET_HOLE, Expect::Read { offset, data, span, covered }) => {
                if length != 12 {
                    return Err(format!("a hole chunk of {length} bytes, not 12"));
                }
                let mut payload = [0u8; 12];
                self.read_exact(&mut payload)?;
                let mut f = Fields::new(&payload);
                let (at, size) = (f.u64().unwrap_or(0), f.u32().unwrap_or(0));
                let (start, len) = place(*offset, span.len(), at, u64::from(size))?;
                covered.add(start, len)?;
                let into = span.start + start as usize;
                data[into..into + len as usize].fill(0);
                Ok(())
            }
            (REPLY_TYPE_BLOCK_STATUS, Expect::BlockStatus { extents, .. }) => {
                if length > 4 + 8 * MAX_STATUS_DESCRIPTORS {
                    return Err(format!("a block status reply of {length} bytes"));
                }
                let mut payload = vec![0u8; length as usize];
                self.read_exact(&mut payload)?;
                let (context, descriptors) = block_status(&payload)?;
                if !self.contexts.contains(&context) {
                    return Err(format!("block status for context {context}, which was not negotiated"));
                }
                if extents.iter().any(|(c, _)| *c == context) {
                    return Err(format!("block status for context {context} twice in one reply"));
                }
                if descriptors.iter().any(|d| d.length == 0) {
                    return Err("a block status descriptor of length 0".into());
                }
                extents.push((context, descriptors));
                Ok(())
            }
            (kind, _) => Err(format!("a reply chunk of type {kind} to a {} request", pending.command)),
        }
    }
}

/// Where a chunk at absolute `at` of `len` bytes lies in a read of
/// `total` bytes at `offset`; an error if it lies outside.
fn place(offset: u64, total: usize, at: u64, len: u64) -> std::result::Result<(u64, u64), String> {
    let start = at.checked_sub(offset).ok_or_else(|| format!("a chunk at {at}, before the read's offset {offset}"))?;
    if len == 0 || start.checked_add(len).is_none_or(|end| end > total as u64) {
        return Err(format!("a chunk of {len} bytes at {at}, outside the read of {total} bytes at {offset}"));
    }
    Ok((start, len))
}


fn refused(server: &str, command: &str, error: u32, message: &str) -> Error {
    let message = if message.is_empty() { String::new() } else { format!(": {message}") };
    Error::io(
        "request to NBD server",
        server,
        std::io::Error::other(format!("the server failed a {command}: {}{message}", errno_text(error))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::Coverage;

    #[test]
    fn chunks_must_lie_inside_their_read() {
        assert_eq!(place(100, 50, 120, 30), Ok((20, 30)));
        assert!(place(100, 50, 99, 1).is_err());
        assert!(place(100, 50, 120, 31).is_err());
        assert!(place(100, 50, 120, 0).is_err());
        assert!(place(100, 50, u64::MAX, 2).is_err());
        let mut covered = Coverage::default();
        covered.add(10, 10).unwrap();
        covered.add(0, 10).unwrap();
        assert!(covered.add(5, 1).is_err());
        assert!(covered.add(19, 2).is_err());
        assert!(covered.add(0, 30).is_err());
        covered.add(20, 10).unwrap();
        assert_eq!(covered.bytes, 30);
        let mut many = Coverage::default();
        let refused = (0..1000).find(|i| many.add(*i, 1).is_err());
        assert_eq!(refused, Some(64), "tiny pieces are bounded");
    }
}
