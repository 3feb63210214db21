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

/// Whether `repo` holds a config file, used by `init` to refuse a
/// directory that already holds a repository.
pub fn exists(repo: &Path) -> Result<bool> {
    match std::fs::metadata(RepoConfig::path(repo)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at("checking", RepoConfig::path(repo)),
    }
}
