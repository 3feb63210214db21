//! The NBD protocol's numbers and fixed-size messages (the NBD project's
//! `doc/proto.md`): what the handshake and the transmission phase put on
//! the wire, encoded here and decoded from hostile bytes into errors.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;

pub const OPT_ABORT: u32 = 2;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TRANSMIT_HAS_FLAGS: u16 = 1 << 0;
pub const TRANSMIT_READ_ONLY: u16 = 1 << 1;
pub const TRANSMIT_SEND_FLUSH: u16 = 1 << 2;
pub const TRANSMIT_SEND_WRITE_ZEROES: u16 = 1 << 6;

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME` flag.
pub const STATE_DIRTY: u32 = 1;

/// Longest option reply this client accepts: every option it sends is
/// answered in far less (strings are at most 4096 bytes).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Longest structured error message, and longest block status reply
/// (a 4-byte context id, then 8-byte descriptors).
pub const MAX_ERROR_CHUNK: u32 = 4096 + 6 + 8;
pub const MAX_STATUS_DESCRIPTORS: u32 = 1 << 20;

pub fn request(command: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r[4..6].copy_from_slice(&flags.to_be_bytes());
    r[6..8].copy_from_slice(&command.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&length.to_be_bytes());
    r
}

pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(16 + data.len());
    o.extend_from_slice(&IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&option.to_be_bytes());
    o.extend_from_slice(&(data.len() as u32).to_be_bytes());
    o.extend_from_slice(data);
    o
}

/// A length-prefixed string, as option data carries them.
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The name of an option, for messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "an option",
    }
}

/// What an option error reply means, in words.
pub fn option_error(reply: u32) -> String {
    match reply {
        REP_ERR_UNSUP => "not supported by the server".into(),
        REP_ERR_POLICY => "refused by the server's policy".into(),
        REP_ERR_INVALID => "invalid, says the server".into(),
        REP_ERR_TLS_REQD => "refused: the server requires TLS (use an nbds:// URI)".into(),
        REP_ERR_UNKNOWN => "refused: the server has no such export".into(),
        REP_ERR_SHUTDOWN => "refused: the server is shutting down".into(),
        REP_ERR_BLOCK_SIZE_REQD => "refused: the server requires block size negotiation".into(),
        other => format!("refused with error {:#x}", other),
    }
}

/// A big-endian reader over a message's bytes that fails instead of
/// panicking when the bytes run out.
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }

    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// One descriptor of a block status reply: `length` bytes with `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub length: u32,
    pub flags: u32,
}

/// A block status chunk's payload: its context id and descriptors.
pub fn block_status(payload: &[u8]) -> Result<(u32, Vec<Descriptor>), String> {
    let mut f = Fields::new(payload);
    let context = f.u32().ok_or("a block status reply shorter than its context id")?;
    let rest = f.rest();
    if rest.is_empty() || !rest.len().is_multiple_of(8) {
        return Err(format!(
            "a block status reply of {} bytes is not a context id and whole descriptors",
            payload.len()
        ));
    }
    let descriptors = rest
        .chunks_exact(8)
        .map(|d| Descriptor {
            length: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            flags: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        })
        .collect();
    Ok((context, descriptors))
}

/// A structured error chunk's payload: the error number and message.
pub fn error_chunk(payload: &[u8]) -> Result<(u32, String), String> {
    let mut f = Fields::new(payload);
    let (Some(error), Some(len)) = (f.u32(), f.u16()) else {
        return Err("an error reply shorter than its fixed fields".into());
    };
    let message = f
        .take(len as usize)
        .ok_or("an error reply's message runs past its end")?;
    Ok((error, String::from_utf8_lossy(message).into_owned()))
}

/// An NBD error number in words (the protocol's numbers are Linux's).
pub fn errno_text(error: u32) -> String {
    let known = matches!(error, 1 | 5 | 12 | 22 | 28 | 75 | 95 | 108);
    if known {
        std::io::Error::from_raw_os_error(error as i32).to_string()
    } else {
        format!("error {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_status_payloads_are_checked() {
        let mut p = 7u32.to_be_bytes().to_vec();
        p.extend_from_slice(&65536u32.to_be_bytes());
        p.extend_from_slice(&STATE_ZERO.to_be_bytes());
        assert_eq!(
            block_status(&p).unwrap(),
            (7, vec![Descriptor { length: 65536, flags: STATE_ZERO }])
        );
        assert!(block_status(&p[..3]).is_err());
        assert!(block_status(&p[..4]).is_err());
        assert!(block_status(&p[..9]).is_err());
    }

    #[test]
    fn error_chunks_are_checked() {
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        assert_eq!(error_chunk(&p).unwrap(), (5, "bad".into()));
        assert!(error_chunk(&p[..8]).is_err());
        assert!(error_chunk(&p[..5]).is_err());
    }
}
