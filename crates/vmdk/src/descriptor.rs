//! The text descriptor of a VMDK: its create type and extents, from a
//! descriptor file or the descriptor embedded in a sparse extent.
//!
//! Descriptors are text in UTF-8 or, as older VMware hosts wrote them, in
//! `encoding="windows-1252"`; either may start with a byte-order mark and
//! a header of comments of any length, so a descriptor is recognised by its
//! lines anywhere in a bounded prefix, never by a fixed offset.

use crate::error::{Error, Result};

/// Largest descriptor we read; real ones are a few hundred bytes.
pub const MAX_DESCRIPTOR_LEN: u64 = 1 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Characters of windows-1252's bytes 0x80..=0x9F; the five bytes it
/// leaves undefined map to the C1 control of the same value, so decoding
/// and encoding are inverse for every byte.
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{8D}', '\u{017D}', '\u{8F}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{9D}', '\u{017E}', '\u{0178}',
];

/// How a descriptor's bytes were decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Windows1252,
}

fn decode_1252(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => CP1252_HIGH[(b - 0x80) as usize],
            _ => b as char,
        })
        .collect()
}

/// The bytes `text` had in windows-1252 (`None` if it has a character
/// that encoding lacks): the file name as written on a host that used it.
pub fn encode_1252(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| match u8::try_from(c) {
            Ok(b @ (0..=0x7F | 0xA0..=0xFF)) => Some(b),
            _ => CP1252_HIGH
                .iter()
                .position(|h| *h == c)
                .and_then(|i| u8::try_from(i).ok())
                .map(|i| 0x80 + i),
        })
        .collect()
}

/// The text of a prefix, which ends at its first NUL (`None` if there is
/// no text, or binary data follows it). What follows the NUL may be more
/// text: qemu rewrites a descriptor in place when it sets a new `CID=`,
/// which it prints without leading zeros, so a shorter descriptor leaves
/// the old one's last bytes past its NUL; qemu itself reads only up to it.
pub fn text_part(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let after_text = &bytes[end..];
    (end > 0 && after_text.iter().all(|&b| b == 0 || is_text_byte(b))).then(|| &bytes[..end])
}

/// True when `bytes` could be descriptor text: no control characters but
/// tab, line breaks and form feed (NUL padding is cut off first).
pub fn is_text(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    bytes.iter().all(|&b| is_text_byte(b))
}

fn is_text_byte(b: u8) -> bool {
    b >= 0x20 && b != 0x7F || matches!(b, b'\t' | b'\n' | b'\r' | 0x0C)
}

/// True when a text prefix holds a line a descriptor has: the
/// `# Disk DescriptorFile` banner or a `createType=` setting.
pub fn looks_like_descriptor(prefix: &[u8]) -> bool {
    let Some(prefix) = text_part(prefix).filter(|t| is_text(t)) else {
        return false;
    };
    prefix.split(|b| *b == b'\n').any(|line| {
        let line = line.strip_prefix(UTF8_BOM).unwrap_or(line).trim_ascii();
        line.starts_with(b"# Disk DescriptorFile")
            || line
                .split(|b| *b == b'=')
                .next()
                .is_some_and(|key| line.contains(&b'=') && key.trim_ascii() == b"createType")
    })
}

/// Decodes descriptor bytes as their `encoding=` line says (UTF-8 when
/// there is none, windows-1252 when such a file is not valid UTF-8).
pub fn decode(bytes: &[u8], origin: &str) -> Result<(String, TextEncoding)> {
    // Like qemu, read up to the first NUL (descriptors are padded with them).
    let bytes = &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())];
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let not_text = |why: String| Error::corrupt(format!("VMDK descriptor {origin}"), why);
    if !is_text(bytes) {
        return Err(not_text("it holds binary data, not text".into()));
    }
    let declared = bytes.split(|b| *b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim();
        let (key, value) = line.split_once('=')?;
        (key.trim() == "encoding").then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    });
    let utf8 = std::str::from_utf8(bytes).ok();
    match (declared.as_deref(), utf8) {
        (Some("windows-1252" | "cp1252" | "iso-8859-1" | "latin1"), _) | (None, None) => {
            Ok((decode_1252(bytes), TextEncoding::Windows1252))
        }
        (Some("utf-8" | "utf8") | None, Some(text)) => Ok((text.to_string(), TextEncoding::Utf8)),
        (Some(_), Some(text)) if text.is_ascii() => Ok((text.to_string(), TextEncoding::Utf8)),
        (Some("utf-8" | "utf8"), None) => Err(not_text(
            "it declares encoding UTF-8 but is not valid UTF-8".into(),
        )),
        (Some(other), _) => Err(Error::InvalidInput(format!(
            "VMDK descriptor {origin} is in encoding {other:?}; Strata reads UTF-8 and windows-1252 descriptors"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw bytes in `file` starting at `offset` (sectors).
    Flat { offset: u64 },
    /// A hosted sparse extent file with its own header.
    Sparse,
    /// Reads as zeros, stored nowhere.
    Zero,
    /// A type Strata does not read (`SESPARSE`, `VMFSRAW`, `VMFSRDM`, …).
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    pub kind: ExtentKind,
    /// File name relative to the descriptor's directory (empty for ZERO).
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub create_type: String,
    pub extents: Vec<ExtentLine>,
    /// `parentFileNameHint`, present on snapshot (delta) disks.
    pub parent_hint: Option<String>,
    pub adapter_type: Option<String>,
    /// How the text was decoded (extent names are looked up by it).
    pub encoding: TextEncoding,
}

impl Descriptor {
    /// Decodes and parses descriptor bytes; `origin` names the file.
    pub fn read(bytes: &[u8], origin: &str) -> Result<Descriptor> {
        let (text, encoding) = decode(bytes, origin)?;
        let mut d = Self::parse(&text, origin)?;
        d.encoding = encoding;
        Ok(d)
    }

    /// Parses descriptor text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Descriptor> {
        let bad = |line: usize, why: String| {
            Error::corrupt(
                format!("VMDK descriptor {origin}"),
                format!("line {line}: {why}"),
            )
        };
        let mut create_type = None;
        let mut extents = Vec::new();
        let mut parent_hint = None;
        let mut adapter_type = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or_default();
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                extents.push(parse_extent(line).map_err(|why| bad(n + 1, why))?);
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = value.trim().trim_matches('"').to_string();
                match key.trim() {
                    "createType" => create_type = Some(value),
                    "parentFileNameHint" => parent_hint = Some(value),
                    "ddb.adapterType" => adapter_type = Some(value),
                    _ => {}
                }
            }
        }
        let create_type = create_type.ok_or_else(|| bad(0, "no createType".into()))?;
        if extents.is_empty() {
            return Err(bad(0, "no extents".into()));
        }
        Ok(Descriptor {
            create_type,
            extents,
            parent_hint,
            adapter_type,
            encoding: TextEncoding::Utf8,
        })
    }

    /// Saturates rather than overflows: a hostile descriptor's sum then
    /// fails the comparison with the header's capacity.
    pub fn capacity_sectors(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.sectors))
    }
}

fn parse_extent(line: &str) -> std::result::Result<ExtentLine, String> {
    // RW 8388608 SPARSE "name.vmdk" [offset]
    let (head, rest) = match line.find('"') {
        Some(q) => (&line[..q], &line[q..]),
        None => (line, ""),
    };
    let mut words = head.split_whitespace();
    words.next();
    let sectors: u64 = words
        .next()
        .ok_or("extent without size")?
        .parse()
        .map_err(|_| "extent size is not a number".to_string())?;
    let kind_word = words.next().ok_or("extent without type")?;
    let (file, tail) = if rest.is_empty() {
        (String::new(), "")
    } else {
        let end = rest[1..].find('"').ok_or("unterminated file name")? + 1;
        (rest[1..end].to_string(), rest[end + 1..].trim())
    };
    let kind = match kind_word {
        "FLAT" | "VMFS" => {
            let offset = if tail.is_empty() {
                0
            } else {
                tail.parse()
                    .map_err(|_| "bad flat extent offset".to_string())?
            };
            ExtentKind::Flat { offset }
        }
        "SPARSE" | "VMFSSPARSE" => ExtentKind::Sparse,
        "ZERO" => ExtentKind::Zero,
        other => ExtentKind::Unsupported(other.to_string()),
    };
    if matches!(kind, ExtentKind::Flat { .. } | ExtentKind::Sparse) && file.is_empty() {
        return Err("extent without file name".into());
    }
    Ok(ExtentLine {
        sectors,
        kind,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_descriptors() {
        let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4192256 FLAT \"d-f001.vmdk\" 0\nRW 4096 FLAT \"d-f002.vmdk\" 0\nRW 100 ZERO\n\nddb.adapterType = \"lsilogic\"\n";
        let d = Descriptor::parse(text, "t").unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentFlat");
        assert_eq!(d.extents.len(), 3);
        assert_eq!(
            d.extents[1],
            ExtentLine {
                sectors: 4096,
                kind: ExtentKind::Flat { offset: 0 },
                file: "d-f002.vmdk".into()
            }
        );
        assert_eq!(d.extents[2].kind, ExtentKind::Zero);
        assert_eq!(d.capacity_sectors(), 4192256 + 4096 + 100);
        assert_eq!(d.adapter_type.as_deref(), Some("lsilogic"));
    }

    #[test]
    fn damaged_descriptors_are_errors() {
        for text in [
            "",
            "createType=\"x\"\n",
            "createType=\"x\"\nRW abc SPARSE \"f\"\n",
            "createType=\"x\"\nRW 10 SPARSE \"f\n",
        ] {
            assert!(Descriptor::parse(text, "t").is_err(), "{text:?}");
        }
    }

    #[test]
    fn windows_1252_and_bom_decode() {
        let text = b"\xEF\xBB\xBF# Disk DescriptorFile\nencoding=\"windows-1252\"\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"d\xefsk\x80-flat.vmdk\" 0\n";
        let d = Descriptor::read(text, "t").unwrap();
        assert_eq!(d.encoding, TextEncoding::Windows1252);
        assert_eq!(d.extents[0].file, "d\u{ef}sk\u{20ac}-flat.vmdk");
        assert_eq!(
            encode_1252(&d.extents[0].file).unwrap(),
            b"d\xefsk\x80-flat.vmdk"
        );
        // Every byte round-trips.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(encode_1252(&decode_1252(&all)).unwrap(), all);
        // UTF-8 stays UTF-8; a NUL is binary, not text.
        let utf8 = "createType=\"vmfs\"\nRW 8 VMFS \"d\u{ef}sk.vmdk\"\n".as_bytes();
        assert_eq!(
            Descriptor::read(utf8, "t").unwrap().encoding,
            TextEncoding::Utf8
        );
        assert!(Descriptor::read(b"createType=\"vmfs\"\x01\n", "t").is_err());
    }

    #[test]
    fn descriptors_are_recognised_past_long_comment_headers() {
        let mut text = "# a comment\n".repeat(200).into_bytes();
        text.extend_from_slice(b"createType = \"monolithicFlat\"\n");
        assert!(looks_like_descriptor(&text));
        assert!(looks_like_descriptor(
            b"\xEF\xBB\xBF# Disk DescriptorFile\n"
        ));
        assert!(!looks_like_descriptor(b"just some text\nwith a = sign\n"));
        assert!(!looks_like_descriptor(b"createType=\"x\"\0\x01\xffbinary"));
        assert!(looks_like_descriptor(b"createType=\"x\"\n\0\0\0"));
        // What qemu leaves after giving a descriptor a shorter CID.
        assert!(looks_like_descriptor(b"CID=f5270\ncreateType=\"x\"\n\0\"\n\0\0"));
    }
}
