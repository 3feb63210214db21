//! The clock, kept out of the manifest format and the selectors so that
//! they stay pure functions of their input.

use crate::tree::Timestamp;

/// The current time, as restore points, leases and expiries record it.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}
