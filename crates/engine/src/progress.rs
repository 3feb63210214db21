//! Progress reporting for jobs a person waits on. The library only reports
//! through [`Progress`]; whoever runs the job decides how (or whether) to
//! show it: the `strata` binary draws a terminal bar, tests and embedders
//! pass [`NoProgress`].
//!
//! Units are the job's own (bytes for backup, restore, check and thaw;
//! packs for repair and tier runs); a job grows its total as it learns it,
//! possibly while it already advances.

pub trait Progress: Send + Sync {
    /// Whether anyone sees the progress. Work done only to feed the
    /// display, such as measuring a backup's total size ahead of it, is
    /// skipped when not.
    fn is_visible(&self) -> bool;

    /// Adds to the amount of work the job expects to do.
    fn add_total(&self, amount: u64);

    /// Records work done.
    fn advance(&self, amount: u64);

    /// Replaces the short status text shown beside the counts.
    fn message(&self, text: String);

    /// The job is over; the display goes away.
    fn finish(&self);
}

/// Progress nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn is_visible(&self) -> bool {
        false
    }

    fn add_total(&self, _: u64) {}

    fn advance(&self, _: u64) {}

    fn message(&self, _: String) {}

    fn finish(&self) {}
}
