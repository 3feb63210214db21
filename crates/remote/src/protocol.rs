//! The wire format shared by the server and its clients (docs/PROTOCOL.md
//! is the reference): paths, headers, the JSON messages, and the binary
//! bodies for batches of ids and chunks. Every decoder here treats its
//! input as hostile and answers with an error, never a panic.

use serde::{Deserialize, Serialize};

use strata_engine::error::{Error, Result};
use strata_engine::id::{ChunkId, PackId, RestorePointId};
use strata_engine::pack::{ChunkKind, Compression, PackEntry};

/// The protocol version this build speaks; a breaking change is a new
/// version under a new path prefix.
pub const PROTOCOL_VERSION: u32 = 1;
/// The prefix of every path of this version.
pub const API_PREFIX: &str = "/api/v1";
/// Sent by clients so a server of another version can say so clearly.
pub const PROTOCOL_HEADER: &str = "strata-protocol";
/// The restore point a commit request carries the sealed manifest of.
pub const RESTORE_POINT_HEADER: &str = "strata-restore-point";
/// The source a commit request's restore point is of, in clear (its
/// UTF-8 in hex): the server checks it against the token and lists
/// restore points by it.
pub const SOURCE_HEADER: &str = "strata-source";

/// Most ids in one `known`, `present` or chunk read request.
pub const MAX_IDS_PER_REQUEST: usize = 4096;
/// Most bytes of chunks one read request returns; the server stops early
/// and the client asks again for the rest.
pub const MAX_READ_RESPONSE: usize = 32 << 20;
/// Largest manifest a commit may carry.
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// What the server answers for each id of a session's `known` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    /// Not stored: this session has claimed it and must upload it.
    Upload = 0,
    /// Stored on the warm tier: nothing to send.
    Present = 1,
    /// Another live session has claimed it and is uploading it: ask again
    /// before committing.
    Deferred = 2,
}

impl Known {
    pub fn from_u8(byte: u8) -> Option<Known> {
        match byte {
            0 => Some(Known::Upload),
            1 => Some(Known::Present),
            2 => Some(Known::Deferred),
            _ => None,
        }
    }
}

/// What a token may do (see PROTOCOL.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads restore points of its sources.
    Restore,
    /// Writes new restore points of its sources, and reads them (an
    /// incremental reads its parent).
    Backup,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "restore" => Some(Role::Restore),
            "backup" => Some(Role::Backup),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Restore => "restore",
            Role::Backup => "backup",
            Role::Admin => "admin",
        }
    }
}

/// `GET /api/v1`: who answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub protocol: Vec<u32>,
    pub server: String,
    pub repositories: Vec<String>,
}

/// `POST …/sessions`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenSession {
    /// The mover's host name, for the server's log.
    pub host: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionOpened {
    pub session: String,
    /// A session not heard from for this long ends, and its claims go.
    pub timeout_secs: u64,
    /// Largest pack body the server takes.
    pub max_pack_bytes: u64,
}

/// `POST …/maintenance`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct MaintenanceStarted {
    pub maintenance: String,
    /// Every restore point in the repository now (hex ids): a prune must
    /// have walked exactly these.
    pub restore_points: Vec<String>,
    pub timeout_secs: u64,
}

/// `POST …/maintenance/{m}/prune`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PruneRequest {
    pub repack_below: f64,
    pub dry_run: bool,
    /// The restore points whose chunks the client sent as live (hex ids).
    pub restore_points: Vec<String>,
}

/// `POST …/maintenance/{m}/tier`: move the chunks named under the lease
/// to the cold tier, then sweep keeping the live marks.
#[derive(Debug, Serialize, Deserialize)]
pub struct TierRequest {
    pub warm_days: u32,
    /// The restore points the client walked (hex ids): all of them.
    pub restore_points: Vec<String>,
    /// How many of them are older than `warm_days`.
    pub restore_points_cold: u64,
}

/// `POST …/maintenance/{m}/thaw`: thaw the restore point whose data
/// chunks were named under the lease.
#[derive(Debug, Serialize, Deserialize)]
pub struct ThawRequest {
    pub restore_point: String,
    pub days: u32,
    /// Only say what a thaw would fetch (and which thaw records it needs).
    pub plan: bool,
    /// `standard` or `expedited`.
    pub priority: String,
    /// When the thawed copies expire (Unix seconds).
    pub until: i64,
    /// The sealed thaw records, by object name, in hex: one per pack the
    /// plan named and one for the restore point.
    pub records: std::collections::BTreeMap<String, String>,
}

impl ThawRequest {
    pub fn priority(&self) -> strata_engine::storage::RestorePriority {
        match self.priority.as_str() {
            "expedited" => strata_engine::storage::RestorePriority::Expedited,
            _ => strata_engine::storage::RestorePriority::Standard,
        }
    }
}

/// `GET …/storage`'s answer: what the server can say of the repository
/// without the key; its client adds what the restore points say.
#[derive(Debug, Serialize, Deserialize)]
pub struct StorageAnswer {
    pub stored: strata_engine::stats::StoredTotals,
    pub tiers: strata_engine::tier::TierStatus,
}

/// `POST …/check`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Read every warm pack whole and check it against its name.
    pub read_data: bool,
}

/// `PUT …/packs/{pack}`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct PackStored {
    pub chunks: u64,
    /// The pack was already stored: nothing was written.
    pub already_stored: bool,
}

/// `POST …/commit`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Committed {
    pub restore_point: String,
}

/// Every error's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: see PROTOCOL.md, "Errors".
    pub code: String,
    pub message: String,
}

/// A batch of ids: 32 bytes each, nothing else.
pub fn encode_ids<'a>(ids: impl IntoIterator<Item = &'a ChunkId>) -> Vec<u8> {
    ids.into_iter().flat_map(|id| id.as_bytes().to_vec()).collect()
}

pub fn decode_ids(body: &[u8]) -> Result<Vec<ChunkId>> {
    if !body.len().is_multiple_of(32) {
        return Err(Error::InvalidInput(format!(
            "a batch of ids of {} bytes is not a whole number of 32-byte ids",
            body.len()
        )));
    }
    let count = body.len() / 32;
    if count > MAX_IDS_PER_REQUEST {
        return Err(Error::InvalidInput(format!(
            "a batch of {count} ids is over the limit of {MAX_IDS_PER_REQUEST}"
        )));
    }
    Ok(body
        .chunks_exact(32)
        .map(|raw| {
            let mut id = [0u8; 32];
            id.copy_from_slice(raw);
            ChunkId(id)
        })
        .collect())
}

/// Length of a chunk frame's header: pack id, chunk id, kind,
/// compression, raw length, stored length.
const FRAME_HEADER_LEN: usize = 16 + 32 + 1 + 1 + 4 + 4;

/// One chunk as the server stores it, framed for a read response; the
/// client decodes and verifies it with the repository's key.
pub fn encode_chunk_frame(out: &mut Vec<u8>, pack: &PackId, entry: &PackEntry, stored: &[u8]) {
    out.extend_from_slice(&pack.0);
    out.extend_from_slice(entry.id.as_bytes());
    out.push(entry.kind as u8);
    out.push(entry.compression as u8);
    out.extend_from_slice(&entry.raw_len.to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(stored);
}

/// A decoded chunk frame: where it came from, its entry (offset 0: the
/// client has only the stored bytes) and those bytes.
pub struct ChunkFrame<'a> {
    pub pack: PackId,
    pub entry: PackEntry,
    pub stored: &'a [u8],
}

/// Splits a read response into its frames, checking every length.
pub fn decode_chunk_frames(body: &[u8]) -> Result<Vec<ChunkFrame<'_>>> {
    let bad = |detail: String| Error::corrupt("a chunk read response from the server", detail);
    let mut frames = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < FRAME_HEADER_LEN {
            return Err(bad(format!("{} bytes left, less than a frame header", rest.len())));
        }
        let (header, tail) = rest.split_at(FRAME_HEADER_LEN);
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&header[..16]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[16..48]);
        let kind = ChunkKind::from_u8(header[48]).ok_or_else(|| bad(format!("unknown chunk kind {}", header[48])))?;
        let compression = Compression::from_u8(header[49])
            .ok_or_else(|| bad(format!("unknown compression {}", header[49])))?;
        let raw_len = u32::from_le_bytes(header[50..54].try_into().expect("4 bytes"));
        let stored_len = u32::from_le_bytes(header[54..58].try_into().expect("4 bytes"));
        if raw_len > strata_engine::pack::MAX_CHUNK_LEN || stored_len as usize > tail.len() {
            return Err(bad(format!(
                "a frame claims {stored_len} stored and {raw_len} plain bytes with {} bytes left",
                tail.len()
            )));
        }
        let (stored, after) = tail.split_at(stored_len as usize);
        frames.push(ChunkFrame {
            pack: PackId(pack),
            entry: PackEntry {
                id: ChunkId(id),
                offset: 0,
                stored_len,
                raw_len,
                kind,
                compression,
            },
            stored,
        });
        rest = after;
    }
    Ok(frames)
}

/// A restore point as listed: its id and its stored (sealed) manifest.
pub fn encode_manifest_frame(out: &mut Vec<u8>, id: &RestorePointId, stored: &[u8]) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(stored);
}

pub fn decode_manifest_frames(body: &[u8]) -> Result<Vec<(RestorePointId, &[u8])>> {
    let bad = |detail: String| Error::corrupt("a restore point listing from the server", detail);
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 36 {
            return Err(bad(format!("{} bytes left, less than a frame header", rest.len())));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&rest[..32]);
        let len = u32::from_le_bytes(rest[32..36].try_into().expect("4 bytes")) as usize;
        let tail = &rest[36..];
        if len > tail.len() || len > MAX_MANIFEST_BYTES {
            return Err(bad(format!("a manifest of {len} bytes with {} bytes left", tail.len())));
        }
        out.push((RestorePointId(id), &tail[..len]));
        rest = &tail[len..];
    }
    Ok(out)
}

/// `https://host:port/REPO`: a repository behind a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLocation {
    /// `https://host:port`, no trailing slash.
    pub base: String,
    pub repository: String,
}

impl RemoteLocation {
    /// `None` if `text` is not a server URL at all (a directory, a
    /// bucket); an error if it is one, but malformed.
    pub fn parse(text: &str) -> Option<Result<RemoteLocation>> {
        let rest = text.strip_prefix("https://")?;
        let bad = |why: &str| Error::InvalidInput(format!("repository URL {text:?}: {why} (expected https://HOST:PORT/REPOSITORY)"));
        Some((|| {
            let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no repository name"))?;
            let repository = path.trim_end_matches('/');
            if authority.is_empty() {
                return Err(bad("no host"));
            }
            if !is_repository_name(repository) {
                return Err(bad("the repository name must be letters, digits, '-', '_' or '.'"));
            }
            Ok(RemoteLocation {
                base: format!("https://{authority}"),
                repository: repository.to_string(),
            })
        })())
    }

    /// The URL of `path` below this repository.
    pub fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}/repos/{}{path}", self.base, self.repository)
    }
}

impl std::fmt::Display for RemoteLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.repository)
    }
}

/// A repository's name on a server: short, and safe in a path and a URL.
pub fn is_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncations_fail() {
        let entry = PackEntry {
            id: ChunkId([7; 32]),
            offset: 0,
            stored_len: 3,
            raw_len: 3,
            kind: ChunkKind::Data,
            compression: Compression::None,
        };
        let mut body = Vec::new();
        encode_chunk_frame(&mut body, &PackId([1; 16]), &entry, b"abc");
        encode_chunk_frame(&mut body, &PackId([2; 16]), &entry, b"abc");
        let frames = decode_chunk_frames(&body).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].stored, b"abc");
        assert_eq!(frames[1].pack, PackId([2; 16]));
        for cut in 1..body.len() {
            if cut == body.len() / 2 {
                continue;
            }
            assert!(decode_chunk_frames(&body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn locations() {
        let l = RemoteLocation::parse("https://h:8443/main").unwrap().unwrap();
        assert_eq!(l.url("/config"), "https://h:8443/api/v1/repos/main/config");
        assert!(RemoteLocation::parse("/srv/repo").is_none());
        assert!(RemoteLocation::parse("https://h:1/").unwrap().is_err());
        assert!(RemoteLocation::parse("https://h:1/a/b").unwrap().is_err());
        assert!(decode_ids(&[0; 33]).is_err());
    }
}
