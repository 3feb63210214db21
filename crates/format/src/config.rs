//! The repository configuration, `config.json` at the repository's root.
//!
//! It is written once by `strata init` and read by every command. Chunker
//! parameters are fixed for the life of a repository: changing them would
//! move every chunk boundary and defeat deduplication.
//!
//! This module is the format (JSON text to and from [`RepoConfig`]);
//! reading the file from a repository's directory is `config_file`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{ENCRYPTED_REPOSITORY_FORMAT_VERSION, REPOSITORY_FORMAT_VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl ChunkerParams {
    /// Chosen from the measurements in `docs/FORMAT.md` ("Chunk sizes").
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min_size: 128 * 1024,
        avg_size: 512 * 1024,
        max_size: 2 * 1024 * 1024,
    };

    pub fn validate(&self) -> Result<()> {
        // fastcdc's own bounds for the 2020 variant.
        let ok = (64..=1_048_576).contains(&self.min_size)
            && (256..=4_194_304).contains(&self.avg_size)
            && (1024..=16_777_216).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "chunker parameters out of range: {self:?}"
            )))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierConfig {
    /// Restore points older than this many days move to the cold tier.
    pub warm_days: u32,
    /// Directory of the cold tier; `None` until one is configured.
    pub cold_dir: Option<PathBuf>,
    /// The storage class cold packs are written with, where the cold tier
    /// is a bucket: an archive class (S3 `GLACIER`, `DEEP_ARCHIVE`; Azure
    /// `Archive`) makes `thaw` request their restore first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_storage_class: Option<String>,
    /// Run by `strata thaw` when it finishes (e.g. to mail administrators);
    /// see [`NotifyCommand`].
    #[serde(default)]
    pub notify_command: Option<NotifyCommand>,
    /// Seconds the notification may run before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_timeout_secs: Option<u64>,
}

/// A program and its arguments, run directly (never through a shell) with
/// STRATA_RESTORE_POINT, STRATA_SOURCE, STRATA_THAW_RESULT (`ok` or
/// `failed`) and STRATA_THAW_UNTIL in its environment. In `config.json`
/// either an array (`["/usr/local/bin/notify", "--thaw"]`) or a string,
/// which is the path of the program alone, not a command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotifyCommand {
    Program(String),
    Argv(Vec<String>),
}

impl NotifyCommand {
    pub fn argv(&self) -> Vec<String> {
        match self {
            NotifyCommand::Program(program) => vec![program.clone()],
            NotifyCommand::Argv(argv) => argv.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Random identity of this repository, shown in messages and locks.
    pub repository_id: String,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    /// A pack is sealed once its data reaches this size.
    pub pack_target_size: u64,
    /// Size of the fixed, aligned chunks disks are cut into.
    #[serde(default = "default_disk_chunk_size")]
    pub disk_chunk_size: u32,
    pub tiers: TierConfig,
    /// How objects are protected; absent in unencrypted repositories
    /// (format version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// The encryption of a repository of format version 2. Not secret: the
/// keys are in the key slots (`keys/`), wrapped by passwords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// The AEAD every object is sealed with: `aes-256-gcm`.
    pub cipher: String,
    /// How passwords become key-encryption keys: `argon2id`.
    pub kdf: String,
}

impl EncryptionConfig {
    pub fn current() -> Self {
        EncryptionConfig {
            cipher: crate::crypto::CIPHER_NAME.into(),
            kdf: "argon2id".into(),
        }
    }
}

/// Chosen from the measurements in `docs/FORMAT.md` ("Disk chunk size").
fn default_disk_chunk_size() -> u32 {
    1024 * 1024
}

impl RepoConfig {
    pub const FILE_NAME: &'static str = "config.json";

    pub fn new(repository_id: String) -> Self {
        RepoConfig {
            format_version: REPOSITORY_FORMAT_VERSION,
            repository_id,
            chunker: ChunkerParams::DEFAULT,
            // Warm packs favour backup speed (zstd 1 compresses about
            // 1.6 times as fast as 3 for 5 % more bytes on the benchmark
            // tree); the cold tier recompresses what it keeps at level 12.
            compression_level: 1,
            pack_target_size: 32 * 1024 * 1024,
            disk_chunk_size: default_disk_chunk_size(),
            tiers: TierConfig {
                warm_days: 90,
                cold_dir: None,
                cold_storage_class: None,
                notify_command: None,
                notify_timeout_secs: None,
            },
            encryption: None,
        }
    }

    /// The same configuration for an encrypted repository (format 2).
    pub fn encrypted(mut self) -> Self {
        self.format_version = ENCRYPTED_REPOSITORY_FORMAT_VERSION;
        self.encryption = Some(EncryptionConfig::current());
        self
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// Decodes and validates the text of `config.json` of the repository
    /// at `repo` (named in errors; nothing is read from it).
    pub fn from_json(text: &[u8], repo: &Path) -> Result<Self> {
        let path = Self::path(repo);
        // Read the version first so that a future format is reported as
        // such rather than as a parse error of fields we do not know.
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u64,
        }
        let version: VersionOnly = serde_json::from_slice(text)
            .map_err(|e| Error::corrupt(path.display().to_string(), e))?;
        if version.format_version != REPOSITORY_FORMAT_VERSION as u64
            && version.format_version != ENCRYPTED_REPOSITORY_FORMAT_VERSION as u64
        {
            return Err(Error::UnsupportedVersion {
                what: format!("repository {}", repo.display()),
                found: version.format_version,
                supported: ENCRYPTED_REPOSITORY_FORMAT_VERSION as u64,
            });
        }
        let config: RepoConfig = serde_json::from_slice(text)
            .map_err(|e| Error::corrupt(path.display().to_string(), e))?;
        let encrypted_version = config.format_version == ENCRYPTED_REPOSITORY_FORMAT_VERSION;
        if encrypted_version != config.encryption.is_some() {
            return Err(Error::corrupt(
                path.display().to_string(),
                "format_version 2 and an `encryption` section go together",
            ));
        }
        if let Some(encryption) = &config.encryption {
            if encryption != &EncryptionConfig::current() {
                return Err(Error::corrupt(
                    path.display().to_string(),
                    format!(
                        "unknown encryption {:?} with key derivation {:?}",
                        encryption.cipher, encryption.kdf
                    ),
                ));
            }
        }
        config.chunker.validate()?;
        if !(1..=22).contains(&config.compression_level) {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!(
                    "compression_level {} is outside 1..=22",
                    config.compression_level
                ),
            ));
        }
        if !config.disk_chunk_size.is_power_of_two()
            || !(64 * 1024..=16 * 1024 * 1024).contains(&config.disk_chunk_size)
        {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!(
                    "disk_chunk_size {} is not a power of two from 64 KiB to 16 MiB",
                    config.disk_chunk_size
                ),
            ));
        }
        if config.pack_target_size < 1024 * 1024 || config.pack_target_size > 1 << 30 {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!(
                    "pack_target_size {} is outside 1 MiB..1 GiB",
                    config.pack_target_size
                ),
            ));
        }
        Ok(config)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("config serializes");
        out.push(b'\n');
        out
    }

    /// Path of the file, for messages.
    pub fn path(repo: &Path) -> PathBuf {
        repo.join(Self::FILE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_future_versions_are_named() {
        let config = RepoConfig::new("id".into());
        let repo = Path::new("/repo");
        let back = RepoConfig::from_json(&config.to_json(), repo).unwrap();
        assert_eq!(back.to_json(), config.to_json());
        let future = String::from_utf8(config.to_json()).unwrap().replace(
            &format!("\"format_version\": {REPOSITORY_FORMAT_VERSION}"),
            "\"format_version\": 999",
        );
        assert!(matches!(
            RepoConfig::from_json(future.as_bytes(), repo),
            Err(Error::UnsupportedVersion { found: 999, .. })
        ));
    }
}
