//! A repository behind a server, as restores, mounts, `ls` and `show`
//! read it: the configuration and key slots fetched once and unlocked
//! here with the user's password, restore points and chunks fetched by
//! id and opened and verified here. The server never sees a plaintext.

use std::path::Path;
use std::sync::Arc;

use reqwest::Method;

use strata_engine::config::RepoConfig;
use strata_engine::crypto::Protection;
use strata_engine::error::{Error, Result};
use strata_engine::id::ChunkId;
use strata_engine::check::CheckReport;
use strata_engine::key_slot::SlotId;
use strata_engine::keys::{PasswordSource, Unlocked};
use strata_engine::pack::ChunkCodec;
use strata_engine::packs::ChunkBuffers;
use strata_engine::reader::RepositoryReader;
use strata_engine::restore_point::{Manifest, RestorePoint};
use strata_engine::storage::{ObjectStore, ObjectWriter};

use super::connection::{ClientOptions, Connection, Payload};
use super::prefetch::Prefetcher;
use crate::protocol::{CheckRequest, StorageAnswer, decode_chunk_frames, decode_manifest_frames, encode_ids, RemoteLocation, MAX_IDS_PER_REQUEST};

pub struct RemoteRepository {
    pub(crate) connection: Arc<Connection>,
    config: RepoConfig,
    codec: ChunkCodec,
    /// The key slot this client's password opened (encrypted only).
    unlocked: Option<Unlocked>,
    prefetch: Arc<Prefetcher>,
}

impl Drop for RemoteRepository {
    fn drop(&mut self) {
        self.prefetch.close();
    }
}

impl RemoteRepository {
    /// Connects, reads the configuration and, for an encrypted repository,
    /// unlocks a key slot with `password`.
    pub fn open(
        location: RemoteLocation,
        options: &ClientOptions,
        password: Option<&Arc<dyn PasswordSource>>,
    ) -> Result<RemoteRepository> {
        let connection = Arc::new(Connection::open(location, options)?);
        let objects = ServerObjects {
            connection: Arc::clone(&connection),
        };
        let config = strata_engine::config_file::load_from(&objects)?;
        let unlocked = if config.is_encrypted() {
            let Some(source) = password else {
                return Err(Error::PasswordRequired {
                    repository: objects.location(),
                    detail: "no password was given".into(),
                });
            };
            let password = source.password(&objects.location())?;
            Some(strata_engine::keys::unlock(&objects, &config.repository_id, &password)?)
        } else {
            None
        };
        let protection = unlocked.as_ref().map_or_else(Protection::none, Unlocked::protection);
        let codec = ChunkCodec::with_protection(config.compression_level, protection);
        Ok(RemoteRepository {
            connection,
            config,
            codec,
            unlocked,
            prefetch: Arc::default(),
        })
    }

    pub fn location(&self) -> &RemoteLocation {
        &self.connection.location
    }

    pub fn protection(&self) -> &Protection {
        self.codec.protection()
    }

    pub fn codec(&self) -> &ChunkCodec {
        &self.codec
    }

    /// The key slots, as `strata key` manages them through the server: read
    /// by any client, written and removed by an admin's (the server checks
    /// each slot's form and never removes the last one).
    pub fn key_slots(&self) -> impl ObjectStore {
        ServerObjects {
            connection: Arc::clone(&self.connection),
        }
    }

    /// The key slot this client's password opened, for `strata key`.
    pub fn unlocked(&self) -> Result<&Unlocked> {
        self.unlocked.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!("{} is not encrypted: it has no key slots", self.connection.location))
        })
    }

    /// What the server says of the repository without the key (admin).
    pub fn storage(&self) -> Result<StorageAnswer> {
        let body = self.connection.expect(Method::GET, "/storage", Payload::None, &[])?;
        serde_json::from_slice(&body).map_err(|e| self.bad_answer(e.to_string()))
    }

    /// The server's half of `strata check` (admin): its packs against its
    /// index and, with `read_data`, each pack against its name.
    pub fn check_stored(&self, read_data: bool) -> Result<CheckReport> {
        let request = serde_json::to_vec(&CheckRequest { read_data }).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let body = self.connection.expect(Method::POST, "/check", Payload::Json(request), &[])?;
        serde_json::from_slice(&body).map_err(|e| self.bad_answer(e.to_string()))
    }

    /// Bytes this client has sent the server so far.
    pub fn bytes_sent(&self) -> u64 {
        self.connection.bytes_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Per id, the server's answer to `present`: 0 not stored, 1 warm,
    /// 2 cold but thawed, 3 cold.
    pub(crate) fn presence(&self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            let answer = self
                .connection
                .expect(Method::POST, "/chunks/present", Payload::Bytes(&encode_ids(batch)), &[])?;
            if answer.len() != batch.len() {
                return Err(self.bad_answer(format!("{} answers to {} ids", answer.len(), batch.len())));
            }
            out.extend(answer);
        }
        Ok(out)
    }

    fn bad_answer(&self, detail: String) -> Error {
        Error::corrupt(format!("an answer from the server {}", self.connection.location), detail)
    }
}

impl RepositoryReader for RemoteRepository {
    fn config(&self) -> &RepoConfig {
        &self.config
    }

    fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        let body = self.connection.expect(Method::GET, "/restore-points", Payload::None, &[])?;
        let mut out = Vec::new();
        for (id, stored) in decode_manifest_frames(&body)? {
            out.push(RestorePoint {
                id,
                manifest: Manifest::open(self.protection(), &id, stored)?,
            });
        }
        out.sort_by_key(|rp| (rp.manifest.time.as_nanos(), rp.id));
        Ok(out)
    }

    fn read_chunk_into(&self, id: &ChunkId, buffers: &mut ChunkBuffers) -> Result<()> {
        if let Some(fetched) = self.prefetch.take(id) {
            buffers.stored.clear();
            buffers.stored.extend_from_slice(&fetched.stored);
            return self
                .codec
                .decode_into(&fetched.entry, &fetched.pack, &mut buffers.stored, &mut buffers.plain);
        }
        let body = self
            .connection
            .call(Method::POST, "/chunks/read", Payload::Bytes(id.as_bytes()), &[])?
            .map_err(|refusal| match refusal.code.as_str() {
                "not_found" => Error::ChunkMissing { id: *id },
                _ => self.connection.refused(refusal),
            })?;
        let frames = decode_chunk_frames(&body)?;
        let [frame] = frames.as_slice() else {
            return Err(self.bad_answer(format!("{} chunks for one asked", frames.len())));
        };
        if frame.entry.id != *id {
            return Err(self.bad_answer(format!("chunk {} for chunk {id}", frame.entry.id)));
        }
        buffers.stored.clear();
        buffers.stored.extend_from_slice(frame.stored);
        // Opened and verified against its id here: a server cannot make
        // this client read wrong bytes.
        self.codec
            .decode_into(&frame.entry, &frame.pack, &mut buffers.stored, &mut buffers.plain)
    }

    fn is_readable(&self, id: &ChunkId) -> Result<bool> {
        match self.presence(std::slice::from_ref(id))?[0] {
            0 => Err(Error::ChunkMissing { id: *id }),
            1 | 2 => Ok(true),
            _ => Ok(false),
        }
    }

    fn prefetch(&self, ids: &[ChunkId]) {
        self.prefetch.hint(&self.connection, ids);
    }

    fn prefetch_tree(&self, root: &ChunkId) {
        self.prefetch.scout(&self.connection, self.codec.clone(), *root);
    }

    fn readable_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<bool>>> {
        Ok(self
            .presence(ids)?
            .into_iter()
            .map(|p| match p {
                0 => None,
                1 | 2 => Some(true),
                _ => Some(false),
            })
            .collect())
    }

    fn catch_up(&self) -> Result<()> {
        // Every question goes to the server, which always answers from
        // its current state.
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }
}

/// The objects a client reads by name to open a repository through a
/// server: `config.json` and the key slots. Only key slots are written
/// and removed (by an admin's client); anything else is refused, by this
/// adapter and by the server.
struct ServerObjects {
    connection: Arc<Connection>,
}

impl ServerObjects {
    fn read_only(&self) -> Error {
        Error::InvalidInput(format!(
            "{} is reached through a server: this operation is not available over it",
            self.connection.location
        ))
    }
}

impl ObjectStore for ServerObjects {
    fn location(&self) -> String {
        self.connection.location.to_string()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        if SlotId::from_object_name(name).is_none() {
            return Err(self.read_only());
        }
        self.connection
            .expect(Method::PUT, &format!("/objects/{name}"), Payload::Bytes(data), &[])?;
        Ok(())
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        Err(self.read_only())
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.connection
            .call(Method::GET, &format!("/objects/{name}"), Payload::None, &[])?
            .map_err(|refusal| match refusal.status {
                reqwest::StatusCode::NOT_FOUND => strata_engine::storage::not_found(&self.location(), name),
                _ => self.connection.refused(refusal),
            })
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.get(name)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        if end > bytes.len() {
            return Err(strata_engine::storage::short_object(&self.location(), name, end as u64));
        }
        buf.copy_from_slice(&bytes[start..end]);
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64> {
        Ok(self.get(name)?.len() as u64)
    }

    fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        if prefix != "keys/" {
            return Err(self.read_only());
        }
        let body = self.connection.expect(Method::GET, "/keys", Payload::None, &[])?;
        let mut names: Vec<String> = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(format!("the key slot list from {}", self.location()), e.to_string()))?;
        names.sort();
        names.retain(|n| n.starts_with(prefix) && start_after.is_none_or(|after| n.as_str() > after));
        names.truncate(limit);
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<()> {
        if SlotId::from_object_name(name).is_none() {
            return Err(self.read_only());
        }
        self.connection
            .expect(Method::DELETE, &format!("/objects/{name}"), Payload::None, &[])?;
        Ok(())
    }
}
