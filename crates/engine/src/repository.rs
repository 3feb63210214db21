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
use std::sync::Arc;
use std::time::Duration;

use crate::config::RepoConfig;
use crate::crypto::Protection;
use crate::keys::{self, NewKey, PasswordSource, Unlocked};
use crate::config_file;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, RestorePointId};
use crate::index::{PackRecord,
    Catalog, ChunkIndex, ChunkLocation, IndexAccess, PackTable, RocksIndex, ThawTable, Tier,
};
use crate::lock::{ObjectLock, RepositoryLock};
use crate::pack::ChunkCodec;
use crate::packs::{ChunkBuffers, OpenPack, Packs, SealedPack};
use crate::restore_point::{self, Manifest, RestorePoint};
use crate::storage::local::staging_name;
use crate::site::{self, Site};
use crate::storage::{LocalStore, Location, ObjectStore};
use crate::tree::Tree;

/// Marker: may read, beside a writer.
pub struct ReadOnly;
/// Marker: holds the writer lock.
pub struct Exclusive;

pub struct Repository<Mode = ReadOnly> {
    state: StateDir,
    config: RepoConfig,
    /// The warm and cold tiers' stores, behind the pack service.
    packs: Packs,
    /// Reached through its concerns ([`Repository::chunk_index`] and the
    /// like), so that only this module knows the index is RocksDB.
    index: RocksIndex,
    /// The keys of an encrypted repository, kept for `strata key`.
    unlocked: Option<Arc<Unlocked>>,
    /// Where its objects are: a directory or a bucket.
    location: Location,
    /// A writer's locks, held until it is dropped.
    _locks: Locks,
    _mode: PhantomData<Mode>,
}

/// How to open a repository, beyond where it is.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Makes every cold-tier request wait this long: a rehearsal of an
    /// archival backend on local disks.
    pub cold_delay: Option<Duration>,
    /// Asked for the password when the repository is encrypted.
    pub password: Option<Arc<dyn PasswordSource>>,
    /// This machine's state of a repository in a bucket (index, lock,
    /// staging); `~/.cache/strata/<repository id>` by default.
    pub state_dir: Option<std::path::PathBuf>,
    /// Most bytes of a bucket's packs kept in the state directory for
    /// reading; [`DEFAULT_READ_CACHE_BYTES`] when `None`.
    pub read_cache_bytes: Option<u64>,
    /// How to reach the repository's buckets (endpoint, credentials);
    /// the provider's usual environment variables when `None`.
    pub access: Option<crate::storage::Access>,
    /// Retries of each bucket request; fewer where a dead server should
    /// fail a run quickly (scripts that retry themselves, tests).
    pub bucket_retries: Option<usize>,
    /// Opens an encrypted repository without its key (a repository
    /// server): it stores and indexes sealed objects and never opens one.
    pub key_withheld: bool,
}

/// The read cache of a repository in a bucket: 2 GiB.
pub const DEFAULT_READ_CACHE_BYTES: u64 = 2 << 30;

impl OpenOptions {
    /// Options giving `password` to an encrypted repository.
    pub fn with_password(password: &str) -> Self {
        OpenOptions {
            password: Some(Arc::new(keys::FixedPassword(keys::Password::new(
                password.as_bytes().to_vec(),
            )))),
            ..OpenOptions::default()
        }
    }
}

/// The machine-local state of a repository: its index, its writer lock
/// and scratch space. The repository's objects may live elsewhere; for a
/// repository in a local directory, the state is kept beside them.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// Where the data mover of this machine keeps its memory of what it
    /// read: the file cache of incremental backups.
    pub fn file_cache_dir(&self) -> PathBuf {
        self.root.join("file-cache")
    }

    /// Scratch space on the state's file system, for moving a database
    /// aside before deleting it.
    fn scratch(&self, prefix: &str) -> Result<PathBuf> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).at("creating", &dir)?;
        Ok(dir.join(staging_name(prefix)))
    }

    /// Removes a database directory: renamed aside first, so that a crash
    /// part-way never leaves a half-deleted database under its name.
    fn remove_database(&self, dir: &Path, what: &str) -> Result<()> {
        if dir.exists() {
            let aside = self.scratch(what)?;
            std::fs::rename(dir, &aside).at("moving aside", dir)?;
            std::fs::remove_dir_all(&aside).at("removing", &aside)?;
        }
        Ok(())
    }
}

impl Repository<ReadOnly> {
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, &OpenOptions::default())
    }

    pub fn open_with(root: &Path, options: &OpenOptions) -> Result<Self> {
        let site = site::open(root, options)?;
        let (protection, unlocked) =
            unlock(&site, options)?;
        require_index(&site)?;
        let index = RocksIndex::open(&site.state.index_dir(), IndexAccess::Secondary)?;
        Ok(Self::assemble(site, protection, index, unlocked, Locks::default()))
    }
}

/// A repository's object stores, wherever they live.
pub struct Stores {
    pub warm: Arc<dyn ObjectStore>,
    pub cold: Option<Arc<dyn ObjectStore>>,
}

impl Repository<Exclusive> {
    /// Creates a repository whose objects live in `stores` (which must be
    /// empty) and whose index and lock live in `state`; encrypted when
    /// `config` says so, with a first key slot for `key`. The engine's
    /// unit tests run it on in-memory stores; object-storage backends will
    /// too.
    pub fn create_on(
        stores: Stores,
        state: StateDir,
        config: RepoConfig,
        key: Option<&NewKey<'_>>,
    ) -> Result<Self> {
        if stores.warm.size(RepoConfig::FILE_NAME).is_ok() {
            return Err(Error::InvalidInput(format!(
                "{} already holds a repository",
                stores.warm.location()
            )));
        }
        std::fs::create_dir_all(state.root()).at("creating", state.root())?;
        let lock = RepositoryLock::acquire(state.root(), "strata init")?;
        let index = RocksIndex::open(&state.index_dir(), IndexAccess::Create)?;
        let unlocked = create_keys(stores.warm.as_ref(), &config, key)?;
        stores.warm.put(RepoConfig::FILE_NAME, &config.to_json())?;
        let protection = unlocked.as_ref().map_or_else(Protection::none, |u| u.protection());
        let site = Site {
            location: Location::Directory(state.root().to_path_buf()),
            config,
            state,
            stores: site::TierStores {
                warm_reads: Arc::clone(&stores.warm),
                warm: stores.warm,
                cold: stores.cold,
            },
        };
        let locks = Locks {
            _file: Some(lock),
            _object: None,
        };
        Ok(Self::assemble(site, protection, index, unlocked, locks))
    }

    /// Creates a new, empty repository at `root` (a directory or a bucket
    /// URL): encrypted, with a first key slot for `key`, when `config`
    /// says so.
    pub fn init(root: &Path, config: RepoConfig, key: Option<&NewKey<'_>>) -> Result<Self> {
        Self::init_with(root, config, key, &OpenOptions::default())
    }

    pub fn init_with(
        root: &Path,
        config: RepoConfig,
        key: Option<&NewKey<'_>>,
        options: &OpenOptions,
    ) -> Result<Self> {
        let location = site::location_of(root)?;
        let state = match &location {
            Location::Directory(dir) => {
                if config_file::exists(dir)? {
                    return Err(Error::InvalidInput(format!(
                        "{} already holds a repository",
                        dir.display()
                    )));
                }
                if let Some(cold) = &config.tiers.cold_dir {
                    site::refuse_shared_tier(dir, cold)?;
                }
                LocalStore::create(dir)?;
                // The layout people see in a new repository, before the
                // first pack or manifest.
                for sub in ["packs", "manifests"] {
                    std::fs::create_dir(dir.join(sub)).at("creating", dir.join(sub))?;
                }
                StateDir::new(dir)
            }
            _ => site::bucket_state(options, &config.repository_id)?,
        };
        let store = site::reading_store(&location, options)?;
        // Also the first request to a bucket: wrong credentials or a
        // missing bucket fail here, before anything is written.
        match store.get(RepoConfig::FILE_NAME) {
            Ok(_) => {
                return Err(Error::InvalidInput(format!(
                    "{} already holds a repository",
                    store.location()
                )))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(state.root()).at("creating", state.root())?;
        let locks = Locks::acquire(&location, &state, &store, "strata init")?;
        RocksIndex::open(&state.index_dir(), IndexAccess::Create)?;
        let unlocked = create_keys(store.as_ref(), &config, key)?;
        // The configuration goes last: until it exists, this is not a
        // repository, and a crash part-way leaves nothing to mistake for one.
        store.put(RepoConfig::FILE_NAME, &config.to_json())?;
        drop(locks);
        Self::open_exclusive_unlocked(root, "strata init", options, unlocked)
    }

    /// Opens for writing: takes the writer lock, clears what an interrupted
    /// writer left in the staging area, and catalogues any restore point
    /// whose manifest was committed just before a crash.
    pub fn open_exclusive(root: &Path, command: &str) -> Result<Self> {
        Self::open_exclusive_with(root, command, &OpenOptions::default())
    }

    pub fn open_exclusive_with(root: &Path, command: &str, options: &OpenOptions) -> Result<Self> {
        Self::open_exclusive_unlocked(root, command, options, None)
    }

    /// [`Self::open_exclusive_with`], with the keys when the caller
    /// already holds them (`init` just made them): one Argon2id derivation
    /// per command, not one per step.
    fn open_exclusive_unlocked(
        root: &Path,
        command: &str,
        options: &OpenOptions,
        unlocked: Option<Arc<Unlocked>>,
    ) -> Result<Self> {
        let site = site::open(root, options)?;
        let (protection, unlocked) = match unlocked {
            Some(unlocked) => (unlocked.protection(), Some(unlocked)),
            None => unlock(&site, options)?,
        };
        require_index(&site)?;
        // Unlocked before locking: a wrong password leaves no trace.
        let locks = Locks::acquire(&site.location, &site.state, &site.stores.warm, command)?;
        site.stores.clear_staging()?;
        let index = RocksIndex::open(&site.state.index_dir(), IndexAccess::Primary)?;
        let repo = Self::assemble(site, protection, index, unlocked, locks);
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
        let names = self.store().list_all("manifests/")?;
        let stored: std::collections::HashSet<_> = names
            .iter()
            .filter_map(|n| restore_point::id_from_object_name(n))
            .collect();
        for id in catalogued.difference(&stored) {
            // Forgotten, but the process died before the catalog followed.
            self.index.remove_restore_point(id)?;
        }
        for id in stored.difference(&catalogued) {
            let bytes = self.store().get(&restore_point::object_name(id))?;
            // Without the key a manifest cannot be judged here; readers,
            // who hold it, verify every manifest they open.
            let checked = if self.protection().is_withheld() {
                Ok(())
            } else {
                Manifest::open(self.protection(), id, &bytes).map(|_| ())
            };
            if let Err(e) = checked {
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
        let (id, bytes) = manifest.seal(self.protection())?;
        self.store().put(&restore_point::object_name(&id), &bytes)?;
        self.index.add_restore_point(&id, &bytes)?;
        Ok(id)
    }

    /// Makes a restore point visible from its stored (sealed) form, as a
    /// repository server commits what a remote mover sealed. The caller
    /// guarantees what [`Self::commit_restore_point`] requires; an id
    /// already committed is left as it is.
    pub fn commit_stored_restore_point(&self, id: &RestorePointId, stored: &[u8]) -> Result<()> {
        let name = restore_point::object_name(id);
        match self.store().size(&name) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        self.store().put(&name, stored)?;
        self.index.add_restore_point(id, stored)?;
        Ok(())
    }

    /// Seals a pack and indexes every chunk in it: durable first, then
    /// visible.
    pub fn seal_pack(&self, pack: OpenPack) -> Result<SealedPack> {
        Ok(self.seal_pack_over(pack)?.0)
    }

    /// [`seal_pack`](Self::seal_pack), also returning the record the
    /// pack's id had before, if any: a pack with the same bytes may already
    /// be indexed, on another tier.
    pub fn seal_pack_over(&self, pack: OpenPack) -> Result<(SealedPack, Option<PackRecord>)> {
        let sealed = self.packs.seal(pack)?;
        let before = self.index.pack(&sealed.id)?;
        self.index
            .add_pack(sealed.id, &sealed.record(), &sealed.entries)?;
        Ok((sealed, before))
    }

    /// Replaces the index with a fresh one; see `repair`.
    pub(crate) fn recreate_index(&mut self) -> Result<()> {
        // Close the old database before moving it aside.
        let placeholder_dir = self.state.scratch("index-placeholder")?;
        let placeholder = RocksIndex::open(&placeholder_dir, IndexAccess::Create)?;
        drop(std::mem::replace(&mut self.index, placeholder));
        let dir = self.state.index_dir();
        self.state.remove_database(&dir, "old-index")?;
        self.index = RocksIndex::open(&dir, IndexAccess::Rebuild)?;
        let _ = std::fs::remove_dir_all(&placeholder_dir);
        Ok(())
    }

    /// Ends a rebuild begun with [`Repository::recreate_index`]: until
    /// then, every command refuses the index.
    pub(crate) fn mark_index_rebuilt(&self) -> Result<()> {
        self.index.mark_rebuilt()
    }

    /// Opens for writing even when the index is missing or unreadable, for
    /// `repair index`.
    pub fn open_for_repair(root: &Path, command: &str, options: &OpenOptions) -> Result<Self> {
        let site = site::open(root, options)?;
        let (protection, unlocked) =
            unlock(&site, options)?;
        // A new machine has no state for a bucket yet: repair builds it.
        std::fs::create_dir_all(site.state.root()).at("creating", site.state.root())?;
        let locks = Locks::acquire(&site.location, &site.state, &site.stores.warm, command)?;
        site.stores.clear_staging()?;
        let state = &site.state;
        let dir = state.index_dir();
        let index = match RocksIndex::open(&dir, IndexAccess::Primary) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, "index unusable; starting from an empty one");
                state.remove_database(&dir, "broken-index")?;
                RocksIndex::open(&dir, IndexAccess::Create)?
            }
        };
        Ok(Self::assemble(site, protection, index, unlocked, locks))
    }
}

/// The writer's locks: the `flock` in the state directory, and for a
/// bucket the lock object other machines see. Held, never read: dropping
/// them releases them.
#[derive(Default)]
struct Locks {
    _file: Option<RepositoryLock>,
    _object: Option<ObjectLock>,
}

impl Locks {
    fn acquire(
        location: &Location,
        state: &StateDir,
        warm: &Arc<dyn ObjectStore>,
        command: &str,
    ) -> Result<Locks> {
        let file = RepositoryLock::acquire(state.root(), command)?;
        let object = match location {
            Location::Directory(_) => None,
            _ => Some(ObjectLock::acquire(Arc::clone(warm), command)?),
        };
        Ok(Locks {
            _file: Some(file),
            _object: object,
        })
    }
}

/// The repository's protection: unlocked with the caller's password, or
/// withheld when the caller asked to work without the key.
fn unlock(site: &Site, options: &OpenOptions) -> Result<(Protection, Option<Arc<Unlocked>>)> {
    if options.key_withheld && site.config.is_encrypted() {
        return Ok((Protection::withheld(), None));
    }
    keys::protection_for(site.stores.warm.as_ref(), &site.config, options.password.as_ref())
}

/// A repository in a bucket opened on a machine that has no index for it
/// yet: say how to build one, rather than RocksDB's "no such file".
fn require_index(site: &Site) -> Result<()> {
    if !site.location.is_directory() && !site.state.index_dir().exists() {
        return Err(Error::InvalidInput(format!(
            "this machine has no index of {} (state directory {}): build it from the bucket with `strata repair index`",
            site.location,
            site.state.root().display()
        )));
    }
    Ok(())
}

/// The keys and first slot of a new repository, if it is encrypted.
fn create_keys(
    store: &dyn ObjectStore,
    config: &RepoConfig,
    key: Option<&NewKey<'_>>,
) -> Result<Option<Arc<Unlocked>>> {
    match (config.is_encrypted(), key) {
        (false, _) => Ok(None),
        (true, Some(key)) => Ok(Some(Arc::new(keys::create(store, &config.repository_id, key)?))),
        (true, None) => Err(Error::PasswordRequired {
            repository: store.location(),
            detail: "a new encrypted repository needs a password".into(),
        }),
    }
}

impl<Mode> Repository<Mode> {
    fn assemble(
        site: Site,
        protection: Protection,
        index: RocksIndex,
        unlocked: Option<Arc<Unlocked>>,
        locks: Locks,
    ) -> Self {
        let packs = Packs::for_config(site.stores.warm, site.stores.cold, &site.config, protection)
            .with_chunk_reads(site.stores.warm_reads);
        Repository {
            state: site.state,
            config: site.config,
            packs,
            index,
            unlocked,
            location: site.location,
            _locks: locks,
            _mode: PhantomData,
        }
    }

    /// The repository's machine-local state directory (for a repository
    /// in a directory, that directory).
    pub fn root(&self) -> &Path {
        self.state.root()
    }

    /// Where the repository's objects are: a directory or a bucket.
    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The warm tier's store.
    pub fn store(&self) -> &dyn ObjectStore {
        self.packs.warm()
    }

    pub fn packs(&self) -> &Packs {
        &self.packs
    }

    pub fn codec(&self) -> &ChunkCodec {
        self.packs.codec()
    }

    /// How this repository protects what it stores.
    pub fn protection(&self) -> &Protection {
        self.packs.codec().protection()
    }

    /// How this repository computes chunk and restore point ids.
    pub fn ids(&self) -> crate::id::IdKey {
        self.protection().ids()
    }

    /// The keys of this encrypted repository, for managing its key slots.
    pub fn unlocked(&self) -> Result<&Unlocked> {
        self.unlocked.as_deref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "repository {} is not encrypted: it has no keys",
                self.root().display()
            ))
        })
    }

    /// The key slot the password opened, if the repository is encrypted.
    pub fn key_slot_in_use(&self) -> Option<crate::key_slot::SlotId> {
        self.unlocked.as_ref().map(|u| u.slot)
    }

    pub fn chunk_index(&self) -> &dyn ChunkIndex {
        &self.index
    }

    pub fn pack_table(&self) -> &dyn PackTable {
        &self.index
    }

    pub fn catalog(&self) -> &dyn Catalog {
        &self.index
    }

    pub fn thaw_table(&self) -> &dyn ThawTable {
        &self.index
    }

    /// For readers: see what the writer has indexed since this repository
    /// was opened (or last caught up). A writer's view is always current.
    pub fn catch_up(&self) -> Result<()> {
        self.index.catch_up()
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

    /// Reads, decompresses and verifies one chunk (here rather than only
    /// in [`crate::reader::RepositoryReader`], so the engine's own jobs
    /// need no trait in scope).
    ///
    /// A reader beside a writer sees the index as it was when it last
    /// caught up; since then `prune` may have repacked the chunk or `tier
    /// run` moved it, deleting the pack this reader knows of. A missing
    /// pack therefore means "look again", not "damaged": the reader catches
    /// up and reads from wherever the chunk lives now.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let mut buffers = ChunkBuffers::default();
        self.read_chunk_into(id, &mut buffers)?;
        Ok(buffers.plain)
    }

    /// [`Self::read_chunk`] into reused buffers; the plaintext is left in
    /// `buffers.plain`.
    pub fn read_chunk_into(&self, id: &ChunkId, buffers: &mut ChunkBuffers) -> Result<()> {
        let location = self.locate(id)?;
        match self.read_located_into(&location, buffers) {
            Err(e) if e.is_not_found() && self.index.is_secondary() => {
                self.index.catch_up()?;
                let current = self.locate(id)?;
                if current == location {
                    return Err(e);
                }
                tracing::debug!(chunk = %id, from = %location.pack, to = %current.pack, "chunk moved; reading its new location");
                self.read_located_into(&current, buffers)
            }
            result => result,
        }
    }

    /// Reads one chunk where the index says it is. A cold chunk is read
    /// from its thawed copy on the warm tier, or not at all.
    pub fn read_located(&self, location: &ChunkLocation) -> Result<Vec<u8>> {
        let mut buffers = ChunkBuffers::default();
        self.read_located_into(location, &mut buffers)?;
        Ok(buffers.plain)
    }

    fn read_located_into(
        &self,
        location: &ChunkLocation,
        buffers: &mut ChunkBuffers,
    ) -> Result<()> {
        let (pack, entry) = (&location.pack, &location.entry);
        match location.tier {
            Tier::Warm => self.packs.read_chunk_into(Tier::Warm, pack, entry, buffers),
            Tier::Cold if self.is_thawed(pack)? => {
                self.packs.read_thawed_chunk_into(pack, entry, buffers)
            }
            Tier::Cold => Err(Error::Cold {
                chunk: entry.id,
                pack: *pack,
            }),
        }
    }

    /// Whether cold pack `pack` has a live thawed copy.
    fn is_thawed(&self, pack: &crate::id::PackId) -> Result<bool> {
        let now = crate::clock::now().sec;
        Ok(self
            .index
            .pack_thawed_until(pack)?
            .is_some_and(|until| until > now))
    }

    /// Whether a chunk can be read now: warm, or cold with a live thaw copy.
    pub fn is_readable(&self, id: &ChunkId) -> Result<bool> {
        let location = self.locate(id)?;
        match location.tier {
            Tier::Warm => Ok(true),
            Tier::Cold => self.is_thawed(&location.pack),
        }
    }

    /// The cold tier's store, or an error saying none is configured.
    pub fn cold_store(&self) -> Result<&dyn ObjectStore> {
        self.packs.store(Tier::Cold)
    }

    pub fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        Tree::decode(id, &self.read_chunk(id)?)
    }

    /// Every committed restore point, oldest first. Manifests are the
    /// truth; the catalog saves reading them.
    pub fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        let mut out = self
            .stored_restore_points()?
            .into_iter()
            .map(|(id, bytes)| {
                Ok(RestorePoint {
                    id,
                    manifest: Manifest::open(self.protection(), &id, &bytes)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id));
        Ok(out)
    }

    /// Every committed restore point in its stored form (sealed when the
    /// repository is encrypted), oldest name first: what a repository
    /// server hands its clients, who open them.
    pub fn stored_restore_points(&self) -> Result<Vec<(RestorePointId, Vec<u8>)>> {
        let mut catalog: HashMap<RestorePointId, Vec<u8>> =
            self.index.restore_points()?.into_iter().collect();
        let mut out = Vec::new();
        for name in self.store().list("manifests/") {
            let name = name?;
            let Some(id) = restore_point::id_from_object_name(&name) else {
                continue;
            };
            let bytes = match catalog.remove(&id) {
                Some(bytes) => bytes,
                None => self.store().get(&name)?,
            };
            out.push((id, bytes));
        }
        Ok(out)
    }

    /// A chunk as stored (compressed, sealed when encrypted), with its
    /// pack entry and pack, read where the index says it is: what a
    /// repository server sends a client, which decodes and verifies it.
    pub fn read_stored_chunk(&self, id: &ChunkId) -> Result<(crate::id::PackId, crate::pack::PackEntry, Vec<u8>)> {
        let location = self.locate(id)?;
        let (pack, entry) = (location.pack, location.entry);
        let stored = match location.tier {
            Tier::Warm => self.packs.read_stored(Tier::Warm, &pack, &entry)?,
            Tier::Cold if self.is_thawed(&pack)? => self.packs.read_thawed_stored(&pack, &entry)?,
            Tier::Cold => return Err(Error::Cold { chunk: entry.id, pack }),
        };
        Ok((pack, entry, stored))
    }
}
