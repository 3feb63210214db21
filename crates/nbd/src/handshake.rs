//! The handshake: fixed newstyle negotiation up to `NBD_OPT_GO`, with
//! structured replies and the metadata contexts a backup asks for.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::wire::*;

/// What the server said about the export during the handshake.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
    /// Whether replies may be structured (needed for block status).
    pub structured: bool,
    /// The metadata contexts the server granted: `(id, name)`.
    pub contexts: Vec<(u32, String)>,
    /// When a dirty bitmap asked for was not granted: the names of the
    /// bitmaps the server lists for the export.
    pub offered_bitmaps: Vec<String>,
    /// The largest request this client sends: the server's maximum block
    /// size, at most the protocol's customary 32 MiB (also when it names
    /// none).
    pub max_payload: u32,
    /// The server's minimum block size: offsets and lengths of requests
    /// are multiples of it (1 when it names none).
    pub min_block: u32,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.transmission_flags & TRANSMIT_READ_ONLY != 0
    }

    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|(_, n)| n == name).map(|(id, _)| *id)
    }
}

/// What `NBD_OPT_GO` settles about the export.
pub(crate) struct Go {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub max_payload: u32,
}

/// The protocol's usual limit on a request's payload when the server
/// names none.
const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

pub(crate) struct Handshake<'a, S> {
    pub stream: &'a mut S,
    pub server: &'a str,
}

impl<S: Read + Write> Handshake<'_, S> {
    fn protocol(&self, detail: impl ToString) -> Error {
        Error::corrupt(format!("handshake with NBD server {}", self.server), detail)
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io("negotiating with NBD server", self.server, e)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf).map_err(|e| self.io(e))
    }

    fn read_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).map_err(|e| self.io(e))
    }

    /// The server's greeting, answered with our flags.
    pub fn greet(&mut self) -> Result<()> {
        let magic = self.read_u64()?;
        if magic != NBDMAGIC {
            return Err(self.protocol(format!("it greets with {magic:#x}, not NBDMAGIC: this is not an NBD server")));
        }
        let style = self.read_u64()?;
        if style == OLDSTYLE_MAGIC {
            return Err(self.protocol("it speaks the oldstyle protocol, which has no export names or block status; serve the export newstyle (qemu-nbd and nbdkit do by default)"));
        }
        if style != IHAVEOPT {
            return Err(self.protocol(format!("unknown greeting {style:#x}")));
        }
        let mut flags = [0u8; 2];
        self.read_exact(&mut flags)?;
        let flags = u16::from_be_bytes(flags);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.protocol("it does not speak fixed newstyle negotiation"));
        }
        let ours = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        self.send(&ours.to_be_bytes())
    }

    /// One option reply: `(type, data)`, checked to answer `option`.
    fn reply(&mut self, option: u32) -> Result<(u32, Vec<u8>)> {
        let magic = self.read_u64()?;
        let mut head = [0u8; 12];
        self.read_exact(&mut head)?;
        let mut f = Fields::new(&head);
        let (answered, kind, len) = (f.u32().unwrap_or(0), f.u32().unwrap_or(0), f.u32().unwrap_or(0));
        if magic != OPTION_REPLY_MAGIC {
            return Err(self.protocol(format!("option reply magic {magic:#x}")));
        }
        if answered != option {
            return Err(self.protocol(format!(
                "it answered option {answered} while {} was asked",
                option_name(option)
            )));
        }
        if len > MAX_OPTION_REPLY {
            return Err(self.protocol(format!("an option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data)?;
        Ok((kind, data))
    }

    fn refused(&self, option: u32, kind: u32, data: &[u8]) -> Error {
        let message = String::from_utf8_lossy(data);
        let message = if message.is_empty() { String::new() } else { format!(" ({message})") };
        Error::InvalidInput(format!(
            "NBD server {}: {} {}{message}",
            self.server,
            option_name(option),
            option_error(kind)
        ))
    }

    /// `NBD_OPT_STARTTLS`; the caller then runs the TLS handshake.
    pub fn start_tls(&mut self) -> Result<()> {
        self.send(&option(OPT_STARTTLS, &[]))?;
        match self.reply(OPT_STARTTLS)? {
            (REP_ACK, _) => Ok(()),
            (kind, data) => Err(self.refused(OPT_STARTTLS, kind, &data)),
        }
    }

    /// Asks for structured replies; false when the server has none.
    pub fn structured_replies(&mut self) -> Result<bool> {
        self.send(&option(OPT_STRUCTURED_REPLY, &[]))?;
        match self.reply(OPT_STRUCTURED_REPLY)? {
            (REP_ACK, _) => Ok(true),
            (REP_ERR_UNSUP, _) => Ok(false),
            (kind, data) => Err(self.refused(OPT_STRUCTURED_REPLY, kind, &data)),
        }
    }

    /// Sets (or, with `list`, lists) metadata contexts matching `queries`;
    /// returns the ones the server has.
    pub fn meta_contexts(&mut self, export: &str, queries: &[&str], list: bool) -> Result<Vec<(u32, String)>> {
        let option_code = if list { OPT_LIST_META_CONTEXT } else { OPT_SET_META_CONTEXT };
        let mut data = Vec::new();
        put_string(&mut data, export);
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            put_string(&mut data, q);
        }
        self.send(&option(option_code, &data))?;
        let mut contexts = Vec::new();
        loop {
            match self.reply(option_code)? {
                (REP_ACK, _) => return Ok(contexts),
                (REP_META_CONTEXT, data) => {
                    let mut f = Fields::new(&data);
                    let id = f.u32().ok_or_else(|| self.protocol("a metadata context reply without its id"))?;
                    let name = std::str::from_utf8(f.rest())
                        .map_err(|_| self.protocol("a metadata context name that is not UTF-8"))?;
                    if contexts.len() > 4096 {
                        return Err(self.protocol("more than 4096 metadata contexts"));
                    }
                    if !list && contexts.iter().any(|(known, _)| *known == id) {
                        return Err(self.protocol(format!("metadata context id {id} given twice")));
                    }
                    contexts.push((id, name.to_string()));
                }
                (REP_ERR_UNSUP, _) => return Ok(Vec::new()),
                (kind, data) => return Err(self.refused(option_code, kind, &data)),
            }
        }
    }

    /// Ends the option phase without an export (the soft disconnect the
    /// protocol asks of a client that gives up); best effort.
    pub fn abort(&mut self) {
        let _ = self.stream.write_all(&option(OPT_ABORT, &[]));
    }

    /// `NBD_OPT_GO`: selects the export and ends the handshake; returns
    /// its size, transmission flags and block sizes.
    pub fn go(&mut self, export: &str) -> Result<Go> {
        let mut data = Vec::new();
        put_string(&mut data, export);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send(&option(OPT_GO, &data))?;
        let mut export_info = None;
        let (mut min_block, mut max_payload) = (1, DEFAULT_MAX_PAYLOAD);
        loop {
            match self.reply(OPT_GO)? {
                (REP_ACK, _) => {
                    let (size, flags) = export_info
                        .ok_or_else(|| self.protocol("it ended NBD_OPT_GO without the export's size"))?;
                    return Ok(Go { size, flags, min_block, max_payload });
                }
                (REP_INFO, data) => {
                    let mut f = Fields::new(&data);
                    match f.u16() {
                        Some(INFO_EXPORT) => {
                            let (Some(size), Some(flags), []) = (f.u64(), f.u16(), f.rest()) else {
                                return Err(self.protocol(format!("an NBD_INFO_EXPORT of {} bytes, not 12", data.len())));
                            };
                            if size > i64::MAX as u64 {
                                return Err(self.protocol(format!("an export of {size} bytes")));
                            }
                            if flags & TRANSMIT_HAS_FLAGS == 0 {
                                return Err(self.protocol("transmission flags without NBD_FLAG_HAS_FLAGS"));
                            }
                            export_info = Some((size, flags));
                        }
                        Some(INFO_BLOCK_SIZE) => {
                            let (Some(min), Some(_preferred), Some(max), []) = (f.u32(), f.u32(), f.u32(), f.rest()) else {
                                return Err(self.protocol(format!("an NBD_INFO_BLOCK_SIZE of {} bytes, not 14", data.len())));
                            };
                            // The protocol's rules for the limits kept here
                            // (the preferred size is only a hint).
                            let sane = min.is_power_of_two()
                                && min <= 64 << 10
                                && max >= min
                                && (max.is_multiple_of(min) || max == u32::MAX);
                            if !sane {
                                return Err(self.protocol(format!(
                                    "block sizes min {min}, max {max} break the protocol's rules"
                                )));
                            }
                            (min_block, max_payload) = (min, max.min(DEFAULT_MAX_PAYLOAD));
                        }
                        Some(_) => {}
                        None => return Err(self.protocol("an NBD_REP_INFO without its type")),
                    }
                }
                (kind, data) => return Err(self.refused(OPT_GO, kind, &data)),
            }
        }
    }
}
