//! The VM data mover: backs up a VM folder (its `.vmx` and every disk it
//! names), a single disk image, or disks exported over NBD as a VM
//! restore point.
//!
//! Disks are cut into fixed, aligned chunks. Chunks that lie in holes of
//! the image, or that read as all zeros, are stored as holes. The first
//! backup of a VM reads every allocated chunk; later ones are incremental
//! against the latest restore point of the same VM: with changed-block
//! tracking (`--changed-extents`) only chunks touching a changed extent are
//! read and every untouched map page is reused by id; without it, every
//! allocated chunk is read but only new chunks are stored. Disks read over
//! NBD take their changed extents from a QEMU dirty bitmap (`--bitmap`).

mod changed;
mod nbd;
mod opened;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use self::changed::{cbt_source, changed_extents};
pub use self::changed::{DiskRead, ReadMode};
pub use self::opened::DiskLocation;
use self::opened::OpenedDisk;
use super::files::BackupOutcome;
use crate::cancel::CancelToken;
use crate::disk_map::{DiskMapPage, PageRef, PAGE_ENTRIES};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::pack::ChunkKind;
use crate::progress::Progress;
use crate::restore_point::{Manifest, RestorePointKind};
use crate::session::BackupSession;
use crate::tree::Timestamp;
use strata_engine::vm::description::{adapter_for_slot, DiskRecord, FileOwner, VmDescription};
use strata_engine::vm::vmx::Vmx;
use crate::vmdk::writer::ADAPTER_TYPES;
use crate::vmdk::{DiskFormat, ImageFormat};

const MAX_VMX_LEN: u64 = 4 << 20;

pub enum VmSource {
    /// A VM folder, or its `.vmx` file.
    Vm(PathBuf),
    /// One disk image, backed up as a VM with one disk; `format` as asked
    /// with `--format` (`None`: as its name asks, see `vmdk::probe`).
    Image {
        path: PathBuf,
        name: Option<String>,
        format: Option<ImageFormat>,
    },
    /// Disks exported over NBD, as a VM named `name` with a disk per
    /// `(disk name, URI)`.
    Nbd {
        name: String,
        disks: Vec<(String, strata_nbd::NbdUri)>,
    },
}

pub struct VmBackup {
    pub source: VmSource,
    pub time: Option<Timestamp>,
    /// Read every allocated chunk even when a parent exists.
    pub full: bool,
    /// `(disk, file)`: changed extents of a disk, as JSON
    /// `[{"start": bytes, "length": bytes}, …]`. The disk is named by slot,
    /// file name, or file name without `.vmdk` (for a single-disk image,
    /// also by the VM name).
    pub changed_extents: Vec<(String, PathBuf)>,
    /// For NBD disks: the QEMU dirty bitmap holding the changes since the
    /// VM's latest restore point.
    pub bitmap: Option<String>,
    /// For NBD disks: the QEMU dirty bitmap that began recording when this
    /// backup's view of the disks was taken, recorded so that the next
    /// backup can check its `bitmap` is that one.
    pub next_bitmap: Option<String>,
    /// Tags of the restore point (a data mover's task id, for one).
    pub tags: Vec<String>,
}

struct SourceDisk {
    slot: String,
    file_name: String,
    location: DiskLocation,
    owner: FileOwner,
}

struct ResolvedVm {
    name: String,
    /// What the restore point records as its source paths.
    origins: Vec<Vec<u8>>,
    vmx: Option<Vmx>,
    vmx_bytes: Vec<u8>,
    vmx_owner: Option<FileOwner>,
    disks: Vec<SourceDisk>,
}

fn find_vmx(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidInput(format!("cannot back up VM {}: {e}", path.display())))?;
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .at("listing VM folder", path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("vmx")))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::InvalidInput(format!(
            "VM folder {} holds no .vmx file",
            path.display()
        ))),
        _ => Err(Error::InvalidInput(format!(
            "VM folder {} holds several .vmx files; name one: {}",
            path.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A disk's name becomes a file name (`NAME.vmdk`) in restores and the
/// mount.
fn check_disk_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 200
        || name.chars().any(|c| c == '/' || c == '=' || c.is_control());
    if bad {
        return Err(Error::InvalidInput(format!(
            "disk name {name:?} must be 1 to 200 characters without '/', '=' or control characters"
        )));
    }
    Ok(())
}

/// A QEMU bitmap's name, as QEMU takes it (at most 1023 bytes), and as
/// it is recorded in restore points.
fn check_bitmap_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 1023 || name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "bitmap name {name:?} must be 1 to 1023 bytes without control characters"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('@') || name.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "VM name {name:?} may not be empty or contain '/' or '@'"
        )));
    }
    Ok(())
}

fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".vmdk", ".img", ".raw", ".vmx"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s.to_string();
        }
    }
    name
}

fn resolve(source: &VmSource) -> Result<ResolvedVm> {
    match source {
        VmSource::Image { path, name, format } => {
            let meta = std::fs::metadata(path).map_err(|e| {
                Error::InvalidInput(format!("cannot back up image {}: {e}", path.display()))
            })?;
            let name = name.clone().unwrap_or_else(|| stem(path));
            check_name(&name)?;
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(ResolvedVm {
                name,
                origins: vec![path.as_os_str().as_bytes().to_vec()],
                vmx: None,
                vmx_bytes: Vec::new(),
                vmx_owner: None,
                disks: vec![SourceDisk {
                    slot: "image".into(),
                    file_name,
                    location: DiskLocation::File { path: path.clone(), format: *format },
                    owner: FileOwner::of(&meta),
                }],
            })
        }
        VmSource::Nbd { name, disks } => {
            check_name(name)?;
            if disks.is_empty() {
                return Err(Error::InvalidInput(format!("VM {name}: no NBD disk given")));
            }
            let mut seen = std::collections::HashSet::new();
            for (disk, _) in disks {
                check_disk_name(disk)?;
                if !seen.insert(disk.as_str()) {
                    return Err(Error::InvalidInput(format!("VM {name}: disk {disk:?} is given twice")));
                }
            }
            // Nothing on this machine owns an export's bytes: they are
            // shown to the backup's own user only.
            let owner = FileOwner {
                mode: 0o600,
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            };
            Ok(ResolvedVm {
                name: name.clone(),
                origins: disks.iter().map(|(_, uri)| uri.to_string().into_bytes()).collect(),
                vmx: None,
                vmx_bytes: Vec::new(),
                vmx_owner: None,
                disks: disks
                    .iter()
                    .map(|(disk, uri)| SourceDisk {
                        slot: disk.clone(),
                        file_name: format!("{disk}.vmdk"),
                        location: DiskLocation::Nbd(uri.clone()),
                        owner,
                    })
                    .collect(),
            })
        }
        VmSource::Vm(path) => {
            let vmx_path = find_vmx(path)?;
            let vmx_meta = std::fs::metadata(&vmx_path).at("reading metadata of", &vmx_path)?;
            let len = vmx_meta.len();
            if len > MAX_VMX_LEN {
                return Err(Error::corrupt(
                    format!("VM configuration {}", vmx_path.display()),
                    format!("{len} bytes is too large for a .vmx"),
                ));
            }
            let bytes = std::fs::read(&vmx_path).at("reading", &vmx_path)?;
            let text = String::from_utf8(bytes.clone()).map_err(|_| {
                Error::corrupt(
                    format!("VM configuration {}", vmx_path.display()),
                    "not UTF-8 text",
                )
            })?;
            let vmx = Vmx::parse(&text, &vmx_path.display().to_string())?;
            let name = vmx
                .display_name()
                .map(str::to_string)
                .unwrap_or_else(|| stem(&vmx_path));
            check_name(&name)?;
            let folder = vmx_path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let mut disks = Vec::new();
            for disk in vmx.disks() {
                let path = folder.join(&disk.file_name);
                let meta = std::fs::metadata(&path).map_err(|e| {
                    Error::InvalidInput(format!(
                        "{} names disk {} ({}), which cannot be read: {e}",
                        vmx_path.display(),
                        path.display(),
                        disk.slot
                    ))
                })?;
                disks.push(SourceDisk {
                    slot: disk.slot,
                    file_name: disk.file_name,
                    location: DiskLocation::File { path, format: None },
                    owner: FileOwner::of(&meta),
                });
            }
            if disks.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{} names no hard disks",
                    vmx_path.display()
                )));
            }
            Ok(ResolvedVm {
                name,
                origins: vec![folder.as_os_str().as_bytes().to_vec()],
                vmx: Some(vmx),
                vmx_bytes: bytes,
                vmx_owner: Some(FileOwner::of(&vmx_meta)),
                disks,
            })
        }
    }
}

/// The ranges of a sorted, merged list that overlap `[a, b)`.
fn overlapping(ranges: &[(u64, u64)], a: u64, b: u64) -> &[(u64, u64)] {
    let first = ranges.partition_point(|r| r.1 <= a);
    let last = ranges.partition_point(|r| r.0 < b);
    &ranges[first..last.max(first)]
}

pub fn backup_vm(
    session: &dyn BackupSession,
    request: &VmBackup,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let vm = resolve(&request.source)?;
    for name in request.bitmap.iter().chain(&request.next_bitmap) {
        check_bitmap_name(name)?;
    }
    let bitmaps = request.bitmap.is_some() || request.next_bitmap.is_some();
    if bitmaps && !matches!(request.source, VmSource::Nbd { .. }) {
        return Err(Error::InvalidInput(
            "a dirty bitmap belongs to disks read over NBD (strata backup nbd)".into(),
        ));
    }
    let span = tracing::info_span!("backup_vm", vm = %vm.name, disks = vm.disks.len());
    let _entered = span.enter();
    let parent = session
        .restore_points()?
        .into_iter()
        .filter(|rp| rp.manifest.kind == RestorePointKind::Vm && rp.manifest.source == vm.name)
        .max_by_key(|rp| rp.manifest.time.as_nanos());
    let parent_description = match &parent {
        Some(rp) => Some(VmDescription::decode(
            &rp.manifest.root,
            &session.read_chunk(&rp.manifest.root)?,
        )?),
        None => None,
    };

    let mut opened = Vec::new();
    for disk in &vm.disks {
        opened.push(OpenedDisk::open(disk, request.bitmap.as_deref())?);
    }
    let settings = session.settings();
    let parent_is_warm = parent
        .as_ref()
        .is_some_and(|p| settings.is_warm(&p.manifest.time));
    let changed = changed_extents(&vm, request, &opened)?;

    let chunk_size = settings.disk_chunk_size;
    let bytes_read = AtomicU64::new(0);
    let mut disk_reads = Vec::new();
    let description_id = (|| -> Result<ChunkId> {
        let mut records = Vec::new();
        for (i, (disk, image)) in vm.disks.iter().zip(&opened).enumerate() {
            let (cbt, read) = cbt_source(
                &disk.slot,
                image.capacity(),
                chunk_size,
                &changed[i],
                parent_description.as_ref().map(|p| (p, parent_is_warm)),
                request.full,
                request.bitmap.as_deref(),
            );
            // Over NBD only the dirty bytes cross the network: a chunk only
            // partly dirty takes its clean bytes from the parent's chunk.
            let patch = read.mode == ReadMode::DirtyBitmap;
            disk_reads.push(read);
            let _disk_span =
                tracing::info_span!("disk", slot = %disk.slot, capacity = image.capacity())
                    .entered();
            let job = Job { progress, cancel };
            let pages = backup_disk(session, image, chunk_size, cbt, patch, &bytes_read, job)?;
            records.push(DiskRecord {
                slot: disk.slot.clone(),
                file_name: disk.file_name.clone(),
                source_format: image.format(),
                adapter_type: adapter_type(&disk.slot, image),
                owner: Some(image.owner(disk.owner)),
                capacity: image.capacity(),
                chunk_size,
                pages,
                tracking_bitmap: match image {
                    OpenedDisk::Nbd(_) => request.next_bitmap.clone(),
                    OpenedDisk::Image(_) => None,
                },
            });
        }
        let description = VmDescription {
            name: vm.name.clone(),
            cpus: vm.vmx.as_ref().map_or(1, Vmx::cpus),
            memory_mb: vm.vmx.as_ref().map_or(0, Vmx::memory_mb),
            guest_os: vm
                .vmx
                .as_ref()
                .map_or(String::new(), |v| v.guest_os().to_string()),
            vmx: vm.vmx_bytes.clone(),
            vmx_owner: vm.vmx_owner,
            disks: records,
        };
        let bytes = description.encode();
        let id = session.chunk_id(&bytes);
        session.store_chunk(id, ChunkKind::VmDescription, &bytes)?;
        Ok(id)
    })()?;
    progress.finish();

    // Every chunk durable, so the counters below are final.
    session.flush()?;
    let stats = session.counters().stats(
        vm.disks.len() as u64,
        0,
        opened.iter().map(OpenedDisk::capacity).sum(),
        bytes_read.load(Ordering::Relaxed),
        started,
    );
    let manifest = Manifest {
        kind: RestorePointKind::Vm,
        source: vm.name.clone(),
        time: request.time.unwrap_or_else(crate::clock::now),
        hostname: super::files::default_source(),
        tags: request.tags.clone(),
        paths: vm.origins.clone(),
        root: description_id,
        parent: parent.map(|p| p.id),
        stats,
        missed: Vec::new(),
    };
    // The last moment to stop: a backup stopped while its chunks were
    // still being stored commits nothing.
    cancel.check()?;
    let id = session.commit(&manifest)?;
    tracing::info!(restore_point = %id, vm = %vm.name, "committed");
    Ok(BackupOutcome { id, manifest, disks: disk_reads })
}

/// The adapter a restored descriptor names: IDE for a disk on an IDE
/// slot, else the source descriptor's, else the slot's default.
fn adapter_type(slot: &str, image: &OpenedDisk) -> String {
    match image.adapter_type() {
        Some(adapter) if !slot.starts_with("ide") && ADAPTER_TYPES.contains(&adapter) => {
            adapter.to_string()
        }
        _ => adapter_for_slot(slot).to_string(),
    }
}

/// What a running backup reports to and is stopped through, passed down
/// to the disk readers as one.
#[derive(Clone, Copy)]
struct Job<'a> {
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
}

/// Chunks read in one round: map pages are gathered until this many of
/// their chunks are to be read, so that scattered changes (a chunk or two
/// per page) still keep every reader, and an export's request queue, busy.
/// Readers wait for each other at the end of a round, so rounds are long.
const ROUND_CHUNKS: usize = 2048;
/// Most map pages in a round (their entries are held until it ends).
const ROUND_PAGES: usize = 256;

/// A map page whose chunks are being read: its entries (the parent's
/// until the round ends) and the chunks to read.
struct PageWork {
    page: usize,
    first: u64,
    entries: Vec<Option<ChunkId>>,
    to_read: Vec<u64>,
}

/// Stores one disk; returns its map pages.
fn backup_disk(
    session: &dyn BackupSession,
    image: &OpenedDisk,
    chunk_size: u32,
    cbt: Option<(&[(u64, u64)], &DiskRecord)>,
    patch: bool,
    bytes_read: &AtomicU64,
    job: Job,
) -> Result<Vec<PageRef>> {
    let capacity = image.capacity();
    let chunk = chunk_size as u64;
    let chunks = capacity.div_ceil(chunk);
    let allocated = image.allocated()?;
    let wanted: &[(u64, u64)] = match cbt {
        Some((changed, _)) => changed,
        None => &allocated,
    };
    job.progress
        .add_total(wanted.iter().map(|(a, b)| b - a).sum());
    let page_span = PAGE_ENTRIES as u64;
    let page_count = chunks.div_ceil(page_span) as usize;
    let mut pages: Vec<Option<PageRef>> = vec![None; page_count];
    let mut round: Vec<PageWork> = Vec::new();
    let mut round_chunks = 0;
    let reads = ChunkReads {
        image,
        session,
        allocated: &allocated,
        wanted,
        changed: cbt.filter(|_| patch).map(|(changed, _)| changed),
        chunk,
        bytes_read,
        job,
    };
    for page in 0..page_count {
        job.cancel.check()?;
        let first = page as u64 * page_span;
        let last = (first + page_span).min(chunks);
        let (start, end) = (first * chunk, (last * chunk).min(capacity));
        let entries = match cbt {
            Some((changed, parent)) => {
                if overlapping(changed, start, end).is_empty() {
                    pages[page] = Some(parent.pages[page]);
                    continue;
                }
                let parent_page = &parent.pages[page];
                DiskMapPage::decode(&parent_page.id, &session.read_chunk(&parent_page.id)?)?.entries
            }
            None => vec![None; (last - first) as usize],
        };
        if entries.len() != (last - first) as usize {
            return Err(Error::corrupt(
                "parent disk map",
                format!(
                    "page {page} has {} entries, expected {}",
                    entries.len(),
                    last - first
                ),
            ));
        }
        let to_read: Vec<u64> = (first..last)
            .filter(|i| !overlapping(wanted, i * chunk, ((i + 1) * chunk).min(capacity)).is_empty())
            .collect();
        round_chunks += to_read.len();
        round.push(PageWork { page, first, entries, to_read });
        if round_chunks >= ROUND_CHUNKS || round.len() >= ROUND_PAGES {
            reads.finish_round(&mut round, &mut pages)?;
            round_chunks = 0;
        }
    }
    reads.finish_round(&mut round, &mut pages)?;
    pages
        .into_iter()
        .enumerate()
        .map(|(page, r)| r.ok_or_else(|| Error::Interrupted(format!("map page {page} was not written"))))
        .collect()
}

/// The chunks of a round of map pages to read, and what they are read
/// from.
struct ChunkReads<'a> {
    image: &'a OpenedDisk,
    session: &'a dyn BackupSession,
    allocated: &'a [(u64, u64)],
    /// The extents read (allocated, or changed): what progress counts.
    wanted: &'a [(u64, u64)],
    /// For a disk read through a dirty bitmap: its changed extents. A
    /// chunk only partly changed takes its unchanged bytes from the
    /// parent's chunk and reads only the changed ones.
    changed: Option<&'a [(u64, u64)]>,
    chunk: u64,
    bytes_read: &'a AtomicU64,
    job: Job<'a>,
}

impl ChunkReads<'_> {
    /// Reads the round's chunks, then writes its map pages.
    fn finish_round(&self, round: &mut Vec<PageWork>, pages: &mut [Option<PageRef>]) -> Result<()> {
        let indices: Vec<u64> = round.iter().flat_map(|w| w.to_read.iter().copied()).collect();
        for (index, entry) in self.run(&indices, round)? {
            let at = page_index(round, index);
            let work = &mut round[at];
            work.entries[(index - work.first) as usize] = entry;
        }
        for work in round.drain(..) {
            let data_chunks = work.entries.iter().filter(|e| e.is_some()).count() as u32;
            let bytes = DiskMapPage { entries: work.entries }.encode();
            let id = self.session.chunk_id(&bytes);
            self.session.store_chunk(id, ChunkKind::DiskMapPage, &bytes)?;
            pages[work.page] = Some(PageRef { id, data_chunks });
        }
        Ok(())
    }

    /// Reads, hashes and submits the given chunks on the disk's reader
    /// threads; returns each chunk's entry (`None` for chunks that are
    /// holes or all zeros). The first failure stops the other readers.
    fn run(&self, indices: &[u64], round: &[PageWork]) -> Result<Vec<(u64, Option<ChunkId>)>> {
        let next = AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let results = Mutex::new(Vec::with_capacity(indices.len()));
        let threads = self.image.readers().min(indices.len().max(1));
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        let mut buf = vec![0u8; self.chunk as usize];
                        while !failed.load(Ordering::Relaxed) {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&index) = indices.get(i) else {
                                return Ok(());
                            };
                            let entry = self.job.cancel.check().and_then(|()| self.one(index, round, &mut buf));
                            match entry {
                                Ok(entry) => results.lock().expect("results").push((index, entry)),
                                Err(e) => {
                                    failed.store(true, Ordering::Relaxed);
                                    return Err(e);
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut first_error = None;
            for worker in workers {
                if let Err(e) = worker.join().expect("disk reader panicked") {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })?;
        Ok(results.into_inner().expect("results"))
    }

    fn one(&self, index: u64, round: &[PageWork], buf: &mut Vec<u8>) -> Result<Option<ChunkId>> {
        let capacity = self.image.capacity();
        let start = index * self.chunk;
        let end = (start + self.chunk).min(capacity);
        let len = (end - start) as usize;
        let partly = self.changed.filter(|changed| !covers(changed, start, end));
        match partly {
            None => {
                buf[..len].fill(0);
                self.read_allocated(start, end, start, buf)?;
            }
            Some(changed) => {
                let work = &round[page_index(round, index)];
                match work.entries[(index - work.first) as usize] {
                    None => buf[..len].fill(0),
                    Some(id) => {
                        let plain = self.session.read_chunk(&id)?;
                        if plain.len() != len {
                            return Err(Error::corrupt(
                                format!("chunk {id} of the parent's disk map at byte {start}"),
                                format!("it holds {} bytes, expected {len}", plain.len()),
                            ));
                        }
                        buf[..len].copy_from_slice(&plain);
                    }
                }
                for &(a, b) in overlapping(changed, start, end) {
                    let (a, b) = (a.max(start), b.min(end));
                    buf[(a - start) as usize..(b - start) as usize].fill(0);
                    self.read_allocated(a, b, start, buf)?;
                }
            }
        }
        let counted = overlapping(self.wanted, start, end)
            .iter()
            .map(|&(a, b)| b.min(end) - a.max(start))
            .sum();
        self.job.progress.advance(counted);
        let window = &buf[..len];
        Ok(if strata_vmdk::is_zero(window) {
            None
        } else {
            let id = self.session.chunk_id(window);
            self.session.store_chunk(id, ChunkKind::Data, window)?;
            Some(id)
        })
    }

    /// Reads the allocated bytes of `[from, to)` into `buf`, which holds
    /// the disk from `origin`.
    fn read_allocated(&self, from: u64, to: u64, origin: u64, buf: &mut Vec<u8>) -> Result<()> {
        for &(a, b) in overlapping(self.allocated, from, to) {
            let (a, b) = (a.max(from), b.min(to));
            let span = (a - origin) as usize..(b - origin) as usize;
            *buf = self.image.read_into(a, std::mem::take(buf), span)?;
            self.bytes_read.fetch_add(b - a, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where in a round the page holding chunk `index` is (pages are in
/// order, and every chunk read belongs to one of them).
fn page_index(round: &[PageWork], index: u64) -> usize {
    round.partition_point(|w| w.first + PAGE_ENTRIES as u64 <= index)
}

/// Whether the sorted, merged `ranges` cover all of `[a, b)`.
fn covers(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
    matches!(overlapping(ranges, a, b), [(x, y)] if *x <= a && *y >= b)
}

/// For messages: a disk image's format.
pub fn describe_format(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "raw",
        DiskFormat::MonolithicSparse => "monolithicSparse",
        DiskFormat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
        DiskFormat::MonolithicFlat => "monolithicFlat",
        DiskFormat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
        DiskFormat::StreamOptimized => "streamOptimized",
        DiskFormat::Vmfs => "vmfs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_needs_one_range_around_the_whole_span() {
        let r = [(0, 10), (10, 20), (30, 40)];
        assert!(covers(&r[..1], 2, 8));
        assert!(!covers(&r, 5, 15), "merged ranges are one; two touching ones are not");
        assert!(!covers(&r, 25, 35));
        assert!(covers(&r, 30, 40));
    }

    #[test]
    fn overlap_finds_exactly_the_touching_ranges() {
        let r = [(0, 10), (20, 30), (40, 50)];
        assert_eq!(overlapping(&r, 10, 20), &[] as &[(u64, u64)]);
        assert_eq!(overlapping(&r, 5, 25), &[(0, 10), (20, 30)]);
        assert_eq!(overlapping(&r, 29, 41), &[(20, 30), (40, 50)]);
        assert_eq!(overlapping(&r, 60, 70), &[] as &[(u64, u64)]);
    }
}
