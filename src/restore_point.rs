//! Restore points: the manifest that commits a backup, and how people name
//! restore points on the command line.
//!
//! A manifest is stored as the object `manifests/<id>`, where the id is the
//! BLAKE3 of its bytes. Writing it is the commit point of a backup: it is
//! written only after every chunk and tree it references is durable, so a
//! restore point either exists completely or not at all.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::format::{MANIFEST_MAGIC, MANIFEST_VERSION};
use crate::id::{ChunkId, RestorePointId};
use crate::tree::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum RestorePointKind {
    /// A file tree; `root` is its top tree.
    Files = 0,
    /// A virtual machine or disk image; `root` is its VM description.
    Vm = 1,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupStats {
    pub files: u64,
    pub directories: u64,
    /// Logical size of all file contents in the restore point.
    pub bytes_total: u64,
    /// Bytes actually read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Raw bytes of chunks the repository did not hold before.
    pub bytes_new: u64,
    /// Bytes those new chunks take in packs, after compression.
    pub bytes_stored: u64,
    pub chunks_new: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissedFile {
    #[serde(serialize_with = "crate::restore_point::lossy")]
    pub path: Vec<u8>,
    pub reason: String,
}

pub(crate) fn lossy<S: serde::Serializer>(
    bytes: &[u8],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: RestorePointKind,
    pub source: String,
    /// When the data was captured (or the `--time` given), UTC.
    pub time: Timestamp,
    pub hostname: String,
    pub tags: Vec<String>,
    /// The absolute paths that were backed up.
    pub paths: Vec<Vec<u8>>,
    pub root: ChunkId,
    pub parent: Option<RestorePointId>,
    pub stats: BackupStats,
    pub missed: Vec<MissedFile>,
}

pub fn object_name(id: &RestorePointId) -> String {
    format!("manifests/{id}")
}

pub fn id_from_object_name(name: &str) -> Option<RestorePointId> {
    name.strip_prefix("manifests/")?.parse().ok()
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.raw(&MANIFEST_MAGIC)
            .u16(MANIFEST_VERSION)
            .u8(self.kind as u8)
            .bytes(self.source.as_bytes());
        e.i64(self.time.sec)
            .u32(self.time.nsec)
            .bytes(self.hostname.as_bytes());
        e.count(self.tags.len());
        for tag in &self.tags {
            e.bytes(tag.as_bytes());
        }
        e.count(self.paths.len());
        for path in &self.paths {
            e.bytes(path);
        }
        e.raw(self.root.as_bytes());
        match &self.parent {
            Some(parent) => e.u8(1).raw(parent.as_bytes()),
            None => e.u8(0),
        };
        let s = &self.stats;
        for v in [
            s.files,
            s.directories,
            s.bytes_total,
            s.bytes_read,
            s.bytes_new,
            s.bytes_stored,
            s.chunks_new,
            s.duration_ms,
        ] {
            e.u64(v);
        }
        e.count(self.missed.len());
        for missed in &self.missed {
            e.bytes(&missed.path).bytes(missed.reason.as_bytes());
        }
        e.into_bytes()
    }

    pub fn id_of(bytes: &[u8]) -> RestorePointId {
        RestorePointId(*blake3::hash(bytes).as_bytes())
    }

    /// Decodes a manifest, checking that it hashes to `id`.
    pub fn decode(id: &RestorePointId, bytes: &[u8]) -> Result<Manifest> {
        let object = || format!("manifest of restore point {id}");
        if Self::id_of(bytes) != *id {
            return Err(Error::corrupt(
                object(),
                "content does not match its BLAKE3 id",
            ));
        }
        let mut d = Decoder::new(bytes, "manifest");
        d.expect_magic(&MANIFEST_MAGIC)
            .map_err(|e| Error::decode(object(), e))?;
        let version = d.u16().map_err(|e| Error::decode(object(), e))?;
        if version != MANIFEST_VERSION {
            return Err(Error::UnsupportedVersion {
                what: object(),
                found: version as u64,
                supported: MANIFEST_VERSION as u64,
            });
        }
        Self::decode_body(&mut d)
            .and_then(|m| d.finish().map(|_| m))
            .map_err(|e| Error::decode(object(), e))
    }

    fn decode_body(d: &mut Decoder) -> Result<Manifest, DecodeError> {
        let kind = match d.u8()? {
            0 => RestorePointKind::Files,
            1 => RestorePointKind::Vm,
            other => return Err(d.error(format!("unknown restore point kind {other}"))),
        };
        let text = |d: &mut Decoder| -> Result<String, DecodeError> {
            let bytes = d.bytes()?;
            String::from_utf8(bytes.to_vec()).map_err(|_| d.error("text is not UTF-8"))
        };
        let source = text(d)?;
        let time = Timestamp {
            sec: d.i64()?,
            nsec: d.u32()?,
        };
        let hostname = text(d)?;
        let n = d.count(4)?;
        let tags = (0..n).map(|_| text(d)).collect::<Result<_, _>>()?;
        let n = d.count(4)?;
        let paths = (0..n)
            .map(|_| d.bytes().map(<[u8]>::to_vec))
            .collect::<Result<_, _>>()?;
        let root = ChunkId(d.array()?);
        let parent = match d.u8()? {
            0 => None,
            1 => Some(RestorePointId(d.array()?)),
            other => return Err(d.error(format!("bad parent flag {other}"))),
        };
        let mut v = [0u64; 8];
        for slot in &mut v {
            *slot = d.u64()?;
        }
        let stats = BackupStats {
            files: v[0],
            directories: v[1],
            bytes_total: v[2],
            bytes_read: v[3],
            bytes_new: v[4],
            bytes_stored: v[5],
            chunks_new: v[6],
            duration_ms: v[7],
        };
        let n = d.count(8)?;
        let mut missed = Vec::with_capacity(n);
        for _ in 0..n {
            let path = d.bytes()?.to_vec();
            missed.push(MissedFile {
                path,
                reason: text(d)?,
            });
        }
        Ok(Manifest {
            kind,
            source,
            time,
            hostname,
            tags,
            paths,
            root,
            parent,
            stats,
            missed,
        })
    }
}

/// A restore point known to the catalog.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    pub id: RestorePointId,
    pub manifest: Manifest,
}

/// `YYYY-MM-DDTHH:MM:SSZ`: whole seconds, for times that name no restore
/// point (expiries, lock holders, file times). Restore points are shown
/// with [`time_labels`], which keep as many digits as it takes to name
/// each one.
pub fn format_time(t: Timestamp) -> String {
    format_time_digits(t, 0)
}

/// The exact time, with the shortest fraction (in groups of three digits)
/// that loses nothing: what `--json` prints.
pub fn format_time_exact(t: Timestamp) -> String {
    let digits = match t.nsec {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    format_time_digits(t, digits)
}

/// RFC 3339 in UTC with `digits` (0 to 9) fractional digits, truncated.
fn format_time_digits(t: Timestamp, digits: u32) -> String {
    let Ok(dt) = OffsetDateTime::from_unix_timestamp(t.sec) else {
        return format!("@{}", t.sec);
    };
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if digits > 0 {
        let digits = digits.min(9);
        let fraction = t.nsec.min(999_999_999) / 10u32.pow(9 - digits);
        text.push_str(&format!(".{fraction:0width$}", width = digits as usize));
    }
    text.push('Z');
    text
}

/// How each restore point's time is shown: whole seconds where that
/// suffices, else milli-, micro- or nanoseconds, so that `SOURCE@LABEL`
/// selects exactly that restore point (a time selects the latest restore
/// point up to the end of the interval its digits name). Two restore points
/// of one source at the very same nanosecond share a label; their ids tell
/// them apart.
pub fn time_labels(points: &[RestorePoint]) -> HashMap<RestorePointId, String> {
    let mut by_source: HashMap<&str, Vec<&RestorePoint>> = HashMap::new();
    for rp in points {
        by_source.entry(&rp.manifest.source).or_default().push(rp);
    }
    let mut labels = HashMap::with_capacity(points.len());
    for mut of_source in by_source.into_values() {
        of_source.sort_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id));
        for (i, rp) in of_source.iter().enumerate() {
            let time = rp.manifest.time.as_nanos();
            let next = of_source[i + 1..]
                .iter()
                .map(|later| later.manifest.time.as_nanos())
                .find(|t| *t > time);
            let digits = [0u32, 3, 6, 9]
                .into_iter()
                .find(|d| {
                    let unit = 10i128.pow(9 - d);
                    next.is_none_or(|next| next.div_euclid(unit) > time.div_euclid(unit))
                })
                .unwrap_or(9);
            labels.insert(rp.id, format_time_digits(rp.manifest.time, digits));
        }
    }
    labels
}

/// Parses an RFC 3339 time such as `2026-11-23T07:04:05Z`.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    Ok(parse_time_interval(text)?.0)
}

/// Parses an RFC 3339 time and says how long an interval its digits name:
/// `…:05Z` is the whole second, `…:05.120Z` one millisecond.
fn parse_time_interval(text: &str) -> Result<(Timestamp, i128)> {
    let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        Error::InvalidInput(format!(
            "{text:?} is not an RFC 3339 time (e.g. 2026-11-23T07:04:05Z): {e}"
        ))
    })?;
    let nanos = dt.unix_timestamp_nanos();
    let fraction_digits = text
        .split_once('.')
        .map(|(_, rest)| rest.bytes().take_while(u8::is_ascii_digit).count())
        .unwrap_or(0)
        .min(9) as u32;
    Ok((
        Timestamp {
            sec: dt.unix_timestamp(),
            nsec: (nanos.rem_euclid(1_000_000_000)) as u32,
        },
        10i128.pow(9 - fraction_digits),
    ))
}

pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

/// Picks one restore point from `candidates` by id prefix, `SOURCE@latest`
/// or `SOURCE@TIME` (the latest at or before TIME).
pub fn select<'a>(candidates: &'a [RestorePoint], selector: &str) -> Result<&'a RestorePoint> {
    let not_found = || Error::RestorePointNotFound {
        selector: selector.to_string(),
    };
    if let Some((source, when)) = selector.rsplit_once('@') {
        let of_source = candidates.iter().filter(|rp| rp.manifest.source == source);
        let chosen = if when == "latest" {
            of_source.max_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id))
        } else {
            let (start, interval) = parse_time_interval(when)?;
            let end = start.as_nanos() + interval;
            of_source
                .filter(|rp| rp.manifest.time.as_nanos() < end)
                .max_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id))
        };
        return chosen.ok_or_else(not_found);
    }
    let prefix = selector.to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "{selector:?} is not a restore point: give an id (prefix), SOURCE@latest or SOURCE@TIME"
        )));
    }
    let matches: Vec<_> = candidates
        .iter()
        .filter(|rp| rp.id.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(Error::AmbiguousRestorePoint {
            selector: selector.to_string(),
            candidates: many
                .iter()
                .map(|rp| rp.id.short())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            kind: RestorePointKind::Files,
            source: "web01".into(),
            time: Timestamp {
                sec: 1_795_000_000,
                nsec: 5,
            },
            hostname: "host".into(),
            tags: vec!["daily".into()],
            paths: vec![b"/etc".to_vec()],
            root: ChunkId([3; 32]),
            parent: Some(RestorePointId([4; 32])),
            stats: BackupStats {
                files: 10,
                bytes_total: 1000,
                ..Default::default()
            },
            missed: vec![MissedFile {
                path: b"/etc/shadow".to_vec(),
                reason: "permission denied".into(),
            }],
        }
    }

    #[test]
    fn round_trip_and_golden() {
        let bytes = sample().encode();
        let id = Manifest::id_of(&bytes);
        assert_eq!(Manifest::decode(&id, &bytes).unwrap(), sample());
        let golden = crate::codec::assert_golden("manifest_v1.bin", &bytes);
        assert_eq!(
            Manifest::decode(&Manifest::id_of(&golden), &golden).unwrap(),
            sample()
        );
    }

    #[test]
    fn flipped_byte_is_detected() {
        let mut bytes = sample().encode();
        let id = Manifest::id_of(&bytes);
        bytes[10] ^= 1;
        assert!(Manifest::decode(&id, &bytes).is_err());
    }

    #[test]
    fn times_parse_and_format() {
        let t = parse_time("2026-11-23T07:04:05Z").unwrap();
        assert_eq!(format_time(t), "2026-11-23T07:04:05Z");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn labels_name_each_restore_point_within_one_second() {
        let mk = |id: u8, source: &str, sec: i64, nsec: u32| RestorePoint {
            id: RestorePointId([id; 32]),
            manifest: Manifest {
                source: source.into(),
                time: Timestamp { sec, nsec },
                ..sample()
            },
        };
        let all = vec![
            mk(1, "a", 1_795_000_000, 120_000_000),
            mk(2, "a", 1_795_000_000, 120_400_000),
            mk(3, "a", 1_795_000_000, 900_000_000),
            mk(4, "a", 1_795_000_001, 5),
            mk(5, "b", 1_795_000_000, 999_999_999),
        ];
        let labels = time_labels(&all);
        assert_eq!(labels[&all[0].id], "2026-11-18T11:06:40.120000Z");
        assert_eq!(labels[&all[1].id], "2026-11-18T11:06:40.120Z");
        assert_eq!(labels[&all[2].id], "2026-11-18T11:06:40Z");
        assert_eq!(labels[&all[3].id], "2026-11-18T11:06:41Z");
        assert_eq!(labels[&all[4].id], "2026-11-18T11:06:40Z");
        for rp in &all {
            let selector = format!("{}@{}", rp.manifest.source, labels[&rp.id]);
            assert_eq!(select(&all, &selector).unwrap().id, rp.id, "{selector}");
        }
        assert_eq!(
            format_time_exact(all[3].manifest.time),
            "2026-11-18T11:06:41.000000005Z"
        );
        assert_eq!(
            format_time_exact(all[1].manifest.time),
            "2026-11-18T11:06:40.120400Z"
        );
        assert_eq!(
            select(&all, &format!("a@{}", format_time_exact(all[1].manifest.time)))
                .unwrap()
                .id,
            all[1].id
        );
    }

    #[test]
    fn selectors() {
        let mk = |id: u8, source: &str, sec: i64| RestorePoint {
            id: RestorePointId([id; 32]),
            manifest: Manifest {
                source: source.into(),
                time: Timestamp { sec, nsec: 0 },
                ..sample()
            },
        };
        let all = vec![mk(0xaa, "a", 100), mk(0xab, "a", 200), mk(0xcc, "b", 300)];
        assert_eq!(select(&all, "a@latest").unwrap().id, all[1].id);
        assert_eq!(select(&all, "cc").unwrap().id, all[2].id);
        assert!(matches!(
            select(&all, "a"),
            Err(Error::AmbiguousRestorePoint { .. })
        ));
        assert!(select(&all, "dd").is_err());
        assert!(select(&all, "c@latest").is_err());
        assert_eq!(
            select(&all, "a@1970-01-01T00:02:30Z").unwrap().id,
            all[0].id
        );
    }
}
