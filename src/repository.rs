//! The repository: configuration, object store, index and writer lock, and
//! the operations every command shares (reading chunks and trees, listing
//! and committing restore points).
//!
//! Its life cycle is in its type: `Repository<ReadOnly>` reads beside a
//! possible writer, `Repository<Exclusive>` holds the writer lock, and only
//! the latter has methods that change the repository.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::config::RepoConfig;
use crate::config_file;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, RestorePointId};
use crate::index::{ChunkLocation, Index, IndexAccess, Tier};
use crate::lock::RepositoryLock;
use crate::pack;
use crate::restore_point::{self, Manifest, RestorePoint};
use crate::storage::local::fsync_dir;
use crate::storage::{LocalStore, ObjectStore};
use crate::tree::Tree;

/// Marker: may read, beside a writer.
pub struct ReadOnly;
/// Marker: holds the writer lock.
pub struct Exclusive;

pub struct Repository<Mode = ReadOnly> {
    root: PathBuf,
    config: RepoConfig,
    store: LocalStore,
    /// The cold tier, when one is configured.
    cold: Option<LocalStore>,
    index: Index,
    _lock: Option<RepositoryLock>,
    _mode: PhantomData<Mode>,
}

const INDEX_DIR: &str = "index";

/// The cold tier's store. `STRATA_COLD_DELAY_MS` adds a delay to every
/// request, to exercise code against a slow archival backend.
fn cold_store(config: &RepoConfig) -> Option<LocalStore> {
    let dir = config.tiers.cold_dir.as_ref()?;
    let delay = std::env::var("STRATA_COLD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    Some(match delay {
        Some(ms) => LocalStore::with_delay(dir, std::time::Duration::from_millis(ms)),
        None => LocalStore::new(dir),
    })
}

/// Object name of a thawed copy of a cold pack, in the warm store.
pub fn thaw_object_name(pack: &crate::id::PackId) -> String {
    format!("thaw/{}", &pack::object_name(pack)["packs/".len()..])
}

fn check_layout(root: &Path) -> Result<RepoConfig> {
    if !root.is_dir() {
        return Err(Error::NotARepository {
            path: root.to_path_buf(),
            reason: "no such directory".into(),
        });
    }
    config_file::load(root)
}

impl Repository<ReadOnly> {
    pub fn open(root: &Path) -> Result<Self> {
        let config = check_layout(root)?;
        let index = Index::open(&root.join(INDEX_DIR), IndexAccess::Secondary)?;
        Ok(Repository {
            root: root.to_path_buf(),
            cold: cold_store(&config),
            config,
            store: LocalStore::new(root),
            index,
            _lock: None,
            _mode: PhantomData,
        })
    }
}

impl Repository<Exclusive> {
    /// Creates a new, empty repository at `root`.
    pub fn init(root: &Path, config: RepoConfig) -> Result<Self> {
        if config_file::exists(root)? {
            return Err(Error::InvalidInput(format!(
                "{} already holds a repository",
                root.display()
            )));
        }
        if root.is_dir()
            && std::fs::read_dir(root)
                .at("listing", root)?
                .next()
                .is_some()
        {
            return Err(Error::InvalidInput(format!(
                "{} is not empty; give a new or empty directory",
                root.display()
            )));
        }
        std::fs::create_dir_all(root).at("creating repository", root)?;
        for dir in ["packs", "manifests", "tmp"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).at("creating", &dir)?;
        }
        let lock = RepositoryLock::acquire(root, "strata init")?;
        Index::open(&root.join(INDEX_DIR), IndexAccess::Create)?;
        let store = LocalStore::new(root);
        store.put(RepoConfig::FILE_NAME, &config.to_json())?;
        fsync_dir(root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        drop(lock);
        Self::open_exclusive(root, "strata init")
    }

    /// Opens for writing: takes the writer lock, clears what an interrupted
    /// writer left in the staging area, and catalogues any restore point
    /// whose manifest was committed just before a crash.
    pub fn open_exclusive(root: &Path, command: &str) -> Result<Self> {
        let config = check_layout(root)?;
        let lock = RepositoryLock::acquire(root, command)?;
        let store = LocalStore::new(root);
        let mut leftovers = store.clear_staging()?;
        if let Some(cold) = cold_store(&config) {
            leftovers += cold.clear_staging()?;
        }
        if leftovers > 0 {
            tracing::info!(leftovers, "removed staging files of an interrupted run");
        }
        let index = Index::open(&root.join(INDEX_DIR), IndexAccess::Primary)?;
        let repo = Repository {
            root: root.to_path_buf(),
            cold: cold_store(&config),
            config,
            store,
            index,
            _lock: Some(lock),
            _mode: PhantomData,
        };
        repo.reconcile_catalog()?;
        Ok(repo)
    }

    fn reconcile_catalog(&self) -> Result<()> {
        let catalogued: std::collections::HashSet<_> = self
            .index
            .restore_points()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let names = self.store.list("manifests/")?;
        let stored: std::collections::HashSet<_> = names
            .iter()
            .filter_map(|n| restore_point::id_from_object_name(n))
            .collect();
        for id in catalogued.difference(&stored) {
            // Forgotten, but the process died before the catalog followed.
            self.index.remove_restore_point(id)?;
        }
        for id in stored.difference(&catalogued) {
            let bytes = self.store.get(&restore_point::object_name(id))?;
            if let Err(e) = Manifest::decode(id, &bytes) {
                // Not this writer's to judge: check names it, prune refuses
                // to run beside it, and repair sets it aside.
                tracing::warn!(restore_point = %id, error = %e, "damaged manifest not catalogued; run `strata repair index`");
                continue;
            }
            self.index.add_restore_point(id, &bytes)?;
            tracing::info!(restore_point = %id, "catalogued a restore point committed before a crash");
        }
        Ok(())
    }

    /// Makes a restore point visible. The caller guarantees that every
    /// chunk and tree it references is durable and indexed.
    pub fn commit_restore_point(&self, manifest: &Manifest) -> Result<RestorePointId> {
        let bytes = manifest.encode();
        let id = Manifest::id_of(&bytes);
        self.store.put(&restore_point::object_name(&id), &bytes)?;
        self.index.add_restore_point(&id, &bytes)?;
        Ok(id)
    }

    /// Replaces the index with a fresh one; see `repair`.
    pub(crate) fn recreate_index(&mut self) -> Result<()> {
        let dir = self.root.join(INDEX_DIR);
        // Close the old database before moving it aside.
        let placeholder = Index::open(
            &self.root.join("tmp").join("index-placeholder"),
            IndexAccess::Create,
        )?;
        drop(std::mem::replace(&mut self.index, placeholder));
        if dir.exists() {
            let aside = self
                .root
                .join("tmp")
                .join(crate::storage::local::staging_name("old-index"));
            std::fs::rename(&dir, &aside).at("moving old index aside", &dir)?;
            std::fs::remove_dir_all(&aside).at("removing old index", &aside)?;
        }
        self.index = Index::open(&dir, IndexAccess::Rebuild)?;
        let _ = std::fs::remove_dir_all(self.root.join("tmp").join("index-placeholder"));
        Ok(())
    }

    /// Opens for writing even when the index is missing or unreadable, for
    /// `repair index`.
    pub fn open_for_repair(root: &Path, command: &str) -> Result<Self> {
        let config = check_layout(root)?;
        let lock = RepositoryLock::acquire(root, command)?;
        let store = LocalStore::new(root);
        store.clear_staging()?;
        let dir = root.join(INDEX_DIR);
        let index = match Index::open(&dir, IndexAccess::Primary) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, "index unusable; starting from an empty one");
                let aside = root
                    .join("tmp")
                    .join(crate::storage::local::staging_name("broken-index"));
                if dir.exists() {
                    std::fs::rename(&dir, &aside).at("moving broken index aside", &dir)?;
                    std::fs::remove_dir_all(&aside).at("removing broken index", &aside)?;
                }
                Index::open(&dir, IndexAccess::Create)?
            }
        };
        Ok(Repository {
            root: root.to_path_buf(),
            cold: cold_store(&config),
            config,
            store,
            index,
            _lock: Some(lock),
            _mode: PhantomData,
        })
    }
}

impl<Mode> Repository<Mode> {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Where a chunk is. A reader whose view of the index is older than
    /// the chunk catches up with the writer before giving up.
    pub fn locate(&self, id: &ChunkId) -> Result<ChunkLocation> {
        if let Some(location) = self.index.chunk(id)? {
            return Ok(location);
        }
        if self.index.is_secondary() {
            self.index.catch_up()?;
            if let Some(location) = self.index.chunk(id)? {
                return Ok(location);
            }
        }
        Err(Error::ChunkMissing { id: *id })
    }

    /// Reads, decompresses and verifies one chunk.
    ///
    /// A reader beside a writer sees the index as it was when it last
    /// caught up; since then `prune` may have repacked the chunk or `tier
    /// run` moved it, deleting the pack this reader knows of. A missing
    /// pack therefore means "look again", not "damaged": the reader catches
    /// up and reads from wherever the chunk lives now.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let location = self.locate(id)?;
        match self.read_located(&location) {
            Err(e) if e.is_not_found() && self.index.is_secondary() => {
                self.index.catch_up()?;
                let current = self.locate(id)?;
                if current == location {
                    return Err(e);
                }
                tracing::debug!(chunk = %id, from = %location.pack, to = %current.pack, "chunk moved; reading its new location");
                self.read_located(&current)
            }
            result => result,
        }
    }

    pub fn read_located(&self, location: &ChunkLocation) -> Result<Vec<u8>> {
        let name = match location.tier {
            Tier::Warm => pack::object_name(&location.pack),
            Tier::Cold => {
                let now = crate::clock::now().sec;
                match self.index.pack_thawed_until(&location.pack)? {
                    Some(until) if until > now => thaw_object_name(&location.pack),
                    _ => {
                        return Err(Error::Cold {
                            chunk: location.entry.id,
                            pack: location.pack,
                        })
                    }
                }
            }
        };
        let mut stored = vec![0u8; location.entry.stored_len as usize];
        self.store
            .read_at(&name, location.entry.offset, &mut stored)?;
        pack::decode_chunk(&location.entry, &location.pack, &stored)
    }

    /// Whether a chunk can be read now: warm, or cold with a live thaw copy.
    pub fn is_readable(&self, id: &ChunkId) -> Result<bool> {
        let location = self.locate(id)?;
        Ok(match location.tier {
            Tier::Warm => true,
            Tier::Cold => self
                .index
                .pack_thawed_until(&location.pack)?
                .is_some_and(|u| u > crate::clock::now().sec),
        })
    }

    /// The cold tier's store, or an error saying none is configured.
    pub fn cold_store(&self) -> Result<&LocalStore> {
        self.cold.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "this repository has no cold tier (create one with `strata init --cold DIR`)"
                    .into(),
            )
        })
    }

    pub fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        Tree::decode(id, &self.read_chunk(id)?)
    }

    /// Every committed restore point, oldest first. Manifests are the
    /// truth; the catalog saves reading them.
    pub fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        let mut catalog: HashMap<RestorePointId, Vec<u8>> =
            self.index.restore_points()?.into_iter().collect();
        let mut out = Vec::new();
        for name in self.store.list("manifests/")? {
            let Some(id) = restore_point::id_from_object_name(&name) else {
                continue;
            };
            let bytes = match catalog.remove(&id) {
                Some(bytes) => bytes,
                None => self.store.get(&name)?,
            };
            out.push(RestorePoint {
                id,
                manifest: Manifest::decode(&id, &bytes)?,
            });
        }
        out.sort_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id));
        Ok(out)
    }

    pub fn resolve(&self, selector: &str) -> Result<RestorePoint> {
        let all = self.restore_points()?;
        crate::selector::select(&all, selector).cloned()
    }

    /// Finds the node at `path` ("/etc/hosts") in a restore point; `/` or
    /// an empty path is the root, returned as `None`.
    pub fn lookup_path(&self, rp: &RestorePoint, path: &str) -> Result<Option<crate::tree::Node>> {
        let not_found = || Error::PathNotInRestorePoint {
            path: path.to_string(),
            restore_point: rp.id.short(),
        };
        let mut current: Option<crate::tree::Node> = None;
        let mut tree_id = Some(rp.manifest.root);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let tree = self.load_tree(&tree_id.ok_or_else(not_found)?)?;
            let node = tree.find(part.as_bytes()).cloned().ok_or_else(not_found)?;
            tree_id = match &node.kind {
                crate::tree::NodeKind::Directory { subtree } => Some(*subtree),
                _ => None,
            };
            current = Some(node);
        }
        Ok(current)
    }
}
