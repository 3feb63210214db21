//! Directory objects: the nodes of a file-tree restore point's Merkle tree.
//!
//! A [`Tree`] lists one directory's entries, sorted by name, each with its
//! full metadata; a file lists its content as ordered [`Extent`]s and a
//! subdirectory names its own tree by [`ChunkId`]. Trees are stored as
//! metadata chunks, so an unchanged directory encodes to the same bytes and
//! is shared between restore points.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::format::{TREE_MAGIC, TREE_VERSION};
use crate::id::ChunkId;

/// A piece of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    Data {
        id: ChunkId,
        len: u32,
    },
    /// A run of zeros that is not stored (a hole of a sparse file).
    Hole {
        len: u64,
    },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => *len as u64,
            Extent::Hole { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn as_nanos(&self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File { extents: Vec<Extent> },
    Directory { subtree: ChunkId },
    Symlink { target: Vec<u8> },
    Fifo,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
    Socket,
}

impl NodeKind {
    fn tag(&self) -> u8 {
        match self {
            NodeKind::File { .. } => 0,
            NodeKind::Directory { .. } => 1,
            NodeKind::Symlink { .. } => 2,
            NodeKind::Fifo => 3,
            NodeKind::CharDevice { .. } => 4,
            NodeKind::BlockDevice { .. } => 5,
            NodeKind::Socket => 6,
        }
    }

    /// The letter `ls -l` shows for this kind.
    pub fn letter(&self) -> char {
        match self {
            NodeKind::File { .. } => '-',
            NodeKind::Directory { .. } => 'd',
            NodeKind::Symlink { .. } => 'l',
            NodeKind::Fifo => 'p',
            NodeKind::CharDevice { .. } => 'c',
            NodeKind::BlockDevice { .. } => 'b',
            NodeKind::Socket => 's',
        }
    }
}

/// One directory entry with everything needed to recreate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Raw bytes of the name: need not be UTF-8.
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Vec<u8>,
    pub group: Vec<u8>,
    pub mtime: Timestamp,
    pub atime: Timestamp,
    /// Logical size in bytes (file length; symlink target length).
    pub size: u64,
    pub nlink: u32,
    /// Shared by all names of one hard-linked file within a restore point;
    /// zero when the file has a single name.
    pub link_id: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Refuses names that could escape the directory they are restored into.
pub fn validate_name(name: &[u8], context: &str) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::UnsafeName {
            name: String::from_utf8_lossy(name).into_owned(),
            context: context.to_string(),
        });
    }
    Ok(())
}

pub fn encode_extents(e: &mut Encoder, extents: &[Extent]) {
    e.count(extents.len());
    for extent in extents {
        match extent {
            Extent::Data { id, len } => {
                e.u8(0).raw(id.as_bytes()).u32(*len);
            }
            Extent::Hole { len } => {
                e.u8(1).u64(*len);
            }
        }
    }
}

pub fn decode_extents(d: &mut Decoder) -> Result<Vec<Extent>, DecodeError> {
    let n = d.count(9)?;
    let mut extents = Vec::with_capacity(n);
    for _ in 0..n {
        match d.u8()? {
            0 => extents.push(Extent::Data {
                id: ChunkId(d.array()?),
                len: d.u32()?,
            }),
            1 => extents.push(Extent::Hole { len: d.u64()? }),
            tag => return Err(d.error(format!("unknown extent tag {tag}"))),
        }
    }
    Ok(extents)
}

fn encode_time(e: &mut Encoder, t: Timestamp) {
    e.i64(t.sec).u32(t.nsec);
}

fn decode_time(d: &mut Decoder) -> Result<Timestamp, DecodeError> {
    let sec = d.i64()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(d.error(format!("nanoseconds {nsec} out of range")));
    }
    Ok(Timestamp { sec, nsec })
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.raw(&TREE_MAGIC).u16(TREE_VERSION).count(self.nodes.len());
        for node in &self.nodes {
            e.u8(node.kind.tag())
                .bytes(&node.name)
                .u32(node.mode)
                .u32(node.uid)
                .u32(node.gid)
                .bytes(&node.user)
                .bytes(&node.group);
            encode_time(&mut e, node.mtime);
            encode_time(&mut e, node.atime);
            e.u64(node.size)
                .u32(node.nlink)
                .u64(node.link_id)
                .count(node.xattrs.len());
            for (name, value) in &node.xattrs {
                e.bytes(name).bytes(value);
            }
            match &node.kind {
                NodeKind::File { extents } => encode_extents(&mut e, extents),
                NodeKind::Directory { subtree } => {
                    e.raw(subtree.as_bytes());
                }
                NodeKind::Symlink { target } => {
                    e.bytes(target);
                }
                NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
                    e.u64(*rdev);
                }
                NodeKind::Fifo | NodeKind::Socket => {}
            }
        }
        e.into_bytes()
    }

    /// Decodes a tree; `id` names it in errors.
    pub fn decode(id: &ChunkId, bytes: &[u8]) -> Result<Tree> {
        Self::decode_inner(bytes).map_err(|e| match e {
            DecodeOutcome::Version(v) => Error::UnsupportedVersion {
                what: format!("tree {id}"),
                found: v as u64,
                supported: TREE_VERSION as u64,
            },
            DecodeOutcome::Bad(e) => Error::decode(format!("tree {id}"), e),
        })
    }

    fn decode_inner(bytes: &[u8]) -> Result<Tree, DecodeOutcome> {
        let mut d = Decoder::new(bytes, "tree");
        d.expect_magic(&TREE_MAGIC)?;
        let version = d.u16()?;
        if version != TREE_VERSION {
            return Err(DecodeOutcome::Version(version));
        }
        // The smallest possible node takes well over 60 bytes.
        let n = d.count(60)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = d.u8()?;
            let name = d.bytes()?.to_vec();
            let mode = d.u32()?;
            let uid = d.u32()?;
            let gid = d.u32()?;
            let user = d.bytes()?.to_vec();
            let group = d.bytes()?.to_vec();
            let mtime = decode_time(&mut d)?;
            let atime = decode_time(&mut d)?;
            let size = d.u64()?;
            let nlink = d.u32()?;
            let link_id = d.u64()?;
            let xattr_count = d.count(8)?;
            let mut xattrs = Vec::with_capacity(xattr_count);
            for _ in 0..xattr_count {
                xattrs.push((d.bytes()?.to_vec(), d.bytes()?.to_vec()));
            }
            let kind = match tag {
                0 => NodeKind::File {
                    extents: decode_extents(&mut d)?,
                },
                1 => NodeKind::Directory {
                    subtree: ChunkId(d.array()?),
                },
                2 => NodeKind::Symlink {
                    target: d.bytes()?.to_vec(),
                },
                3 => NodeKind::Fifo,
                4 => NodeKind::CharDevice { rdev: d.u64()? },
                5 => NodeKind::BlockDevice { rdev: d.u64()? },
                6 => NodeKind::Socket,
                other => return Err(d.error(format!("unknown node kind {other}")).into()),
            };
            nodes.push(Node {
                name,
                kind,
                mode,
                uid,
                gid,
                user,
                group,
                mtime,
                atime,
                size,
                nlink,
                link_id,
                xattrs,
            });
        }
        d.finish()?;
        Ok(Tree { nodes })
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

enum DecodeOutcome {
    Version(u16),
    Bad(DecodeError),
}

impl From<DecodeError> for DecodeOutcome {
    fn from(e: DecodeError) -> Self {
        DecodeOutcome::Bad(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_tree() -> Tree {
        let base = Node {
            name: b"a".to_vec(),
            kind: NodeKind::Fifo,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            user: b"alice".to_vec(),
            group: b"users".to_vec(),
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            atime: Timestamp {
                sec: 1_700_000_001,
                nsec: 0,
            },
            size: 0,
            nlink: 1,
            link_id: 0,
            xattrs: vec![],
        };
        Tree {
            nodes: vec![
                Node {
                    name: b"data.bin".to_vec(),
                    kind: NodeKind::File {
                        extents: vec![
                            Extent::Data {
                                id: ChunkId([1; 32]),
                                len: 10,
                            },
                            Extent::Hole { len: 4096 },
                        ],
                    },
                    size: 4106,
                    nlink: 2,
                    link_id: 42,
                    xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
                    ..base.clone()
                },
                Node {
                    name: b"dir".to_vec(),
                    kind: NodeKind::Directory {
                        subtree: ChunkId([2; 32]),
                    },
                    ..base.clone()
                },
                Node {
                    name: vec![0xff, 0xfe],
                    kind: NodeKind::Symlink {
                        target: b"../x".to_vec(),
                    },
                    size: 4,
                    ..base.clone()
                },
                Node {
                    name: b"tty".to_vec(),
                    kind: NodeKind::CharDevice { rdev: 0x0501 },
                    ..base.clone()
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let tree = sample_tree();
        let bytes = tree.encode();
        assert_eq!(Tree::decode(&ChunkId::of(&bytes), &bytes).unwrap(), tree);
    }

    #[test]
    fn golden_bytes_are_stable() {
        // Pinned: a change here is a format change and needs a new version.
        let golden = crate::codec::assert_golden("tree_v1.bin", &sample_tree().encode());
        assert_eq!(&golden[..6], b"STRT\x01\x00");
        assert_eq!(
            Tree::decode(&ChunkId::of(&golden), &golden).unwrap(),
            sample_tree()
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = sample_tree().encode();
        bytes[4] = 9;
        let err = Tree::decode(&ChunkId([0; 32]), &bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 9"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_tree().encode();
        for len in 0..bytes.len() {
            assert!(Tree::decode(&ChunkId([0; 32]), &bytes[..len]).is_err());
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(validate_name(bad, "test").is_err());
        }
        validate_name(b"...", "test").unwrap();
    }
}
