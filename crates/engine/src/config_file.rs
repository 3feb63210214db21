//! Reading `config.json` from a repository's directory; its format is
//! [`crate::config`].

use std::path::Path;

use crate::config::RepoConfig;
use crate::error::{Error, IoContext, Result};

/// Reads and validates the configuration of the repository at `repo`.
pub fn load(repo: &Path) -> Result<RepoConfig> {
    let path = RepoConfig::path(repo);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository {
                path: repo.to_path_buf(),
                reason: format!(
                    "{} is missing (create one with `strata init`)",
                    path.display()
                ),
            })
        }
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    RepoConfig::from_json(&text, repo)
}

/// Reads and validates the configuration of the repository whose objects
/// are in `store`.
pub fn load_from(store: &dyn crate::storage::ObjectStore) -> Result<RepoConfig> {
    let text = match store.get(RepoConfig::FILE_NAME) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => {
            return Err(Error::NotARepository {
                path: store.location().into(),
                reason: format!(
                    "{} is missing (create one with `strata init`)",
                    RepoConfig::FILE_NAME
                ),
            })
        }
        Err(e) => return Err(e),
    };
    RepoConfig::from_json(&text, Path::new(&store.location()))
}

/// Whether `repo` holds a config file, used by `init` to refuse a
/// directory that already holds a repository.
pub fn exists(repo: &Path) -> Result<bool> {
    match std::fs::metadata(RepoConfig::path(repo)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at("checking", RepoConfig::path(repo)),
    }
}

/// The configuration of a repository about to be created: a fresh id,
/// restore points warm for `warm_days`, and the cold tier at `cold_dir`,
/// created if missing and recorded as an absolute path (later commands may
/// run from any directory).
pub fn for_new_repository(
    warm_days: u32,
    cold_dir: Option<&Path>,
    cold_storage_class: Option<&str>,
) -> Result<RepoConfig> {
    let mut config = RepoConfig::new(new_repository_id()?);
    config.tiers.warm_days = warm_days;
    let cold = cold_dir.map(crate::site::location_of).transpose()?;
    if let Some(class) = cold_storage_class {
        let Some(cold) = &cold else {
            return Err(Error::InvalidInput(
                "a cold storage class needs a cold tier in a bucket (--cold URL)".into(),
            ));
        };
        let class = crate::storage::StorageClass::parse(cold, class)?;
        config.tiers.cold_storage_class = Some(class.as_str().to_string());
    }
    match cold {
        None => {}
        Some(crate::storage::Location::Directory(cold)) => {
            std::fs::create_dir_all(&cold).at("creating cold tier", &cold)?;
            config.tiers.cold_dir =
                Some(std::fs::canonicalize(&cold).at("resolving cold tier", &cold)?);
        }
        Some(bucket) => config.tiers.cold_dir = Some(bucket.to_string().into()),
    }
    Ok(config)
}

/// A new repository's identity: 16 random bytes from the kernel, in hex.
pub fn new_repository_id() -> Result<String> {
    random_id()
}

/// 16 random bytes from the kernel, in hex: for names that must never
/// repeat (a repository, a lock holder's token).
pub fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    let mut urandom = std::fs::File::open(path).at("opening", path)?;
    std::io::Read::read_exact(&mut urandom, &mut bytes).at("reading", path)?;
    if bytes.iter().all(|b| *b == 0) {
        return Err(Error::InvalidInput("/dev/urandom returned zeros".into()));
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
