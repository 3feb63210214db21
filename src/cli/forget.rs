//! `strata forget`.

use std::path::Path;

use anyhow::Result;
use strata::forget::{forget, Decision, KeepPolicy};

use super::args::ForgetArgs;
use super::render::print_json;
use super::{open_exclusive, Status};

pub fn run(path: &Path, args: &ForgetArgs) -> Result<Status> {
    let repo = open_exclusive(path, "strata forget")?;
    let policy = KeepPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
    };
    let decisions = forget(&repo, args.source.as_deref(), &policy, args.dry_run)?;
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
