//! Disks read over NBD: a running VM's disks as QEMU (or nbdkit) exports
//! them during a backup job.
//!
//! Allocation comes from the server's `base:allocation` block status, so
//! ranges it reports as reading zeros are neither read nor stored. With a
//! bitmap, the `qemu:dirty-bitmap:NAME` context gives the changed
//! extents; a bitmap the server does not offer is never guessed at (QEMU
//! does not export one it marks inconsistent): the disk is read in full
//! and the reason reported.

use strata_nbd::{add_ranges, dirty_bitmap_context, Client, ConnectOptions, NbdUri, BASE_ALLOCATION, STATE_DIRTY, STATE_ZERO};

use super::changed::Ranges;
use crate::error::{Error, Result};

pub struct NbdDisk {
    client: Client,
    allocated: Ranges,
    /// With a bitmap asked for: its dirty extents, or why there are none.
    dirty: Option<std::result::Result<Ranges, String>>,
}

impl NbdDisk {
    pub fn open(uri: &NbdUri, bitmap: Option<&str>) -> Result<NbdDisk> {
        let bitmap_context = bitmap.map(dirty_bitmap_context);
        let mut contexts = vec![BASE_ALLOCATION.to_string()];
        contexts.extend(bitmap_context.clone());
        let client = Client::connect(uri, &ConnectOptions { contexts })?;
        let export = client.export();
        let size = client.size();
        // What a restore can write back as a VMDK; a server claiming more
        // is refused before its map is walked.
        let largest = crate::vmdk::sparse::MAX_CAPACITY_SECTORS * crate::vmdk::sparse::SECTOR;
        if size > largest {
            return Err(Error::InvalidInput(format!(
                "NBD export {uri} is {size} bytes, larger than the {largest} bytes a disk may be"
            )));
        }
        let has_allocation = export.context_id(BASE_ALLOCATION).is_some();
        let has_bitmap = bitmap_context.as_ref().is_some_and(|c| export.context_id(c).is_some());
        let (mut allocated, mut dirty) = (Vec::new(), Vec::new());
        if has_allocation || has_bitmap {
            // Merged as they come: a fragmented disk's extents are many.
            client.for_each_extent(size, |context, extents| {
                if context == BASE_ALLOCATION {
                    add_ranges(&mut allocated, extents, |flags| flags & STATE_ZERO == 0);
                } else if Some(context) == bitmap_context.as_deref() {
                    add_ranges(&mut dirty, extents, |flags| flags & STATE_DIRTY != 0);
                }
            })?;
        }
        if !has_allocation && size > 0 {
            // Nothing says what is unallocated: every byte is read.
            allocated = vec![(0, size)];
        }
        let dirty = bitmap.map(|name| {
            if has_bitmap {
                Ok(dirty)
            } else {
                let offered = &export.offered_bitmaps;
                let offered = if !export.structured {
                    "it has no structured replies, so no block status".to_string()
                } else if offered.is_empty() {
                    "it offers none".to_string()
                } else {
                    format!("it offers {}", offered.join(", "))
                };
                Err(format!(
                    "the NBD server does not offer dirty bitmap {name:?} ({offered}; QEMU does not export a bitmap it marks inconsistent)"
                ))
            }
        });
        tracing::info!(
            server = %uri,
            size,
            allocated = allocated.iter().map(|(a, b)| b - a).sum::<u64>(),
            dirty = ?dirty.as_ref().map(|d| d.as_ref().map(|r| r.iter().map(|(a, b)| b - a).sum::<u64>())),
            "NBD disk opened"
        );
        Ok(NbdDisk { client, allocated, dirty })
    }

    pub fn capacity(&self) -> u64 {
        self.client.size()
    }

    pub fn allocated(&self) -> &Ranges {
        &self.allocated
    }

    /// The bitmap's dirty extents (`None`: no bitmap was asked for;
    /// `Some(Err)`: why it cannot be used).
    pub fn dirty(&self) -> Option<std::result::Result<&Ranges, &str>> {
        self.dirty.as_ref().map(|d| d.as_ref().map_err(String::as_str))
    }

    pub fn read_into(&self, offset: u64, buf: Vec<u8>, span: std::ops::Range<usize>) -> Result<Vec<u8>> {
        self.client.read_into(offset, buf, span)
    }
}
