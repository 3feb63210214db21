//! `strata init`.

use std::path::Path;

use anyhow::Result;
use strata::repository::Repository;

use super::Status;

pub fn run(
    path: &Path,
    cold: Option<&Path>,
    warm_days: u32,
    compression_level: Option<i32>,
) -> Result<Status> {
    let mut config = strata::config_file::for_new_repository(warm_days, cold)?;
    if let Some(level) = compression_level {
        config.compression_level = level;
    }
    let id = config.repository_id.clone();
    Repository::init(path, config)?;
    out!("created repository {id} at {}", path.display());
    Ok(Status::Ok)
}
