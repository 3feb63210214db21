//! `strata forget`.

use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::reader::RepositoryReader as _;
use strata::forget::{choose, forget, Decision, KeepPolicy};
use strata::remote::client::Maintenance;

use super::args::ForgetArgs;
use super::render::print_json;
use super::{open_exclusive, Status};

/// How long maintenance through a server waits for running backups.
pub const MAINTENANCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

pub fn run(path: &Path, args: &ForgetArgs, cancel: &CancelToken) -> Result<Status> {
    let policy = KeepPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
    };
    let decisions = match super::remote::location(path)? {
        None => {
            let repo = open_exclusive(path, "strata forget")?;
            forget(&repo, &args.sources, &policy, args.dry_run)?
        }
        Some(location) => {
            // The admin client decides (it can read the manifests); the
            // server removes, under its maintenance lease.
            let repo = super::remote::open(location)?;
            let lease = Maintenance::begin(&repo, MAINTENANCE_PATIENCE, cancel)?;
            let (points, decisions) = choose(repo.restore_points()?, &args.sources, &policy)?;
            if !args.dry_run {
                let gone: Vec<_> = points
                    .iter()
                    .zip(&decisions)
                    .filter(|(_, d)| !d.keep)
                    .map(|(rp, _)| rp.id)
                    .collect();
                lease.forget(&gone)?;
            }
            decisions
        }
    };
    if args.json.json {
        print_json(&serde_json::to_value(&decisions)?)?;
    } else {
        render(&decisions, args.dry_run)?;
    }
    Ok(Status::Ok)
}

fn render(decisions: &[Decision], dry_run: bool) -> Result<()> {
    for d in decisions {
        let verdict = if d.keep {
            format!("keep   ({})", d.reasons.join(", "))
        } else if dry_run {
            "would remove".into()
        } else {
            "removed".into()
        };
        out!("{} {:<16} {}  {verdict}", &d.id[..8], d.source, d.time);
    }
    let removed = decisions.iter().filter(|d| !d.keep).count();
    out!(
        "{} {removed} of {} restore points{}",
        if dry_run { "would remove" } else { "removed" },
        decisions.len(),
        if dry_run {
            ""
        } else {
            "; run `strata prune` to free their data"
        }
    );
    Ok(())
}
