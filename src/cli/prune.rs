//! `strata prune`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use strata::cancel::CancelToken;
use strata::prune::{prune, PruneOptions, PruneReport};
use strata::remote::client::Maintenance;

use super::progress::TerminalProgress;
use super::render::{human_bytes, print_json};
use super::{open_exclusive, Status};

/// `path` is still unchecked: a wrong `--repack-below` is reported before
/// a missing repository.
pub fn run(
    path: Result<PathBuf>,
    repack_below: f64,
    dry_run: bool,
    as_json: bool,
    cancel: &CancelToken,
) -> Result<Status> {
    if !(0.0..=1.0).contains(&repack_below) {
        bail!("--repack-below must be between 0 and 1");
    }
    let path = path?;
    let report = match super::remote::location(&path)? {
        None => {
            let repo = open_exclusive(&path, "strata prune")?;
            let progress = TerminalProgress::bytes("prune", !as_json);
            let options = PruneOptions {
                repack_below,
                repack_cold: true,
                dry_run,
            };
            prune(&repo, &options, &progress, cancel)?
        }
        Some(location) => {
            // This client walks (it holds the key); the server sweeps.
            let repo = super::remote::open(location)?;
            let lease = Maintenance::begin(&repo, super::forget::MAINTENANCE_PATIENCE, cancel)?;
            lease.prune(repack_below, dry_run, cancel)?
        }
    };
    if as_json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        render(&report, dry_run)?;
    }
    Ok(Status::Ok)
}

fn render(report: &PruneReport, dry_run: bool) -> Result<()> {
    out!(
        "{} {} of {} in {} packs: {} packs deleted, {} repacked into {}, {} chunks removed ({} restore points kept, mark filter {})",
        if dry_run { "would free" } else { "freed" },
        human_bytes(report.bytes_freed),
        human_bytes(report.bytes_before),
        report.packs_before,
        report.packs_deleted,
        report.packs_repacked,
        report.packs_written,
        report.chunks_removed,
        report.restore_points,
        human_bytes(report.mark_filter_bytes),
    );
    Ok(())
}
