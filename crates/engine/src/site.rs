//! Where a repository is: the location of its objects (a directory, or a
//! bucket), the stores of its tiers, and this machine's state for it.
//!
//! A repository in a directory keeps its state (index, lock, scratch)
//! beside its objects, as it always has. A repository in a bucket keeps it
//! in a state directory on this machine, by default
//! `~/.cache/strata/<repository id>`: the index is derived data that
//! `repair index` rebuilds from the bucket, so any machine can open it.
//! This is the one module that knows which kind of store each tier is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::RepoConfig;
use crate::config_file;
use crate::error::{Error, Result};
use crate::repository::{OpenOptions, StateDir};
use crate::storage::{
    Access, BucketOptions, BucketStore, CachedStore, DelayedStore, LocalStore, Location, ObjectStore,
    StorageClass,
};

/// A repository's location, configuration, stores and state.
pub(crate) struct Site {
    pub location: Location,
    pub config: RepoConfig,
    pub state: StateDir,
    pub stores: TierStores,
}

/// The stores of the warm tier and, where the configuration names one,
/// the cold tier.
pub(crate) struct TierStores {
    pub warm: Arc<dyn ObjectStore>,
    pub cold: Option<Arc<dyn ObjectStore>>,
    /// The warm tier again, for reading chunks to restore or mount: a
    /// bucket's through the local read cache. Everything else (check,
    /// repair, prune, tiering) reads the bucket itself, so it judges what
    /// is stored there, never a local copy.
    pub warm_reads: Arc<dyn ObjectStore>,
}

impl TierStores {
    /// Removes what an interrupted writer left in the staging areas.
    pub fn clear_staging(&self) -> Result<()> {
        let mut leftovers = self.warm.clear_staging()?;
        if let Some(cold) = &self.cold {
            leftovers += cold.clear_staging()?;
        }
        if leftovers > 0 {
            tracing::info!(leftovers, "removed staging files of an interrupted run");
        }
        Ok(())
    }
}

/// The location a `--repo` argument names: a URL, or a path.
pub fn location_of(root: &Path) -> Result<Location> {
    match root.to_str() {
        Some(text) => Location::parse(text),
        None => Ok(Location::Directory(root.to_path_buf())),
    }
}

/// The bucket at `location`, staging uploads under `state`, reached and
/// retried as `options` say (the environment's credentials by default).
fn bucket(
    location: &Location,
    state: &StateDir,
    tier: &str,
    class: Option<&str>,
    options: &OpenOptions,
) -> Result<BucketStore> {
    let staging = state.root().join(format!("uploads-{tier}"));
    let access = options.access.clone().unwrap_or_else(|| Access::from_env(location));
    let mut bucket_options = BucketOptions {
        storage_class: class.map(|class| StorageClass::parse(location, class)).transpose()?,
        ..BucketOptions::default()
    };
    if let Some(tries) = options.bucket_retries {
        bucket_options.retry.tries = tries;
    }
    BucketStore::open_with(location, &access, &staging, &bucket_options)
}

/// Where a repository in a bucket keeps this machine's state.
pub(crate) fn bucket_state(options: &OpenOptions, repository_id: &str) -> Result<StateDir> {
    if let Some(dir) = &options.state_dir {
        return Ok(StateDir::new(dir));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| {
        Error::InvalidInput("HOME is not set: give the repository's state directory with --state DIR".into())
    })?;
    Ok(StateDir::new(
        PathBuf::from(home).join(".cache/strata").join(repository_id),
    ))
}

/// The warm tier's store of a repository at `location` whose state is
/// in `state`, and the same for chunk reads: a bucket's packs are read
/// through a cache there of at most [`OpenOptions::read_cache_bytes`].
fn warm_stores(
    location: &Location,
    state: &StateDir,
    options: &OpenOptions,
) -> Result<(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>)> {
    let read_cache = options
        .read_cache_bytes
        .unwrap_or(crate::repository::DEFAULT_READ_CACHE_BYTES);
    Ok(match location {
        Location::Directory(dir) => {
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir));
            (Arc::clone(&store), store)
        }
        _ => {
            let bucket: Arc<dyn ObjectStore> = Arc::new(bucket(location, state, "warm", None, options)?);
            let cache = state.root().join("read-cache");
            let reads = Arc::new(CachedStore::new(Arc::clone(&bucket), &cache, read_cache)?);
            (bucket, reads)
        }
    })
}

/// The warm store at `location` for reading only (its configuration, its
/// lock object): it stages and caches nothing, so it needs no state
/// directory.
pub fn reading_store(location: &Location, options: &OpenOptions) -> Result<Arc<dyn ObjectStore>> {
    Ok(match location {
        Location::Directory(dir) => Arc::new(LocalStore::new(dir)),
        _ => Arc::new(bucket(location, &StateDir::new(std::env::temp_dir()), "warm", None, options)?),
    })
}

/// Opens the repository at `root`: reads its configuration from its
/// objects and opens the stores of both tiers.
pub(crate) fn open(root: &Path, options: &OpenOptions) -> Result<Site> {
    let location = location_of(root)?;
    let (config, state) = match &location {
        Location::Directory(dir) => (check_layout(dir)?, StateDir::new(dir)),
        _ => {
            // The configuration names the repository, and with it the
            // state directory.
            let config = config_file::load_from(reading_store(&location, options)?.as_ref())?;
            let state = bucket_state(options, &config.repository_id)?;
            (config, state)
        }
    };
    let stores = tier_stores(&location, &state, &config, options)?;
    Ok(Site {
        location,
        config,
        state,
        stores,
    })
}

/// The stores of both tiers, the cold one behind the configured delay.
pub(crate) fn tier_stores(
    location: &Location,
    state: &StateDir,
    config: &RepoConfig,
    options: &OpenOptions,
) -> Result<TierStores> {
    let cold = match &config.tiers.cold_dir {
        None => None,
        Some(cold) => {
            let cold_location = location_of(cold)?;
            let store: Arc<dyn ObjectStore> = match (&cold_location, location) {
                (Location::Directory(cold), Location::Directory(root)) => {
                    refuse_shared_tier(root, cold)?;
                    Arc::new(LocalStore::new(cold))
                }
                (Location::Directory(cold), _) => Arc::new(LocalStore::new(cold)),
                _ => {
                    if cold_location == *location {
                        return Err(shared_tier(&cold_location.to_string()));
                    }
                    let class = config.tiers.cold_storage_class.as_deref();
                    Arc::new(bucket(&cold_location, state, "cold", class, options)?)
                }
            };
            Some(match options.cold_delay {
                Some(delay) if !delay.is_zero() => Arc::new(DelayedStore::new(store, delay)) as _,
                _ => store,
            })
        }
    };
    let (warm, warm_reads) = warm_stores(location, state, options)?;
    Ok(TierStores {
        warm,
        cold,
        warm_reads,
    })
}

fn shared_tier(cold: &str) -> Error {
    Error::InvalidInput(format!(
        "the cold tier {cold} is the repository's own location; give it one of its own"
    ))
}

/// A cold tier in the repository's own directory would hold the warm
/// tier's packs under the same names: moving a pack would delete it.
pub(crate) fn refuse_shared_tier(root: &Path, cold: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let same = match (std::fs::metadata(root), std::fs::metadata(cold)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if same {
        return Err(Error::InvalidInput(format!(
            "the cold tier {} is the repository's own directory; give it a directory of its own",
            cold.display()
        )));
    }
    Ok(())
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
