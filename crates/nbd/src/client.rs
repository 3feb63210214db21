//! A connection in the transmission phase: requests from any number of
//! threads on one socket, matched to their replies by cookie.
//!
//! One connection, not one per thread: qemu-nbd serves a single client
//! unless told otherwise (`--shared`), and one socket with many requests
//! in flight keeps a link busy as well as several. Callers send under a
//! lock; one receiver thread reads every reply, checks it against the
//! request it answers (offsets and lengths inside the request, reads
//! covered exactly once, contexts that were negotiated) and hands it to
//! the waiting caller. A reply that breaks the protocol ends the
//! connection: every waiting and later request fails with the reason.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::handshake::{ExportInfo, Handshake};
use crate::transport::{client_config, server_name, Reader, Stream, TlsReader, TlsSession, Writer};
use crate::uri::{Address, NbdUri};
use crate::wire::*;

/// How long a read from the server may wait: a whole handshake message,
/// or the rest of a reply once it has begun.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long requests may wait with nothing at all from the server.
const STALL_LIMIT: Duration = Duration::from_secs(300);

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

/// One block status reply: each context's extents (by name), all ending
/// at `end`.
#[derive(Debug, Clone)]
pub struct BlockStatus {
    pub end: u64,
    pub contexts: Vec<(String, Vec<Extent>)>,
}

impl BlockStatus {
    pub fn of(&self, context: &str) -> Option<&[Extent]> {
        self.contexts.iter().find(|(n, _)| n == context).map(|(_, e)| e.as_slice())
    }
}

/// What a request waits for, and what its reply has delivered so far.
enum Expect {
    /// `length` bytes at `offset`; `covered` the pieces delivered.
    Read { offset: u64, data: Vec<u8>, covered: Vec<(u64, u64)> },
    BlockStatus { extents: Vec<(u32, Vec<Descriptor>)> },
    Done,
}

struct Pending {
    command: &'static str,
    expect: Expect,
    error: Option<(u32, String)>,
    reply: mpsc::SyncSender<Result<Delivered>>,
}

enum Delivered {
    Data(Vec<u8>),
    Status(Vec<(u32, Vec<Descriptor>)>),
    Done,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

struct Shared {
    server: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection: every waiting request fails with `why`.
    fn close(&self, why: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(why.clone());
        }
        for (_, p) in state.pending.drain() {
            let _ = p.reply.send(Err(lost(&self.server, &why)));
        }
    }
}

fn lost(server: &str, why: &str) -> Error {
    Error::io(
        "talking to NBD server",
        server,
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
    )
}

/// A connected NBD client. `Sync`: share it between threads, each with
/// its requests in flight.
pub struct Client {
    server: String,
    export: ExportInfo,
    writer: Mutex<Writer>,
    shutdown_handle: Stream,
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
        let (structured, contexts, offered_bitmaps, (size, transmission_flags, max_payload)) = negotiated;
        let export = ExportInfo { size, transmission_flags, structured, contexts, offered_bitmaps, max_payload };
        tracing::debug!(server = %server, size, flags = transmission_flags, contexts = ?export.contexts, "NBD export opened");

        let clone = |s: &Stream| s.try_clone().map_err(|e| Error::io("connecting to NBD server", &server, e));
        let shutdown_handle = clone(&stream)?;
        let (reader, writer) = match tls {
            None => (Reader::Plain(clone(&stream)?), Writer::Plain(stream)),
            Some(connection) => {
                let session = TlsSession::new(connection, clone(&stream)?);
                let reader = Reader::Tls(TlsReader::new(Arc::clone(&session), stream));
                (reader, Writer::Tls(session))
            }
        };
        let shared = Arc::new(Shared { server: server.clone(), state: Mutex::new(State::default()) });
        let receiver = {
            let shared = Arc::clone(&shared);
            let contexts: Vec<u32> = export.contexts.iter().map(|(id, _)| *id).collect();
            let max_payload = export.max_payload;
            std::thread::Builder::new()
                .name("nbd-replies".into())
                .spawn(move || {
                    let mut receiver = Receiver {
                        input: BufReader::with_capacity(256 << 10, reader),
                        shared: &shared,
                        contexts,
                        max_payload,
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
            shutdown_handle,
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

    pub fn server(&self) -> &str {
        &self.server
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
            state.pending.insert(cookie, Pending { command: command_name(command), expect, error: None, reply });
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
    /// server's maximum payload.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range("a read", offset, buf.len() as u64)?;
        let max = self.export.max_payload as usize;
        for (i, piece) in buf.chunks_mut(max).enumerate() {
            let at = offset + (i * max) as u64;
            let expect = Expect::Read { offset: at, data: vec![0u8; piece.len()], covered: Vec::new() };
            match self.call(CMD_READ, 0, at, piece.len() as u32, &[], expect)? {
                Delivered::Data(data) => piece.copy_from_slice(&data),
                _ => unreachable!("a read delivers data"),
            }
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
    /// gigabyte at a time: each negotiated context's extents, in order.
    pub fn extents(&self, length: u64) -> Result<Vec<(String, Vec<Extent>)>> {
        const STEP: u64 = 1 << 30;
        let mut all: Vec<(String, Vec<Extent>)> = Vec::new();
        let mut at = 0;
        while at < length {
            let status = self.block_status(at, (length - at).min(STEP) as u32)?;
            if status.end <= at {
                return Err(Error::corrupt(
                    format!("block status of NBD server {}", self.server),
                    format!("it describes nothing from byte {at} on"),
                ));
            }
            for (name, extents) in status.contexts {
                match all.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, known)) => known.extend(extents),
                    None => all.push((name, extents)),
                }
            }
            at = status.end;
        }
        Ok(all)
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

    pub fn can_trim(&self) -> bool {
        self.export.transmission_flags & TRANSMIT_SEND_TRIM != 0
    }

    /// Zeroes a range; `punch` lets the server deallocate it (a hole).
    pub fn write_zeroes(&self, offset: u64, length: u64, punch: bool) -> Result<()> {
        self.writable("write-zeroes", TRANSMIT_SEND_WRITE_ZEROES)?;
        self.check_range("a write-zeroes", offset, length)?;
        let flags = if punch { 0 } else { CMD_FLAG_NO_HOLE };
        self.ranged(CMD_WRITE_ZEROES, flags, offset, length)
    }

    pub fn trim(&self, offset: u64, length: u64) -> Result<()> {
        self.writable("trim", TRANSMIT_SEND_TRIM)?;
        self.check_range("a trim", offset, length)?;
        self.ranged(CMD_TRIM, 0, offset, length)
    }

    /// A payload-less command over a range, in requests of at most 1 GiB.
    fn ranged(&self, command: u16, flags: u16, offset: u64, length: u64) -> Result<()> {
        const STEP: u64 = 1 << 30;
        let mut at = offset;
        while at < offset + length {
            let n = STEP.min(offset + length - at);
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
type Negotiated = (bool, Vec<(u32, String)>, Vec<String>, (u64, u16, u32));

/// The options after the greeting (and TLS): structured replies, metadata
/// contexts, then `NBD_OPT_GO`.
fn negotiate<S: Read + Write>(stream: &mut S, server: &str, uri: &NbdUri, options: &ConnectOptions) -> Result<Negotiated> {
    let mut handshake = Handshake { stream, server };
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
            let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writer.write_all(&request(CMD_DISC, 0, 0, 0, 0));
        }
        self.shutdown_handle.shutdown();
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
        CMD_TRIM => "trim",
        CMD_WRITE_ZEROES => "write-zeroes",
        CMD_BLOCK_STATUS => "block status",
        _ => "request",
    }
}

/// The reply thread's reading side.
struct Receiver<'a, R> {
    input: BufReader<R>,
    shared: &'a Shared,
    contexts: Vec<u32>,
    max_payload: u32,
}

impl<R: Read> Receiver<'_, R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::result::Result<(), String> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            _ => format!("reading a reply failed: {e}"),
        })
    }

    /// Reads replies until the connection ends; returns why it ended.
    fn run(&mut self) -> std::result::Result<(), String> {
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
        let result = if error != 0 {
            Err(refused(server, pending.command, error, ""))
        } else {
            match &mut pending.expect {
                Expect::Read { data, .. } => {
                    let mut data = std::mem::take(data);
                    if let Err(why) = self.read_exact(&mut data) {
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
        let outcome = self.chunk(&mut pending, kind, length);
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
            (None, Expect::Read { data, mut covered, .. }) => {
                covered.sort_unstable();
                let mut at = 0;
                for (a, b) in covered {
                    if a != at {
                        break;
                    }
                    at = b;
                }
                if at != data.len() as u64 {
                    return Err(format!("the server ended a read of {} bytes having sent {at} bytes of it", data.len()));
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
            (REPLY_TYPE_OFFSET_DATA, Expect::Read { offset, data, covered }) => {
                if length < 8 || length - 8 > self.max_payload.max(data.len() as u32) {
                    return Err(format!("a data chunk of {length} bytes"));
                }
                let mut at = [0u8; 8];
                self.input.read_exact(&mut at).map_err(|e| format!("reading a reply failed: {e}"))?;
                let (start, len) = place(*offset, data.len(), u64::from_be_bytes(at), u64::from(length - 8))?;
                overlap_check(covered, start, len)?;
                self.input
                    .read_exact(&mut data[start as usize..(start + len) as usize])
                    .map_err(|e| format!("reading a reply failed: {e}"))?;
                Ok(())
            }
            (REPLY_TYPE_OFFSET_HOLE, Expect::Read { offset, data, covered }) => {
                if length != 12 {
                    return Err(format!("a hole chunk of {length} bytes, not 12"));
                }
                let mut payload = [0u8; 12];
                self.read_exact(&mut payload)?;
                let mut f = Fields::new(&payload);
                let (at, size) = (f.u64().unwrap_or(0), f.u32().unwrap_or(0));
                let (start, len) = place(*offset, data.len(), at, u64::from(size))?;
                overlap_check(covered, start, len)?;
                data[start as usize..(start + len) as usize].fill(0);
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

fn overlap_check(covered: &mut Vec<(u64, u64)>, start: u64, len: u64) -> std::result::Result<(), String> {
    let end = start + len;
    if covered.iter().any(|&(a, b)| a < end && start < b) {
        return Err(format!("two chunks of one read both cover bytes {start}..{end}"));
    }
    covered.push((start, end));
    Ok(())
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

    #[test]
    fn chunks_must_lie_inside_their_read() {
        assert_eq!(place(100, 50, 120, 30), Ok((20, 30)));
        assert!(place(100, 50, 99, 1).is_err());
        assert!(place(100, 50, 120, 31).is_err());
        assert!(place(100, 50, 120, 0).is_err());
        assert!(place(100, 50, u64::MAX, 2).is_err());
        let mut covered = Vec::new();
        overlap_check(&mut covered, 0, 10).unwrap();
        overlap_check(&mut covered, 10, 10).unwrap();
        assert!(overlap_check(&mut covered, 5, 1).is_err());
    }
}
