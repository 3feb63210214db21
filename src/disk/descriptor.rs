//! The text descriptor of a VMDK: its create type and extents, from a
//! descriptor file or the descriptor embedded in a sparse extent.

use crate::error::{Error, Result};

/// Largest descriptor we read; real ones are a few hundred bytes.
pub const MAX_DESCRIPTOR_LEN: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw bytes in `file` starting at `offset` (sectors).
    Flat { offset: u64 },
    /// A hosted sparse extent file with its own header.
    Sparse,
    /// Reads as zeros, stored nowhere.
    Zero,
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
}

impl Descriptor {
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
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
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
        other => return Err(format!("extent type {other} is not supported")),
    };
    if kind != ExtentKind::Zero && file.is_empty() {
        return Err("extent without file name".into());
    }
    if file.contains('/') && !file.starts_with('/') {
        // Relative names with directories are allowed; absolute ones too.
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
            "createType=\"x\"\nRW 10 WEIRD \"f\"\n",
            "createType=\"x\"\nRW 10 SPARSE \"f\n",
        ] {
            assert!(Descriptor::parse(text, "t").is_err(), "{text:?}");
        }
    }
}
