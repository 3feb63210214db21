//! `strata check`.

use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::check::{check, CheckReport};
use strata::progress::Progress;
use strata::reference_check::check_references;

use super::progress::TerminalProgress;
use super::render::{human_bytes, print_json};
use super::{open, Status};

pub fn run(path: &Path, read_data: bool, as_json: bool, cancel: &CancelToken) -> Result<Status> {
    let progress = TerminalProgress::bytes("check", read_data && !as_json);
    let report = match super::remote::location(path)? {
        None => check(&open(path)?, read_data, &progress, cancel)?,
        Some(location) => {
            // The server checks its packs and index; this client, which
            // holds the key, checks what the restore points reference
            // (and with --read-data reads and verifies every data chunk).
            let repo = super::remote::open(location)?;
            let mut report = repo.check_stored(read_data)?;
            check_references(&repo, read_data, &mut report, &progress, cancel)?;
            progress.finish();
            report
        }
    };
    if as_json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        render(&report, read_data)?;
    }
    Ok(if report.is_clean() {
        Status::Ok
    } else {
        Status::CheckFailed
    })
}

fn render(report: &CheckReport, read_data: bool) -> Result<()> {
    out!(
        "checked {} packs, {} chunks, {} restore points{}",
        report.packs,
        report.chunks,
        report.restore_points,
        if read_data {
            format!(", read {}", human_bytes(report.bytes_verified))
        } else {
            String::new()
        }
    );
    for w in &report.warnings {
        out!("warning: {w}");
    }
    for e in &report.errors {
        out!("error: {e}");
    }
    for d in &report.damaged {
        if d.pack.is_empty() {
            out!("damaged chunk {}: {}", d.chunk, d.detail);
        } else {
            out!("damaged chunk {} in pack {}: {}", d.chunk, d.pack, d.detail);
        }
        for a in &d.affected {
            out!("  affects {a}");
        }
    }
    if report.is_clean() {
        out!("no errors found");
    }
    Ok(())
}
