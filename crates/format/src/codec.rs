//! Little-endian binary encoding shared by every on-disk record.
//!
//! The decoder never trusts a length or count it reads: each is checked
//! against the bytes that remain before anything is sliced or allocated, so
//! a damaged or hostile object yields [`DecodeError`] instead of a panic or
//! an oversized allocation.

use std::fmt;

/// Why a record could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.what, self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }

    /// A `u32` length followed by the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("encoded field longer than 4 GiB");
        self.u32(len).raw(v)
    }

    /// A `u32` element count; the caller encodes the elements.
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("more than 4 billion elements in one record"))
    }
}

pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// `what` names the record in errors ("tree", "manifest", ...).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            what: self.what,
            offset: self.pos,
            reason: reason.into(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn raw(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(self.error(format!(
                "needs {len} bytes, only {} remain",
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.raw(len)
    }

    /// An element count, refused when `min_element_len` bytes per element
    /// could not possibly fit in what remains; this bounds any allocation
    /// sized from it by the record's own length.
    pub fn count(&mut self, min_element_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_element_len.max(1)) > self.remaining() {
            return Err(self.error(format!(
                "claims {n} elements, more than the {} remaining bytes can hold",
                self.remaining()
            )));
        }
        Ok(n)
    }

    pub fn expect_magic(&mut self, magic: &[u8]) -> Result<(), DecodeError> {
        let found = self.raw(magic.len())?;
        if found != magic {
            return Err(self.error(format!("bad magic {:?}", String::from_utf8_lossy(found))));
        }
        Ok(())
    }

    /// Refuses trailing bytes: a record must be consumed exactly.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// The smaller of `n` and `len`, as a `usize`: a 64-bit size or offset
/// from a file capped by a length in memory, without truncating (a value
/// too large for `usize` is larger than any `len`).
pub fn min_len(n: u64, len: usize) -> usize {
    usize::try_from(n).map_or(len, |n| n.min(len))
}

/// Golden files pin on-disk encodings: a test encodes a sample and
/// compares it with bytes committed under `tests/golden/` of the crate
/// under test. Set `STRATA_BLESS=1` to (re)write them after a deliberate
/// format change, which must also bump the format's version. Test support
/// for every crate's golden-file tests.
/// Where golden file `name` of the crate under test is. Taken from the
/// crate's directory as `cargo test` gives it when running, not as it was
/// when compiled: test binaries in a build cache shared by several
/// checkouts may have been compiled in one that is gone.
#[doc(hidden)]
pub fn golden_path(name: &str) -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from);
    crate_dir.join("tests/golden").join(name)
}

#[doc(hidden)]
pub fn assert_golden(name: &str, actual: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if std::env::var_os("STRATA_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let golden =
        std::fs::read(&path).unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    assert!(
        golden == actual,
        "encoding differs from golden file {}",
        path.display()
    );
    golden
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_every_field_kind() {
        let mut e = Encoder::new();
        e.u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX)
            .i64(-5)
            .bytes(b"abc")
            .count(2);
        let bytes = e.into_bytes();
        let mut d = Decoder::new(&bytes, "test");
        assert_eq!(d.u8().unwrap(), 7);
        assert_eq!(d.u16().unwrap(), 0x1234);
        assert_eq!(d.u32().unwrap(), 0xdead_beef);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.i64().unwrap(), -5);
        assert_eq!(d.bytes().unwrap(), b"abc");
        assert!(
            d.count(1).is_err(),
            "count of 2 with no bytes left must be refused"
        );
    }

    #[test]
    fn min_len_caps_without_truncating() {
        assert_eq!(min_len(3, 10), 3);
        assert_eq!(min_len(10, 3), 3);
        assert_eq!(min_len(u64::MAX, 7), 7);
        assert_eq!(
            min_len(1 << 32, usize::MAX),
            usize::try_from(1u64 << 32).unwrap_or(usize::MAX)
        );
    }

    #[test]
    fn oversized_length_is_an_error_not_a_panic() {
        let mut e = Encoder::new();
        e.u32(u32::MAX);
        let bytes = e.into_bytes();
        let err = Decoder::new(&bytes, "tree").bytes().unwrap_err();
        assert!(err.to_string().contains("tree"), "{err}");
    }
}
