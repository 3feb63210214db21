//! `strata thaw`.

use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::restore_point::RestorePoint;
use strata::tier::ThawReport;

use super::progress::TerminalProgress;
use super::render::{human_bytes, print_json};
use super::{open_exclusive, Status};

pub struct ThawArgs<'a> {
    pub restore_point: &'a str,
    pub days: u32,
    pub plan: bool,
    /// `--notify PROGRAM ARGS…`.
    pub notify: Option<&'a [String]>,
    pub as_json: bool,
}

pub fn run(path: &Path, args: &ThawArgs<'_>, cancel: &CancelToken) -> Result<Status> {
    let ThawArgs {
        restore_point,
        days,
        plan,
        notify,
        as_json,
    } = *args;
    let repo = open_exclusive(path, "strata thaw")?;
    let rp = repo.resolve(restore_point)?;
    let progress = TerminalProgress::bytes("thaw", !as_json && !plan);
    let thawed = strata::tier::thaw(&repo, &rp, days, plan, &progress, cancel);
    // The notification runs after the writer lock is released.
    let config = repo.config().clone();
    let location = repo.location().clone();
    drop(repo);
    if !plan {
        let notice = strata::notify::ThawNotice {
            restore_point: &rp,
            ok: thawed.is_ok(),
            until: thawed.as_ref().ok().map(|r| r.until.as_str()),
        };
        let notifier = match notify {
            Some(argv) => strata::notify::Notifier::Given(argv),
            None => strata::notify::Notifier::Configured,
        };
        strata::notify::notify_thaw(&location, &config, &notice, notifier);
    }
    let report = thawed?;
    if as_json {
        print_json(&serde_json::to_value(&report)?)?;
    } else if plan {
        render_plan(&rp, &report)?;
    } else {
        out!(
            "thawed {} until {}: fetched {} packs ({}), {} already thawed",
            rp.id.short(),
            report.until,
            report.packs_fetched,
            human_bytes(report.bytes_fetched),
            report.packs_already_thawed
        );
    }
    Ok(Status::Ok)
}

fn render_plan(rp: &RestorePoint, report: &ThawReport) -> Result<()> {
    out!(
        "thawing {} would fetch {} cold packs, {}:",
        rp.id.short(),
        report.packs.len(),
        human_bytes(report.bytes)
    );
    for (pack, size) in &report.packs {
        out!("  {pack} {}", human_bytes(*size));
    }
    Ok(())
}
