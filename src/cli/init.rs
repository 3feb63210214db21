//! `strata init`.

use std::path::Path;

use anyhow::Result;
use strata::key_slot::KdfParams;
use strata::keys::NewKey;
use strata::repository::Repository;

use super::args::{Encryption, KdfArgs};
use super::{password, Status};

pub struct InitArgs<'a> {
    pub cold: Option<&'a Path>,
    pub cold_storage_class: Option<&'a str>,
    pub warm_days: u32,
    pub compression_level: Option<i32>,
    pub encryption: Encryption,
    pub kdf: KdfArgs,
}

pub fn run(path: &Path, args: &InitArgs<'_>) -> Result<Status> {
    let mut config = strata::config_file::for_new_repository(
        args.warm_days,
        args.cold,
        args.cold_storage_class,
    )?;
    if let Some(level) = args.compression_level {
        config.compression_level = level;
    }
    let options = super::open_options();
    let id = config.repository_id.clone();
    if strata::config_file::exists(path)? {
        anyhow::bail!("{} already holds a repository", path.display());
    }
    match args.encryption {
        Encryption::None => {
            Repository::init_with(path, config, None, &options)?;
            out!("created unencrypted repository {id} at {}", path.display());
        }
        Encryption::Aes256Gcm => {
            let password = password::for_new_repository(&path.display().to_string())?;
            let key = NewKey {
                password: &password,
                kdf: kdf_params(&args.kdf),
            };
            let repo = Repository::init_with(path, config.encrypted(), Some(&key), &options)?;
            let slot = repo.key_slot_in_use().map(|s| s.to_string()).unwrap_or_default();
            out!(
                "created encrypted repository {id} at {} (AES-256-GCM, key slot {slot})",
                path.display()
            );
            out!("keep the password safe: without it nothing in the repository can be read");
        }
    }
    Ok(Status::Ok)
}

/// Argon2id's cost as the command line gives it.
pub fn kdf_params(args: &KdfArgs) -> KdfParams {
    KdfParams {
        memory_kib: args.kdf_memory_mib * 1024,
        passes: args.kdf_passes,
        lanes: 1,
    }
}
