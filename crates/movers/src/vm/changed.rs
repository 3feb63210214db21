//! Changed-block tracking: the changed extents given per disk with
//! `--changed-extents`, and whether a disk can use them against its
//! parent's map.

use std::path::Path;

use super::{stem, ResolvedVm, VmBackup};
use crate::error::{Error, IoContext, Result};
use strata_engine::vm::description::DiskRecord;
use crate::vmdk::VirtualDisk;

/// Sorted, merged `[start, end)` byte ranges of a disk that changed.
pub(super) type Ranges = Vec<(u64, u64)>;

/// Each disk's changed extents, in the order of `vm.disks` (`None`: none
/// given).
pub(super) fn changed_extents(
    vm: &ResolvedVm,
    request: &VmBackup,
    opened: &[VirtualDisk],
) -> Result<Vec<Option<Ranges>>> {
    let mut changed: Vec<Option<Ranges>> = vec![None; vm.disks.len()];
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
        changed[i] = Some(load_changed(file, opened[i].capacity())?);
    }
    Ok(changed)
}

/// The changed extents and parent map a disk is read against, or `None`
/// to read the whole disk.
pub(super) fn cbt_source<'a>(
    slot: &str,
    changed: Option<&'a Ranges>,
    parent_disk: Option<&'a DiskRecord>,
    full: bool,
    parent_is_warm: bool,
) -> Option<(&'a [(u64, u64)], &'a DiskRecord)> {
    match (changed, parent_disk) {
        (Some(extents), Some(parent)) if !full && parent_is_warm => {
            Some((extents.as_slice(), parent))
        }
        (Some(_), Some(_)) if !parent_is_warm => {
            // Its data may be on the cold tier: reusing its map would
            // make this restore point depend on data needing a thaw.
            tracing::info!(disk = %slot, "the parent restore point is past the warm period; reading the whole disk");
            None
        }
        (Some(_), None) => {
            tracing::info!(disk = %slot, "no matching disk in a parent restore point; reading the whole disk");
            None
        }
        _ => None,
    }
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
