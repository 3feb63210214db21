//! A repository on in-memory stores, and helpers to fill it with file
//! restore points described by their content.
//!
//! Each call that stores chunks is one run of the backup pipeline, and a
//! run seals its open packs when it ends: chunks stored by different calls
//! never share a pack. Tests use that to decide which chunks share a pack
//! (within one run the order in a pack depends on the compressor threads).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tempfile::TempDir;

use crate::session::{with_local_session, BackupSession};
use crate::cancel::CancelToken;
use crate::config::RepoConfig;
use crate::forget::{self, KeepPolicy};
use crate::id::{ChunkId, PackId, RestorePointId};
use crate::index::{ChunkLocation, PackRecord};
use crate::pack::{self, ChunkKind};
use crate::repository::{Exclusive, Repository, StateDir, Stores};
use crate::restore_point::{BackupStats, Manifest, RestorePoint, RestorePointKind};
use crate::storage::{MemoryStore, ObjectStore};
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree};

pub const DAY: i64 = 86_400;

/// A pack target small enough that a few chunks of some KiB fill a pack.
pub const SMALL_PACKS: u64 = 64 * 1024;

pub struct Fixture {
    pub repo: Repository<Exclusive>,
    pub warm: MemoryStore,
    pub cold: Option<MemoryStore>,
    /// Holds the index and the lock; removed when the fixture goes.
    _state: TempDir,
}

/// What one pipeline run stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub chunks_new: u64,
    pub packs: u64,
}

/// A file or directory of a restore point, by content.
#[derive(Debug, Clone)]
pub enum Entry {
    /// The file's data chunks, in order.
    File(Vec<Vec<u8>>),
    Dir(Vec<(String, Entry)>),
}

pub fn file<B: AsRef<[u8]>>(chunks: &[B]) -> Entry {
    Entry::File(chunks.iter().map(|c| c.as_ref().to_vec()).collect())
}

pub fn dir<const N: usize>(entries: [(&str, Entry); N]) -> Entry {
    Entry::Dir(
        entries
            .into_iter()
            .map(|(name, entry)| (name.to_string(), entry))
            .collect(),
    )
}

/// A committed file restore point and the ids of what it references.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: RestorePointId,
    pub root: ChunkId,
    /// Tree id of each directory, by path (`""` for the root, else `/a/b`).
    pub trees: BTreeMap<String, ChunkId>,
    pub data: BTreeSet<ChunkId>,
}

impl Committed {
    pub fn tree_ids(&self) -> BTreeSet<ChunkId> {
        self.trees.values().copied().collect()
    }

    /// Every chunk the restore point references.
    pub fn chunks(&self) -> BTreeSet<ChunkId> {
        self.tree_ids().union(&self.data).copied().collect()
    }
}

/// Deterministic, incompressible bytes: stored as they are, so their
/// stored length is their length.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

pub fn now() -> i64 {
    crate::clock::now().sec
}

fn node(name: &str, kind: NodeKind, size: u64) -> Node {
    let directory = matches!(kind, NodeKind::Directory { .. });
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: if directory { 0o755 } else { 0o644 },
        uid: 1000,
        gid: 1000,
        user: b"alice".to_vec(),
        group: b"alice".to_vec(),
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        },
        atime: Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        },
        size,
        nlink: if directory { 2 } else { 1 },
        link_id: 0,
        xattrs: vec![],
    }
}

/// Trees and chunks of a directory, built bottom-up as a backup does.
struct Built {
    /// The repository's ids (keyed when it is encrypted).
    ids: crate::id::IdKey,
    trees: BTreeMap<String, ChunkId>,
    data: BTreeSet<ChunkId>,
    chunks: Vec<(ChunkKind, Vec<u8>)>,
}

impl Built {
    fn directory(&mut self, path: &str, entries: &[(String, Entry)]) -> ChunkId {
        let mut nodes = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            match entry {
                Entry::File(chunks) => {
                    let extents = chunks
                        .iter()
                        .map(|bytes| {
                            let id = self.ids.chunk_id(bytes);
                            self.data.insert(id);
                            self.chunks.push((ChunkKind::Data, bytes.clone()));
                            Extent::Data {
                                id,
                                len: bytes.len() as u32,
                            }
                        })
                        .collect::<Vec<_>>();
                    let size = extents.iter().map(Extent::len).sum();
                    nodes.push(node(name, NodeKind::File { extents }, size));
                }
                Entry::Dir(children) => {
                    let subtree = self.directory(&format!("{path}/{name}"), children);
                    nodes.push(node(name, NodeKind::Directory { subtree }, 0));
                }
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = Tree { nodes }.encode();
        let id = self.ids.chunk_id(&bytes);
        self.trees.insert(path.to_string(), id);
        self.chunks.push((ChunkKind::Tree, bytes));
        id
    }
}

impl Fixture {
    /// A warm-only repository with 1 MiB packs.
    pub fn new() -> Self {
        Self::build(false, 1024 * 1024)
    }

    /// A repository with a cold tier.
    pub fn with_cold() -> Self {
        Self::build(true, 1024 * 1024)
    }

    pub fn build(cold: bool, pack_target_size: u64) -> Self {
        let state = tempfile::tempdir().expect("temporary state directory");
        let warm = MemoryStore::new();
        let cold = cold.then(MemoryStore::new);
        let mut config = RepoConfig::new("engine-tests".into());
        config.pack_target_size = pack_target_size;
        // Encrypted unless STRATA_TEST_ENCRYPTION=none: `tools/test` runs
        // these tests both ways.
        let encrypted = std::env::var("STRATA_TEST_ENCRYPTION").as_deref() != Ok("none");
        let password = crate::keys::Password::new(b"engine tests".to_vec());
        let key = crate::keys::NewKey {
            password: &password,
            kdf: crate::key_slot::KdfParams::CHEAPEST,
        };
        if encrypted {
            config = config.encrypted();
        }
        let repo = Repository::create_on(
            Stores {
                warm: Arc::new(warm.clone()),
                cold: cold
                    .clone()
                    .map(|c| Arc::new(c) as Arc<dyn ObjectStore>),
            },
            StateDir::new(state.path().join("state")),
            config,
            encrypted.then_some(&key),
        )
        .expect("creating a repository on memory stores");
        Fixture {
            repo,
            warm,
            cold,
            _state: state,
        }
    }

    /// The id of a chunk with content `bytes` in this repository.
    pub fn id(&self, bytes: &[u8]) -> ChunkId {
        self.repo.ids().chunk_id(bytes)
    }

    pub fn cold(&self) -> &MemoryStore {
        self.cold.as_ref().expect("a fixture with a cold tier")
    }

    /// Stores chunks in one pipeline run.
    pub fn store(&self, chunks: &[(ChunkKind, Vec<u8>)]) -> Stored {
        with_local_session(&self.repo, |session| {
            for (kind, bytes) in chunks {
                session.store_chunk(session.chunk_id(bytes), *kind, bytes)?;
            }
            // Sealed and indexed, without a restore point.
            session.flush()?;
            let counters = session.counters();
            Ok(Stored {
                chunks_new: counters.chunks_new.load(Ordering::Relaxed),
                packs: counters.packs.load(Ordering::Relaxed),
            })
        })
        .expect("storing chunks")
    }

    /// Stores data chunks in one pipeline run.
    pub fn store_data<B: AsRef<[u8]>>(&self, chunks: &[B]) -> Stored {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|c| (ChunkKind::Data, c.as_ref().to_vec()))
            .collect();
        self.store(&chunks)
    }

    /// Stores the trees and data of `root` (a directory) in one pipeline
    /// run, then commits a files restore point of `source` taken at
    /// `time` (Unix seconds).
    pub fn commit_files(&self, source: &str, time: i64, root: &Entry) -> Committed {
        let Entry::Dir(entries) = root else {
            panic!("a restore point's root is a directory");
        };
        let mut built = Built {
            ids: self.repo.ids(),
            trees: BTreeMap::new(),
            data: BTreeSet::new(),
            chunks: Vec::new(),
        };
        let root = built.directory("", entries);
        self.store(&built.chunks);
        let manifest = files_manifest(source, time, root);
        let id = self
            .repo
            .commit_restore_point(&manifest)
            .expect("committing a restore point");
        Committed {
            id,
            root,
            trees: built.trees,
            data: built.data,
        }
    }

    pub fn restore_point(&self, id: &RestorePointId) -> RestorePoint {
        self.repo
            .restore_points()
            .expect("listing restore points")
            .into_iter()
            .find(|rp| rp.id == *id)
            .expect("a committed restore point")
    }

    pub fn restore_point_ids(&self) -> BTreeSet<RestorePointId> {
        self.repo
            .restore_points()
            .expect("listing restore points")
            .into_iter()
            .map(|rp| rp.id)
            .collect()
    }

    /// Forgets every restore point of `source` but its newest, through
    /// the retention policy (the one public way to remove restore points);
    /// returns the ids removed.
    pub fn forget_all_but_newest(&self, source: &str) -> BTreeSet<RestorePointId> {
        let policy = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        forget::forget(&self.repo, &[source.to_string()], &policy, false)
            .expect("forgetting")
            .into_iter()
            .filter(|d| !d.keep)
            .map(|d| d.id.parse().expect("a restore point id"))
            .collect()
    }

    pub fn location(&self, id: &ChunkId) -> ChunkLocation {
        self.repo
            .chunk_index()
            .chunk(id)
            .expect("reading the index")
            .unwrap_or_else(|| panic!("chunk {id:?} is not indexed"))
    }

    /// Every pack record in the index.
    pub fn indexed_packs(&self) -> BTreeMap<PackId, PackRecord> {
        self.repo
            .pack_table()
            .packs()
            .collect::<crate::Result<_>>()
            .expect("listing indexed packs")
    }

    /// Every chunk record in the index.
    pub fn indexed_chunks(&self) -> BTreeMap<ChunkId, ChunkLocation> {
        self.repo
            .chunk_index()
            .chunks()
            .map(|l| l.map(|l| (l.entry.id, l)))
            .collect::<crate::Result<_>>()
            .expect("listing indexed chunks")
    }

    /// Corrupts one byte in the middle of a chunk's stored bytes in its
    /// (warm) pack.
    pub fn damage_chunk(&self, id: &ChunkId) {
        let location = self.location(id);
        let at = location.entry.offset + location.entry.stored_len as u64 / 2;
        self.warm
            .flip_byte(&pack::object_name(&location.pack), at as usize)
            .expect("flipping a byte");
    }
}

/// The packs stored in `store`.
pub fn stored_packs(store: &MemoryStore) -> BTreeSet<PackId> {
    let store: &dyn ObjectStore = store;
    store
        .list_all("packs/")
        .expect("listing packs")
        .iter()
        .map(|name| pack::id_from_object_name(name).expect("a pack name"))
        .collect()
}

/// Every object in `store`, with its bytes.
pub fn snapshot(store: &MemoryStore) -> BTreeMap<String, Vec<u8>> {
    let dyn_store: &dyn ObjectStore = store;
    dyn_store
        .list_all("")
        .expect("listing objects")
        .into_iter()
        .map(|name| {
            let bytes = store.get(&name).expect("reading an object");
            (name, bytes)
        })
        .collect()
}

pub fn no_cancel() -> CancelToken {
    CancelToken::new()
}

/// A files restore point's manifest of `source`, taken at `time` (Unix
/// seconds), whose tree is `root`.
pub fn files_manifest(source: &str, time: i64, root: ChunkId) -> Manifest {
    Manifest {
        kind: RestorePointKind::Files,
        source: source.into(),
        time: Timestamp { sec: time, nsec: 0 },
        hostname: "test-host".into(),
        tags: vec![],
        paths: vec![b"/".to_vec()],
        root,
        parent: None,
        stats: BackupStats::default(),
        missed: vec![],
    }
}

/// A thaw of `days` days; only its plan with `plan`.
pub fn thaw_options(days: u32, plan: bool) -> crate::thaw::ThawOptions {
    crate::thaw::ThawOptions {
        days,
        plan,
        priority: crate::storage::RestorePriority::Standard,
    }
}
