//! A connection in the transmission phase: requests from any number of
//! threads on one socket, matched to their replies by cookie.
//!
//! One connection, not one per thread: qemu-nbd serves a single client
//! unless told otherwise (`--shared`), and one socket with many requests
//! in flight keeps a link busy as well as several. Callers send under a
//! lock and wait; the reply thread ([`crate::replies`]) checks each reply
//! against its request and wakes the caller. Requests respect the
//! server's block sizes. A connection that ends, or a reply that breaks
//! the protocol, fails every request in flight and after with the reason,
//! and shuts the socket so that no caller stays blocked writing.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::handshake::{ExportInfo, Go, Handshake};
use crate::inflight::{lost, Coverage, Delivered, Expect, Pending, Shared, State};
use crate::replies::{Receiver, STALL_LIMIT};
use crate::transport::{client_config, server_name, Reader, Stream, TlsReader, TlsSession, Writer};
use crate::uri::{Address, NbdUri};
use crate::wire::*;

/// How long a read from the server may wait: a whole handshake message,
/// or the rest of a reply once it has begun.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The metadata context of allocation, which every server with block
/// status has.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// A QEMU dirty bitmap's metadata context.
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("{DIRTY_BITMAP_PREFIX}{bitmap}")
}

const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// What to ask for when connecting.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Metadata contexts to negotiate (e.g. [`BASE_ALLOCATION`]).
    pub contexts: Vec<String>,
}

/// A run of bytes with one block status: `flags` as the context defines
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// Appends to sorted `ranges` the extents (given in order) whose flags
/// are `wanted`, joining each to the range before it when they touch.
pub fn add_ranges(ranges: &mut Vec<(u64, u64)>, extents: &[Extent], wanted: impl Fn(u32) -> bool) {
    for e in extents.iter().filter(|e| wanted(e.flags)) {
        match ranges.last_mut() {
            Some(last) if last.1 == e.offset => last.1 += e.length,
            _ => ranges.push((e.offset, e.offset + e.length)),
        }
    }
}

/// One block status reply: each context's extents (by name), all ending
/// at `end`.
#[derive(Debug, Clone)]
pub struct BlockStatus {
    pub end: u64,
    pub contexts: Vec<(String, Vec<Extent>)>,
}

/// A connected NBD client. `Sync`: share it between threads, each with
/// its requests in flight.
pub struct Client {
    server: String,
    export: ExportInfo,
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
    next_cookie: AtomicU64,
    receiver: Option<JoinHandle<()>>,
}

impl Client {
    pub fn connect(uri: &NbdUri, options: &ConnectOptions) -> Result<Client> {
        let server = uri.to_string();
        let connect_error = |e| Error::io("connecting to NBD server", &server, e);
        let mut stream = match &uri.address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(connect_error)?),
            Address::Tcp { host, port } => {
                let addrs: Vec<_> = (host.as_str(), *port).to_socket_addrs().map_err(connect_error)?.collect();
                let mut last = None;
                let mut found = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = found.ok_or_else(|| {
                    connect_error(last.unwrap_or_else(|| std::io::Error::other("the host name has no address")))
                })?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        // A peer that accepts and never speaks (or stops mid-reply) is
        // an error after a while, never a hang.
        stream.set_read_timeout(READ_TIMEOUT).map_err(connect_error)?;
        stream.set_write_timeout(STALL_LIMIT).map_err(connect_error)?;
        let mut tls = None;
        {
            let mut handshake = Handshake { stream: &mut stream, server: &server };
            handshake.greet()?;
            if uri.tls {
                handshake.start_tls().map_err(|e| match e {
                    Error::InvalidInput(m) => Error::InvalidInput(format!("{m}; the server does not offer TLS")),
                    e => e,
                })?;
                let mut connection = rustls::ClientConnection::new(client_config(uri)?, server_name(uri)?)
                    .map_err(|e| Error::InvalidInput(format!("NBD server {server}: TLS: {e}")))?;
                while connection.is_handshaking() {
                    connection
                        .complete_io(&mut stream)
                        .map_err(|e| Error::io("TLS handshake with NBD server", &server, e))?;
                }
                tls = Some(connection);
            }
        }
        let negotiated = match &mut tls {
            Some(connection) => negotiate(&mut rustls::Stream::new(connection, &mut stream), &server, uri, options)?,
            None => negotiate(&mut stream, &server, uri, options)?,
        };
        let (structured, contexts, offered_bitmaps, go) = negotiated;
        let export = ExportInfo {
            size: go.size,
            transmission_flags: go.flags,
            structured,
            contexts,
            offered_bitmaps,
            max_payload: go.max_payload,
            min_block: go.min_block,
        };
        tracing::debug!(server = %server, size = go.size, flags = go.flags, contexts = ?export.contexts, "NBD export opened");

        let clone = |s: &Stream| s.try_clone().map_err(|e| Error::io("connecting to NBD server", &server, e));
        // Kept to shut the connection down from any side.
        let socket = clone(&stream)?;
        let (reader, writer) = match tls {
            None => (Reader::Plain(clone(&stream)?), Writer::Plain(stream)),
            Some(connection) => {
                let session = TlsSession::new(connection, clone(&stream)?)
                    .map_err(|e| Error::io("starting the TLS writer for NBD server", &server, e))?;
                let reader = Reader::Tls(TlsReader::new(Arc::clone(&session), stream));
                (reader, Writer::Tls(session))
            }
        };
        let shared = Arc::new(Shared {
            server: server.clone(),
            state: Mutex::new(State::default()),
            socket,
        });
        let receiver = {
            let shared = Arc::clone(&shared);
            let contexts: Vec<u32> = export.contexts.iter().map(|(id, _)| *id).collect();
            let max_payload = export.max_payload;
            let structured = export.structured;
            std::thread::Builder::new()
                .name("nbd-replies".into())
                .spawn(move || {
                    let mut receiver = Receiver {
                        input: BufReader::with_capacity(256 << 10, reader),
                        shared: &shared,
                        contexts,
                        max_payload,
                        structured,
                    };
                    let why = match receiver.run() {
                        Ok(()) => "the server closed the connection".to_string(),
                        Err(why) => why,
                    };
                    shared.close(why);
                })
                .map_err(|e| Error::io("starting the NBD reply thread for", &server, e))?
        };
        Ok(Client {
            server,
            export,
            writer: Mutex::new(writer),
            shared,
            next_cookie: AtomicU64::new(1),
            receiver: Some(receiver),
        })
    }

    pub fn export(&self) -> &ExportInfo {
        &self.export
    }

    pub fn size(&self) -> u64 {
        self.export.size
    }

    /// Sends one request and waits for its whole reply.
    fn call(&self, command: u16, flags: u16, offset: u64, length: u32, payload: &[u8], expect: Expect) -> Result<Delivered> {
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.lock();
            if let Some(why) = &state.closed {
                return Err(lost(&self.server, why));
            }
            let pending = Pending { command: command_name(command), started: false, expect, error: None, reply };
            state.pending.insert(cookie, pending);
        }
        let sent = {
            let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer
                .write_all(&request(command, flags, cookie, offset, length))
                .and_then(|()| writer.write_all(payload))
        };
        if let Err(e) = sent {
            self.shared.close(format!("sending a request failed: {e}"));
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err(lost(&self.server, "the reply thread ended")))
    }

    fn check_range(&self, what: &str, offset: u64, length: u64) -> Result<()> {
        if offset.checked_add(length).is_none_or(|end| end > self.export.size) {
            return Err(Error::InvalidInput(format!(
                "NBD server {}: {what} of {length} bytes at {offset} lies past the export's end ({} bytes)",
                self.server, self.export.size
            )));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, in requests of at most the
    /// server's maximum block size. A range not aligned to the server's
    /// minimum block size is read as the aligned range around it.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range("a read", offset, buf.len() as u64)?;
        let min = u64::from(self.export.min_block);
        let end = offset + buf.len() as u64;
        let start = offset - offset % min;
        let aligned_end = end.div_ceil(min).saturating_mul(min).min(self.export.size);
        if !aligned_end.is_multiple_of(min) {
            return Err(self.unaligned("a read", offset, buf.len() as u64));
        }
        let n = (aligned_end - start) as usize;
        let whole = self.read_into(start, vec![0u8; n], 0..n)?;
        buf.copy_from_slice(&whole[(offset - start) as usize..(end - start) as usize]);
        Ok(())
    }

    /// Reads `span.len()` bytes at `offset` into `buf[span]` and returns
    /// `buf`: the buffer travels with each request and the reply thread
    /// fills it in place, so a read costs no allocation and no copy.
    pub fn read_into(&self, offset: u64, mut buf: Vec<u8>, span: std::ops::Range<usize>) -> Result<Vec<u8>> {
        let len = span.len() as u64;
        if buf.get(span.clone()).is_none() {
            return Err(Error::InvalidInput(format!(
                "NBD read of {len} bytes into a buffer of {} bytes at {}",
                buf.len(),
                span.start
            )));
        }
        self.check_range("a read", offset, len)?;
        let min = u64::from(self.export.min_block);
        if !offset.is_multiple_of(min) || !len.is_multiple_of(min) {
            self.read_at(offset, &mut buf[span])?;
            return Ok(buf);
        }
        let max = self.export.max_payload as usize;
        let mut done = 0;
        while done < span.len() {
            let n = max.min(span.len() - done);
            let at = offset + done as u64;
            let piece = span.start + done..span.start + done + n;
            let expect = Expect::Read { offset: at, data: buf, span: piece, covered: Coverage::default() };
            buf = match self.call(CMD_READ, 0, at, n as u32, &[], expect)? {
                Delivered::Data(data) => data,
                _ => unreachable!("a read delivers data"),
            };
            done += n;
        }
        Ok(buf)
    }

    fn unaligned(&self, what: &str, offset: u64, length: u64) -> Error {
        Error::InvalidInput(format!(
            "NBD server {}: {what} of {length} bytes at {offset} is not aligned to the export's minimum block size of {} bytes",
            self.server, self.export.min_block
        ))
    }

    fn check_aligned(&self, what: &str, offset: u64, length: u64) -> Result<()> {
        let min = u64::from(self.export.min_block);
        if !offset.is_multiple_of(min) || !length.is_multiple_of(min) {
            return Err(self.unaligned(what, offset, length));
        }
        Ok(())
    }

    /// Block status of `[offset, offset + length)` for every negotiated
    /// context: the extents of each, covering the same prefix of the
    /// range (the server may describe less than asked; the caller asks
    /// again from [`BlockStatus::end`]).
    pub fn block_status(&self, offset: u64, length: u32) -> Result<BlockStatus> {
        if self.export.contexts.is_empty() {
            return Err(Error::InvalidInput(format!(
                "NBD server {}: no metadata context was negotiated, so there is no block status",
                self.server
            )));
        }
        self.check_range("a block status request", offset, length.into())?;
        let expect = Expect::BlockStatus { extents: Vec::new() };
        let Delivered::Status(replies) = self.call(CMD_BLOCK_STATUS, 0, offset, length, &[], expect)? else {
            unreachable!("block status delivers extents")
        };
        // Each context's extents, cut to what every context covers.
        let end = offset + u64::from(length);
        let mut per_context = Vec::new();
        let mut covered_to = end;
        for (id, descriptors) in &replies {
            let mut at = offset;
            let mut extents = Vec::with_capacity(descriptors.len());
            for d in descriptors {
                if at >= end {
                    break;
                }
                let length = u64::from(d.length).min(end - at);
                extents.push(Extent { offset: at, length, flags: d.flags });
                at += length;
            }
            covered_to = covered_to.min(at);
            let name = self
                .export
                .contexts
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, n)| n.clone())
                .unwrap_or_default();
            per_context.push((name, extents));
        }
        for (_, extents) in &mut per_context {
            extents.retain(|e| e.offset < covered_to);
            if let Some(last) = extents.last_mut() {
                last.length = last.length.min(covered_to - last.offset);
            }
        }
        Ok(BlockStatus { end: covered_to, contexts: per_context })
    }

    /// Block status of the export's first `length` bytes, asked for a
    /// gigabyte at a time: `each(context, extents)` for every reply, each
    /// context's extents in order (so a caller keeps only what it needs).
    pub fn for_each_extent(&self, length: u64, mut each: impl FnMut(&str, &[Extent])) -> Result<()> {
        const STEP: u64 = 1 << 30;
        let mut at = 0;
        while at < length {
            let status = self.block_status(at, (length - at).min(STEP) as u32)?;
            if status.end <= at {
                return Err(Error::corrupt(
                    format!("block status of NBD server {}", self.server),
                    format!("it describes nothing from byte {at} on"),
                ));
            }
            for (name, extents) in &status.contexts {
                each(name, extents);
            }
            at = status.end;
        }
        Ok(())
    }

    fn writable(&self, what: &str, needed_flag: u16) -> Result<()> {
        if self.export.read_only() {
            return Err(Error::InvalidInput(format!(
                "NBD server {}: the export is read-only; {what} needs a writable export",
                self.server
            )));
        }
        if needed_flag != 0 && self.export.transmission_flags & needed_flag == 0 {
            return Err(Error::InvalidInput(format!("NBD server {}: the export does not support {what}", self.server)));
        }
        Ok(())
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.writable("writing", 0)?;
        self.check_range("a write", offset, data.len() as u64)?;
        self.check_aligned("a write", offset, data.len() as u64)?;
        let max = self.export.max_payload as usize;
        for (i, piece) in data.chunks(max).enumerate() {
            let at = offset + (i * max) as u64;
            self.call(CMD_WRITE, 0, at, piece.len() as u32, piece, Expect::Done)?;
        }
        Ok(())
    }

    pub fn can_write_zeroes(&self) -> bool {
        self.export.transmission_flags & TRANSMIT_SEND_WRITE_ZEROES != 0
    }

    /// Zeroes a range; `punch` lets the server deallocate it (a hole).
    pub fn write_zeroes(&self, offset: u64, length: u64, punch: bool) -> Result<()> {
        self.writable("write-zeroes", TRANSMIT_SEND_WRITE_ZEROES)?;
        self.check_range("a write-zeroes", offset, length)?;
        self.check_aligned("a write-zeroes", offset, length)?;
        let flags = if punch { 0 } else { CMD_FLAG_NO_HOLE };
        self.ranged(CMD_WRITE_ZEROES, flags, offset, length)
    }

    /// A payload-less command over a range, in requests of at most the
    /// server's maximum block size (a multiple of its minimum).
    fn ranged(&self, command: u16, flags: u16, offset: u64, length: u64) -> Result<()> {
        let step = u64::from(self.export.max_payload);
        let mut at = offset;
        while at < offset + length {
            let n = step.min(offset + length - at);
            self.call(command, flags, at, n as u32, &[], Expect::Done)?;
            at += n;
        }
        Ok(())
    }

    /// Makes every completed write durable on the server (when it can).
    pub fn flush(&self) -> Result<()> {
        if self.export.transmission_flags & TRANSMIT_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.call(CMD_FLUSH, 0, 0, 0, &[], Expect::Done).map(|_| ())
    }
}

/// What the option phase settles: structured replies, the granted
/// metadata contexts, the bitmaps offered when one asked for is missing,
/// and the export's size, flags and largest payload.
type Negotiated = (bool, Vec<(u32, String)>, Vec<String>, Go);

/// The options after the greeting (and TLS): structured replies, metadata
/// contexts, then `NBD_OPT_GO`.
fn negotiate<S: Read + Write>(stream: &mut S, server: &str, uri: &NbdUri, options: &ConnectOptions) -> Result<Negotiated> {
    let mut handshake = Handshake { stream, server };
    let negotiated = options_then_go(&mut handshake, uri, options);
    if negotiated.is_err() {
        handshake.abort();
    }
    negotiated
}

fn options_then_go<S: Read + Write>(handshake: &mut Handshake<'_, S>, uri: &NbdUri, options: &ConnectOptions) -> Result<Negotiated> {
    let structured = handshake.structured_replies()?;
    let contexts = if structured && !options.contexts.is_empty() {
        let queries: Vec<&str> = options.contexts.iter().map(String::as_str).collect();
        handshake.meta_contexts(&uri.export, &queries, false)?
    } else {
        Vec::new()
    };
    // Name what the server does offer when a bitmap asked for is missing,
    // so the message can say which exist.
    let missing_bitmap = options
        .contexts
        .iter()
        .any(|c| c.starts_with(DIRTY_BITMAP_PREFIX) && !contexts.iter().any(|(_, n)| n == c));
    let offered_bitmaps = if missing_bitmap && structured {
        handshake
            .meta_contexts(&uri.export, &[DIRTY_BITMAP_PREFIX], true)?
            .into_iter()
            .filter_map(|(_, n)| n.strip_prefix(DIRTY_BITMAP_PREFIX).map(str::to_string))
            .collect()
    } else {
        Vec::new()
    };
    let go = handshake.go(&uri.export).map_err(|e| match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{m} (export {:?})", uri.export)),
        e => e,
    })?;
    Ok((structured, contexts, offered_bitmaps, go))
}

impl Drop for Client {
    fn drop(&mut self) {
        {
            // A soft disconnect, unless the connection already ended
            // (after a broken reply nothing more is said to the server).
            let healthy = self.shared.lock().closed.is_none();
            let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if healthy {
                let _ = writer.write_all(&request(CMD_DISC, 0, 0, 0, 0));
            }
            if let Writer::Tls(session) = &*writer {
                session.close();
            }
        }
        self.shared.socket.shutdown();
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_FLUSH => "flush",
        CMD_WRITE_ZEROES => "write-zeroes",
        CMD_BLOCK_STATUS => "block status",
        _ => "request",
    }
}

