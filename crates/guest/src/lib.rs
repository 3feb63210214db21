//! What is inside a VM disk, read-only: partition tables
//! ([`partition`]), LVM2 linear volumes ([`lvm`]), what each volume holds
//! ([`probe`]), the volumes a person browses ([`volume`]), and their file
//! systems ([`fs`]: [`ext4`], [`xfs`], [`ntfs`], [`fat`], [`exfat`]).
//! Every reader takes a [`source::ByteSource`] (a disk of a restore point
//! read through the repository's chunk cache, [`stored`], so damaged data
//! is an error, never wrong bytes) and treats every byte as hostile.

mod bytes;
pub mod error;
pub mod exfat;
pub mod ext4;
pub mod fat;
pub mod fs;
pub mod lvm;
pub mod ntfs;
pub mod partition;
pub mod probe;
mod runs;
pub mod source;
pub mod stored;
pub mod vm;
pub mod volume;
pub mod xfs;

pub use error::{Error, Result};
