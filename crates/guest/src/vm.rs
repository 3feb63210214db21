//! The guest side of a VM restore point: its disks by name (the disk's
//! file name without `.vmdk`), each disk's volumes, and guest paths of the
//! form `<disk>/<volume>/<path inside>` resolved to a file system and a
//! node. What `strata show`, `strata ls`, `strata restore files` and the
//! mount's `guest/` folder browse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use strata_engine::chunk_cache::ChunkCache;
use strata_engine::reader::RepositoryReader;
use strata_engine::vm::description::VmDescription;

use crate::error::{Error, Result};
use crate::fs::{self, GuestFs, NodeId};
use crate::source::ByteSource;
use crate::stored::StoredDisk;
use crate::volume::{volumes, Volume};

/// Bytes of chunks a command browsing a guest keeps (the mount passes its
/// own cache).
pub const COMMAND_CACHE_BYTES: u64 = 256 << 20;

pub struct GuestDisk {
    /// The disk's file name without `.vmdk` (with its slot when two disks
    /// share one).
    pub name: String,
    pub disk: Arc<StoredDisk>,
    volumes: OnceLock<Vec<Volume>>,
    /// File systems opened, by volume: opening reads the superblock and
    /// every group descriptor, once.
    opened: Mutex<HashMap<String, Arc<dyn GuestFs>>>,
}

impl GuestDisk {
    /// The disk's volumes, found on first use.
    pub fn volumes(&self) -> &[Volume] {
        self.volumes.get_or_init(|| {
            let source: Arc<dyn ByteSource> = Arc::clone(&self.disk) as Arc<dyn ByteSource>;
            volumes(source, &self.name)
        })
    }

    /// The file system of volume `name`, or why it has none.
    pub fn open(&self, name: &str) -> Result<Arc<dyn GuestFs>> {
        if let Some(fs) = self.opened.lock().expect("opened file systems").get(name) {
            return Ok(Arc::clone(fs));
        }
        let volume = self
            .volumes()
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NotFound(format!("{}/{name} (no such volume)", self.name)))?;
        let shown = format!("{}/{}", self.name, volume.name);
        match (&volume.device, &volume.problem) {
            (Some(device), None) => {
                let fs: Arc<dyn GuestFs> = Arc::from(fs::open(volume.content, device.clone(), &shown)?);
                self.opened.lock().expect("opened file systems").insert(name.to_string(), Arc::clone(&fs));
                Ok(fs)
            }
            (_, problem) => Err(Error::unsupported(
                format!("volume {shown}"),
                problem.clone().unwrap_or_else(|| "it cannot be read".into()),
            )),
        }
    }
}

pub struct GuestView {
    pub disks: Vec<GuestDisk>,
}

impl GuestView {
    pub fn new(repo: Arc<dyn RepositoryReader>, description: &VmDescription, cache: Arc<ChunkCache>) -> GuestView {
        let disks = description
            .disks
            .iter()
            .enumerate()
            .map(|(i, record)| {
                GuestDisk {
                    name: description.disk_name(i),
                    disk: Arc::new(StoredDisk::new(Arc::clone(&repo), record.clone(), Arc::clone(&cache))),
                    volumes: OnceLock::new(),
                    opened: Mutex::new(HashMap::new()),
                }
            })
            .collect();
        GuestView { disks }
    }

    pub fn disk(&self, name: &str) -> Result<&GuestDisk> {
        self.disks.iter().find(|d| d.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.disks.iter().map(|d| d.name.as_str()).collect();
            Error::NotFound(format!("{name} (no such disk; the VM has {})", known.join(", ")))
        })
    }

    /// `<disk>/<volume>/<path>`: the volume's file system, the node, and
    /// the path inside the volume (`/` for its root).
    pub fn resolve(&self, guest_path: &str) -> Result<(Arc<dyn GuestFs>, NodeId, String)> {
        let mut parts = guest_path.trim_start_matches('/').splitn(3, '/');
        let (disk, volume) = match (parts.next(), parts.next()) {
            (Some(d), Some(v)) if !d.is_empty() && !v.is_empty() => (d, v),
            _ => {
                return Err(Error::NotFound(format!(
                    "{guest_path}: a guest path is <disk>/<volume>/<path inside>, e.g. web01/p2/etc/nginx"
                )))
            }
        };
        let inside = format!("/{}", parts.next().unwrap_or("").trim_matches('/'));
        let fs = self.disk(disk)?.open(volume)?;
        let node = fs::lookup(fs.as_ref(), &inside)?;
        Ok((fs, node, inside))
    }
}
