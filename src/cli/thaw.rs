//! `strata thaw`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::restore_point::RestorePoint;
use strata::storage::RestorePriority;
use strata::thaw::{ThawOptions, ThawReport};

use super::progress::TerminalProgress;
use super::render::{human_bytes, print_json};
use super::{open_exclusive, Status};

pub struct ThawArgs<'a> {
    pub restore_point: &'a str,
    pub days: u32,
    pub plan: bool,
    /// Return once the restores of archived packs are requested instead
    /// of waiting for them.
    pub no_wait: bool,
    /// Pause between checks of packs the provider is restoring.
    pub poll: Duration,
    pub priority: RestorePriority,
    /// `--notify PROGRAM ARGS…`.
    pub notify: Option<&'a [String]>,
    pub as_json: bool,
}

pub fn run(path: &Path, args: &ThawArgs<'_>, cancel: &CancelToken) -> Result<Status> {
    let options = ThawOptions {
        days: args.days,
        plan: args.plan,
        priority: args.priority,
    };
    let progress = TerminalProgress::bytes("thaw", !args.as_json && !args.plan);
    // Each round holds the writer lock only while it requests and copies:
    // a backup may run while the provider restores archived packs, and a
    // round that finds one running waits for the next.
    let mut first_round = true;
    let (rp, thawed, config, location) = loop {
        let repo = match open_exclusive(path, "strata thaw") {
            Ok(repo) => repo,
            Err(e) if !first_round && is_busy(&e) => {
                if !args.as_json {
                    out!("{e}; checking again in {} s", args.poll.as_secs());
                }
                pause(args.poll, cancel)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        first_round = false;
        let rp = repo.resolve(args.restore_point)?;
        let thawed = strata::thaw::thaw(&repo, &rp, &options, &progress, cancel);
        let config = repo.config().clone();
        let location = repo.location().clone();
        drop(repo);
        match &thawed {
            Ok(report) if !report.complete && !args.plan && !args.no_wait => {
                if !args.as_json {
                    out!(
                        "{} packs ({}) are being restored by the storage provider; checking again in {} s",
                        report.restoring_packs,
                        human_bytes(report.restoring_bytes),
                        args.poll.as_secs()
                    );
                }
                pause(args.poll, cancel)?;
            }
            _ => break (rp, thawed, config, location),
        }
    };
    // The notification runs after the writer lock is released, once the
    // thaw is finished or has failed.
    let finished = thawed.as_ref().map_or(true, |report| report.complete);
    if !args.plan && finished {
        let notice = strata::notify::ThawNotice {
            restore_point: &rp,
            ok: thawed.is_ok(),
            until: thawed.as_ref().ok().map(|r| r.until.as_str()),
        };
        let notifier = match args.notify {
            Some(argv) => strata::notify::Notifier::Given(argv),
            None => strata::notify::Notifier::Configured,
        };
        strata::notify::notify_thaw(&location, &config, &notice, notifier);
    }
    let report = thawed?;
    if args.as_json {
        print_json(&serde_json::to_value(&report)?)?;
    } else if args.plan {
        render_plan(&rp, &report)?;
    } else if report.complete {
        out!(
            "thawed {} until {}: fetched {} packs ({}), {} already thawed",
            rp.id.short(),
            report.until,
            report.packs_fetched,
            human_bytes(report.bytes_fetched),
            report.packs_already_thawed
        );
    } else {
        out!(
            "thaw of {} under way: requested the restore of {} archived packs ({}); \
             {} packs ({}) are still being restored by the storage provider; \
             run `strata thaw {}` again to finish",
            rp.id.short(),
            report.restore_requests,
            human_bytes(report.restore_request_bytes),
            report.restoring_packs,
            human_bytes(report.restoring_bytes),
            args.restore_point
        );
    }
    Ok(Status::Ok)
}

fn is_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<strata::error::Error>(),
        Some(strata::error::Error::Busy { .. })
    )
}

/// Sleeps for `pause`, waking early to stop on a signal.
fn pause(pause: Duration, cancel: &CancelToken) -> Result<()> {
    let end = Instant::now() + pause;
    while Instant::now() < end {
        cancel.check()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(200)));
    }
    Ok(())
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
    if report.restore_requests > 0 {
        out!(
            "{} of them are archived: the storage provider would be asked to restore them ({})",
            report.restore_requests,
            human_bytes(report.restore_request_bytes)
        );
    }
    if report.restoring_packs > 0 {
        out!(
            "{} of them ({}) are already being restored by the storage provider",
            report.restoring_packs,
            human_bytes(report.restoring_bytes)
        );
    }
    if report.packs_already_thawed > 0 {
        out!("{} of them are thawed already", report.packs_already_thawed);
    }
    Ok(())
}
