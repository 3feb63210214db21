//! Restores VMs and disks: a whole VM as a new VM folder
//! `<name>_<counter>`, one disk as a new minimal VM, or one disk's raw
//! contents to a file or block device.
//!
//! A new VM's name is reserved by creating an empty folder under the first
//! free counter; the VM is built in a `.strata-partial-*` folder beside it
//! and renamed over the reserved one only when complete and synced. Both
//! are removed if anything fails (no space, I/O error, interrupt); a
//! restore killed outright leaves at most an empty folder and a partial
//! one, never a folder that looks like a whole VM. Chunks are fetched and
//! verified on all cores in windows while a writer thread writes the
//! previous window in order.

mod disk_stream;
mod to_nbd;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cancel::CancelToken;
use crate::disk_reader::{DiskMapReader, PageCache};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::storage::local::fsync_dir;
use strata_engine::vm::description::{DiskRecord, VmDescription};
use strata_engine::vm::vmx::Vmx;
use crate::vmdk::sparse::SECTOR;
use crate::vmdk::writer::{
    vmdk_sectors, write_flat_descriptor, RawWriter, SparseVmdkWriter,
};
pub use disk_stream::{write_disk, DiskTarget, PositionalTarget};
pub use to_nbd::restore_disk_nbd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOutput {
    /// Hosted sparse VMDK (monolithicSparse); holes stay unallocated.
    Vmdk,
    /// monolithicFlat: a descriptor plus a sparse `-flat.vmdk` raw file.
    Raw,
}

pub struct VmRestore {
    pub target_dir: PathBuf,
    /// Base name of the new VM (default: the backed-up VM's name).
    pub name: Option<String>,
    pub disk_output: DiskOutput,
    /// Restore only this disk, as a new minimal VM.
    pub disk: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct VmRestoreSummary {
    pub folder: PathBuf,
    pub name: String,
    pub files: Vec<String>,
    pub bytes_written: u64,
    pub duration_ms: u64,
}

pub fn load_description(repo: &dyn RepositoryReader, rp: &RestorePoint) -> Result<VmDescription> {
    if rp.manifest.kind != RestorePointKind::Vm {
        return Err(Error::InvalidInput(format!(
            "restore point {} is a file tree, not a VM; use `strata restore files`",
            rp.id.short()
        )));
    }
    VmDescription::decode(&rp.manifest.root, &repo.read_chunk(&rp.manifest.root)?)
}

fn select_disk<'d>(description: &'d VmDescription, selector: &str) -> Result<&'d DiskRecord> {
    description.find_disk(selector).ok_or_else(|| {
        Error::InvalidInput(format!(
            "VM {} has no disk {selector:?}; it has {}",
            description.name,
            description
                .disks
                .iter()
                .map(|d| format!("{} ({})", d.slot, d.file_name))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Validates the target and its free space, then creates it: a refused
/// restore creates nothing.
fn prepare_dir(repo: &dyn RepositoryReader, dir: &Path, needed: u64) -> Result<PathBuf> {
    let target = super::plan_target(repo.local_root(), dir)?;
    target.check_space(needed)?;
    target.create()
}

/// Removes a half-made VM folder unless disarmed.
struct FolderGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for FolderGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::error!(folder = %self.path.display(), error = %e, "could not remove incomplete VM folder");
            }
        }
    }
}

fn create_vm_folder(dir: &Path, base: &str) -> Result<(String, FolderGuard)> {
    for counter in 1.. {
        let name = format!("{base}_{counter}");
        let path = dir.join(&name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok((name, FolderGuard { path, armed: true })),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating VM folder", path, e)),
        }
    }
    unreachable!("counters are unbounded")
}

/// A `.vmx` for a VM that came without one (a disk image, NBD exports),
/// or for one disk of a VM restored alone: each disk on the controller
/// its adapter type names, in order.
fn minimal_vmx(name: &str, guest_os: &str, disks: &[(String, &str)]) -> String {
    let guest = if guest_os.is_empty() {
        "other-64"
    } else {
        guest_os
    };
    let mut devices = String::new();
    let mut present = std::collections::BTreeSet::new();
    let (mut ide, mut scsi) = (0usize, 0usize);
    for (file, adapter) in disks {
        // Two IDE channels of two devices; SCSI units 0-15 but 7, which is
        // the controller's own.
        let slot = if *adapter == "ide" && ide < 4 {
            ide += 1;
            format!("ide{}:{}", (ide - 1) / 2, (ide - 1) % 2)
        } else {
            let (controller, unit) = (scsi / 15, scsi % 15);
            scsi += 1;
            let controller = format!("scsi{controller}");
            if present.insert(controller.clone()) {
                let device = if *adapter == "buslogic" { "buslogic" } else { "lsilogic" };
                devices.push_str(&format!("{controller}.present = \"TRUE\"\n{controller}.virtualDev = \"{device}\"\n"));
            }
            format!("{controller}:{}", if unit >= 7 { unit + 1 } else { unit })
        };
        let controller = slot.split(':').next().unwrap_or_default().to_string();
        if present.insert(controller.clone()) {
            devices.push_str(&format!("{controller}.present = \"TRUE\"\n"));
        }
        devices.push_str(&format!("{slot}.present = \"TRUE\"\n{slot}.fileName = \"{file}\"\n"));
    }
    format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"14\"\ndisplayName = \"{name}\"\nnumvcpus = \"1\"\nmemsize = \"128\"\nguestOS = \"{guest}\"\n{devices}"
    )
}

pub fn restore_vm(
    repo: &dyn RepositoryReader,
    rp: &RestorePoint,
    request: &VmRestore,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VmRestoreSummary> {
    let started = Instant::now();
    let description = load_description(repo, rp)?;
    let disks: Vec<&DiskRecord> = match &request.disk {
        Some(selector) => vec![select_disk(&description, selector)?],
        None => description.disks.iter().collect(),
    };
    let base = request
        .name
        .clone()
        .unwrap_or_else(|| description.name.clone());
    if base.is_empty() || base.contains('/') {
        return Err(Error::InvalidInput(format!(
            "VM name {base:?} may not be empty or contain '/'"
        )));
    }
    let span = tracing::info_span!("restore_vm", restore_point = %rp.id.short(), vm = %base);
    let _entered = span.enter();
    for disk in &disks {
        check_readable(repo, rp, disk)?;
    }
    let needed: u64 = disks.iter().map(|d| d.allocated_bytes()).sum::<u64>() + (1 << 20);
    let dir = prepare_dir(repo, &request.target_dir, needed)?;
    // The name is reserved by an empty folder; the VM is built in a
    // staging folder beside it and renamed over it only when complete, so
    // even a restore killed outright never leaves a folder that looks like
    // a whole VM.
    let (name, mut reserved) = create_vm_folder(&dir, &base)?;
    let staging_path = dir.join(super::fsops::partial_name());
    std::fs::create_dir(&staging_path).at("creating", &staging_path)?;
    let mut guard = FolderGuard {
        path: staging_path,
        armed: true,
    };
    progress.add_total(disks.iter().map(|d| d.allocated_bytes()).sum());

    let mut files = Vec::new();
    let mut changes = vec![("displayName".to_string(), name.clone())];
    let mut bytes_written = 0;
    for (k, disk) in disks.iter().enumerate() {
        let stem = if k == 0 {
            name.clone()
        } else {
            format!("{name}_{k}")
        };
        let descriptor = format!("{stem}.vmdk");
        let target = match request.disk_output {
            DiskOutput::Vmdk => DiskTarget::InOrder(Box::new(SparseVmdkWriter::create(
                &guard.path.join(&descriptor),
                disk.capacity,
                &disk.adapter_type,
            )?)),
            DiskOutput::Raw => {
                let flat = format!("{stem}-flat.vmdk");
                write_flat_descriptor(
                    &guard.path.join(&descriptor),
                    &flat,
                    disk.capacity,
                    &disk.adapter_type,
                )?;
                files.push(flat.clone());
                // The flat file holds the whole sectors its descriptor gives.
                DiskTarget::Positional(Box::new(RawWriter::create_new(
                    &guard.path.join(&flat),
                    vmdk_sectors(disk.capacity) * SECTOR,
                )?))
            }
        };
        bytes_written += write_disk(repo, disk, target, progress, cancel)?;
        files.push(descriptor.clone());
        changes.push((format!("{}.fileName", disk.slot), descriptor));
    }
    let vmx_text = match (&request.disk, description.vmx.is_empty()) {
        (None, false) => {
            let text = String::from_utf8_lossy(&description.vmx).into_owned();
            Vmx::parse(&text, "the backed-up .vmx")?.rewrite(&changes)
        }
        _ => {
            let restored: Vec<(String, &str)> = changes[1..]
                .iter()
                .zip(&disks)
                .map(|((_, file), disk)| (file.clone(), disk.adapter_type.as_str()))
                .collect();
            minimal_vmx(&name, &description.guest_os, &restored)
        }
    };
    let vmx_name = format!("{name}.vmx");
    let vmx_path = guard.path.join(&vmx_name);
    std::fs::write(&vmx_path, vmx_text).at("writing", &vmx_path)?;
    std::fs::File::open(&vmx_path)
        .and_then(|f| f.sync_all())
        .at("syncing", &vmx_path)?;
    files.push(vmx_name);
    fsync_dir(&guard.path)?;
    // Replaces the empty reserved folder in one step.
    std::fs::rename(&guard.path, &reserved.path).at("putting in place", &reserved.path)?;
    guard.armed = false;
    fsync_dir(&dir)?;
    reserved.armed = false;
    progress.finish();
    Ok(VmRestoreSummary {
        folder: reserved.path.clone(),
        name,
        files,
        bytes_written,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Refuses a disk any of whose data is on the cold tier, before writing.
fn check_readable(repo: &dyn RepositoryReader, rp: &RestorePoint, disk: &DiskRecord) -> Result<()> {
    let cache = PageCache::keeping(1);
    let map = DiskMapReader::new(repo, &disk.pages, &cache);
    for (p, page_ref) in disk.pages.iter().enumerate() {
        if page_ref.data_chunks == 0 {
            continue;
        }
        let ids: Vec<_> = map.page(p)?.entries.iter().flatten().copied().collect();
        for (id, readable) in ids.iter().zip(repo.readable_chunks(&ids)?) {
            match readable {
                Some(true) => {}
                Some(false) => {
                    return Err(Error::RestorePointCold {
                        restore_point: rp.id.short(),
                    })
                }
                None => return Err(Error::ChunkMissing { id: *id }),
            }
        }
    }
    Ok(())
}

/// Writes one disk's raw contents to a file (created sparse, under a
/// temporary name renamed over the target only when complete) or a block
/// device (written in place, holes written as zeros).
pub fn restore_disk_raw(
    repo: &dyn RepositoryReader,
    rp: &RestorePoint,
    selector: &str,
    path: &Path,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VmRestoreSummary> {
    let started = Instant::now();
    let description = load_description(repo, rp)?;
    let disk = select_disk(&description, selector)?;
    check_readable(repo, rp, disk)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let is_device = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    if !is_device {
        prepare_dir(repo, parent, disk.allocated_bytes())?;
    }
    progress.add_total(disk.allocated_bytes());
    let target = DiskTarget::Positional(Box::new(RawWriter::replace(path, disk.capacity)?));
    let written = write_disk(repo, disk, target, progress, cancel)?;
    progress.finish();
    Ok(VmRestoreSummary {
        folder: parent.to_path_buf(),
        name: description.name.clone(),
        files: vec![path.display().to_string()],
        bytes_written: written,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
