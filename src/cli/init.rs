//! `strata init`.

use std::path::Path;

use anyhow::Result;
use strata::repository::Repository;

use super::Status;

pub fn run(path: &Path, cold: Option<&Path>, warm_days: u32) -> Result<Status> {
    let config = strata::config_file::for_new_repository(warm_days, cold)?;
    let id = config.repository_id.clone();
    Repository::init(path, config)?;
    out!("created repository {id} at {}", path.display());
    Ok(Status::Ok)
}
