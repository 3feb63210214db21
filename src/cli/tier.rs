//! `strata tier status` and `strata tier run`.

use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::progress::NoProgress;
use strata::reader::RepositoryReader;
use strata::remote::client::Maintenance;
use strata::remote::protocol::RemoteLocation;
use strata::tier::{TierReport, TierStatus};

use super::args::TierCommand;
use super::render::{human_bytes, print_json};
use super::{open, open_exclusive, Status};

pub fn run(path: &Path, command: TierCommand, cancel: &CancelToken) -> Result<Status> {
    if let Some(location) = super::remote::location(path)? {
        return run_remote(location, command, cancel);
    }
    match command {
        TierCommand::Status(json) => {
            let status = strata::tier::status(&open(path)?)?;
            if json.json {
                print_json(&serde_json::to_value(&status)?)?;
            } else {
                render_status(&status)?;
            }
        }
        TierCommand::Run { warm_days, sources, json } => {
            let repo = open_exclusive(path, "strata tier run")?;
            let report = strata::tier::run(&repo, warm_days, &sources, &NoProgress, cancel)?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                render_run(&report)?;
            }
        }
    }
    Ok(Status::Ok)
}

/// Through a server: the server counts packs and thaws, this client the
/// restore points; for a run, this client walks and the server moves and
/// sweeps under the maintenance lease.
fn run_remote(location: RemoteLocation, command: TierCommand, cancel: &CancelToken) -> Result<Status> {
    let repo = super::remote::open(location)?;
    match command {
        TierCommand::Status(json) => {
            let mut status = repo.storage()?.tiers;
            strata::tier::count_restore_points(&mut status, &repo.restore_points()?);
            if json.json {
                print_json(&serde_json::to_value(&status)?)?;
            } else {
                render_status(&status)?;
            }
        }
        TierCommand::Run { warm_days, sources, json } => {
            let days = warm_days.unwrap_or(repo.config().tiers.warm_days);
            let lease = Maintenance::begin(&repo, super::forget::MAINTENANCE_PATIENCE, cancel)?;
            if repo.config().tiers.cold_dir.is_none() {
                anyhow::bail!("{} has no cold tier: `strata init --cold` makes one", repo.location());
            }
            let report = lease.tier(days, &sources, cancel)?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                render_run(&report)?;
            }
        }
    }
    Ok(Status::Ok)
}

fn render_status(status: &TierStatus) -> Result<()> {
    out!(
        "warm: {} in {} packs; {} restore points younger than {} days",
        human_bytes(status.warm_bytes),
        status.warm_packs,
        status.restore_points_warm,
        status.warm_days
    );
    let class = status
        .cold_storage_class
        .as_deref()
        .map(|class| format!(" (storage class {class})"))
        .unwrap_or_default();
    out!(
        "cold: {} in {} packs at {}{class}; {} older restore points",
        human_bytes(status.cold_bytes),
        status.cold_packs,
        status
            .cold_dir
            .as_deref()
            .unwrap_or("(no cold tier configured)"),
        status.restore_points_cold
    );
    out!("thawed: {} packs", status.thawed_packs);
    for (rp, until) in &status.thawed {
        out!("  restore point {rp} until {until}");
    }
    Ok(())
}

fn render_run(report: &TierReport) -> Result<()> {
    out!(
        "{} restore points older than {} days: moved {} chunks ({}) to {} cold packs ({}); freed {} warm; {} thaw copies expired",
        report.restore_points_cold,
        report.warm_days,
        report.chunks_moved,
        human_bytes(report.bytes_moved),
        report.cold_packs_written,
        human_bytes(report.cold_bytes_written),
        human_bytes(report.warm_bytes_freed),
        report.thaw_copies_expired
    );
    Ok(())
}
