//! Changed-block tracking: the changed extents given per disk with
//! `--changed-extents`, and whether a disk can use them against its
//! parent's map.

use std::path::Path;

use super::opened::OpenedDisk;
use super::{stem, ResolvedVm, VmBackup};
use crate::error::{Error, IoContext, Result};
use strata_engine::vm::description::{DiskRecord, VmDescription};

/// Sorted, merged `[start, end)` byte ranges of a disk that changed.
pub(super) type Ranges = Vec<(u64, u64)>;

/// How a disk was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// Every allocated byte.
    Full,
    /// Only chunks touching the extents given with `--changed-extents`.
    ChangedExtents,
    /// Only chunks touching the extents a QEMU dirty bitmap marks dirty.
    DirtyBitmap,
}

/// How one disk of a backup was read, and why in full when changes were
/// given but could not be trusted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskRead {
    pub disk: String,
    pub mode: ReadMode,
    pub full_because: Option<String>,
}

/// What a disk says changed since the VM's latest restore point.
pub(super) enum Changes {
    /// Nothing: every allocated chunk is read.
    Unknown,
    Given(Ranges, ReadMode),
    /// Changes were asked for but cannot be trusted, for this reason.
    Unusable(String),
}

/// Each disk's changes, in the order of `vm.disks`.
pub(super) fn changed_extents(
    vm: &ResolvedVm,
    request: &VmBackup,
    opened: &[OpenedDisk],
) -> Result<Vec<Changes>> {
    let mut changed: Vec<Changes> = opened
        .iter()
        .map(|disk| match disk {
            OpenedDisk::Nbd(nbd) => match nbd.dirty() {
                None => Changes::Unknown,
                Some(Ok(ranges)) => Changes::Given(ranges.clone(), ReadMode::DirtyBitmap),
                Some(Err(why)) => Changes::Unusable(why.to_string()),
            },
            OpenedDisk::Image(_) => Changes::Unknown,
        })
        .collect();
    for (selector, file) in &request.changed_extents {
        let i = vm
            .disks
            .iter()
            .position(|d| {
                d.slot == *selector
                    || d.file_name == *selector
                    || stem(Path::new(&d.file_name)) == *selector
                    || (vm.disks.len() == 1 && *selector == vm.name)
            })
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "--changed-extents names disk {selector:?}, which VM {} does not have",
                    vm.name
                ))
            })?;
        if matches!(opened[i], OpenedDisk::Nbd(_)) {
            return Err(Error::InvalidInput(format!(
                "--changed-extents names disk {selector:?}, which is read over NBD: its changes come from --bitmap"
            )));
        }
        changed[i] = Changes::Given(load_changed(file, opened[i].capacity())?, ReadMode::ChangedExtents);
    }
    Ok(changed)
}

/// A disk's changed extents and the parent's record of it, whose map
/// pages the untouched parts reuse.
pub(super) type Against<'a> = (&'a [(u64, u64)], &'a DiskRecord);

/// What a disk is read against: its changed extents and the parent's map
/// of it, or `None` to read the whole disk; and how it was read, for the
/// outcome.
pub(super) fn cbt_source<'a>(
    slot: &str,
    capacity: u64,
    chunk_size: u32,
    changes: &'a Changes,
    parent: Option<(&'a VmDescription, bool)>,
    full: bool,
    bitmap: Option<&str>,
) -> (Option<Against<'a>>, DiskRead) {
    let read = |mode, full_because: Option<String>| DiskRead {
        disk: slot.to_string(),
        mode,
        full_because,
    };
    let (ranges, mode) = match changes {
        Changes::Unknown => return (None, read(ReadMode::Full, None)),
        Changes::Unusable(why) => return (None, read(ReadMode::Full, Some(why.clone()))),
        Changes::Given(ranges, mode) => (ranges, *mode),
    };
    let why_full = |why: String| {
        tracing::info!(disk = %slot, reason = %why, "reading the whole disk");
        (None, read(ReadMode::Full, Some(why)))
    };
    if full {
        return why_full("--full was given".into());
    }
    let Some((description, warm)) = parent else {
        return why_full("the VM has no earlier restore point to be incremental against".into());
    };
    let Some(disk) = description.disks.iter().find(|d| d.slot == slot) else {
        return why_full("the VM's latest restore point has no such disk".into());
    };
    if disk.capacity != capacity {
        return why_full(format!(
            "the disk's size changed from {} to {capacity} bytes since the latest restore point",
            disk.capacity
        ));
    }
    if disk.chunk_size != chunk_size {
        return why_full("the repository's disk chunk size changed since the latest restore point".into());
    }
    if !warm {
        // Its data may be on the cold tier: reusing its map would make
        // this restore point depend on data needing a thaw.
        return why_full("the latest restore point is past the warm period".into());
    }
    if mode == ReadMode::DirtyBitmap {
        let Some(bitmap) = bitmap else {
            return why_full("no bitmap was named to check against the latest restore point".into());
        };
        // A bitmap holds the writes since it started: only a parent taken
        // at that moment is one it is incremental against (not an older
        // one, after the latest was forgotten or the bitmap replaced).
        match &disk.tracking_bitmap {
            Some(started) if started == bitmap => {}
            Some(started) => {
                return why_full(format!(
                    "bitmap {bitmap:?} did not start with the VM's latest restore point ({started:?} did)"
                ))
            }
            None => {
                return why_full(format!(
                    "the VM's latest restore point records no bitmap that started with it (back up with --next-bitmap), so {bitmap:?} may miss writes"
                ))
            }
        }
    }
    (Some((ranges.as_slice(), disk)), read(mode, None))
}

#[derive(serde::Deserialize)]
struct ChangedExtent {
    start: u64,
    length: u64,
}

fn load_changed(path: &Path, capacity: u64) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read(path).at("reading changed extents", path)?;
    let list: Vec<ChangedExtent> = serde_json::from_slice(&text).map_err(|e| {
        Error::InvalidInput(format!(
            "changed extents {}: {e} (expected [{{\"start\": N, \"length\": N}}, …])",
            path.display()
        ))
    })?;
    let mut ranges = Vec::with_capacity(list.len());
    for e in list {
        let end = e
            .start
            .checked_add(e.length)
            .filter(|end| *end <= capacity)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "changed extents {}: {}+{} lies beyond the disk's {capacity} bytes",
                    path.display(),
                    e.start,
                    e.length
                ))
            })?;
        if e.length > 0 {
            ranges.push((e.start, end));
        }
    }
    Ok(merge(ranges))
}

fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_joins_overlapping_ranges() {
        assert_eq!(
            merge(vec![(5, 10), (0, 6), (20, 21)]),
            vec![(0, 10), (20, 21)]
        );
    }
}
