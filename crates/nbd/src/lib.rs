//! An NBD client, written here.
//!
//! Why not libnbd: no Rust crate binds it, a binding would put a C
//! library's parsing of hostile server replies under `unsafe`, and what a
//! backup needs of NBD is small: the fixed newstyle handshake, structured
//! replies, metadata contexts (`base:allocation`, `qemu:dirty-bitmap:*`),
//! reads, block status, and for restores writes, write-zeroes and flush;
//! TLS (`nbds`) through rustls. Every reply is checked against the
//! request it answers before a byte of it is used (see [`client`]).

pub(crate) use strata_format::error;

pub mod client;
mod handshake;
mod inflight;
mod replies;
mod transport;
pub mod uri;
mod wire;

pub use client::{add_ranges, dirty_bitmap_context, BlockStatus, Client, ConnectOptions, Extent, BASE_ALLOCATION};
pub use handshake::ExportInfo;
pub use uri::{Address, NbdUri};
pub use wire::{STATE_DIRTY, STATE_HOLE, STATE_ZERO};
