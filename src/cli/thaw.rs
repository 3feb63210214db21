//! `strata thaw`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::repository::{Exclusive, Repository};
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

/// Rounds of a waiting thaw that may fail in a row (a provider or network
/// outage) before the thaw gives up.
const FAILED_ROUNDS_MAX: u32 = 5;

pub fn run(path: &Path, args: &ThawArgs<'_>, cancel: &CancelToken) -> Result<Status> {
    let options = ThawOptions {
        days: args.days,
        plan: args.plan,
        priority: args.priority,
    };
    // The first round resolves the restore point; later ones keep it, so
    // that a backup made while the thaw waits cannot change what
    // `SOURCE@latest` names.
    let repo = open_exclusive(path, "strata thaw")?;
    let rp = repo.resolve(args.restore_point)?;
    let config = repo.config().clone();
    let location = repo.location().clone();
    let mut totals = Totals::default();
    let mut thawed = round(repo, &rp, &options, args, &mut totals, cancel);
    let mut failed_rounds = 0;
    // Each round holds the writer lock only while it requests and copies:
    // a backup may run while the provider restores archived packs, and a
    // round that finds one running waits for the next.
    while is_waiting(&thawed, args) {
        if let Err(e) = pause(args.poll, cancel) {
            thawed = Err(e);
            break;
        }
        let next = match open_exclusive(path, "strata thaw") {
            Ok(repo) => round(repo, &rp, &options, args, &mut totals, cancel),
            Err(e) if is_busy(&e) => {
                say(args, format!("{e}; checking again in {} s", args.poll.as_secs()))?;
                continue;
            }
            Err(e) => Err(e),
        };
        match next {
            Err(e) if failed_rounds < FAILED_ROUNDS_MAX && !is_interrupted(&e) => {
                failed_rounds += 1;
                tracing::warn!("a thaw round failed ({failed_rounds} in a row): {e:#}");
                say(args, format!("{e:#}; checking again in {} s", args.poll.as_secs()))?;
            }
            next => {
                failed_rounds = 0;
                thawed = next;
            }
        }
    }
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
    let report = totals.over_all_rounds(thawed?);
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
            rp.id
        );
    }
    Ok(Status::Ok)
}

/// One round of a thaw on a freshly opened repository, which it closes.
fn round(
    repo: Repository<Exclusive>,
    rp: &RestorePoint,
    options: &ThawOptions,
    args: &ThawArgs<'_>,
    totals: &mut Totals,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let progress = TerminalProgress::bytes("thaw", !args.as_json && !args.plan);
    let report = strata::thaw::thaw(&repo, rp, options, &progress, cancel)?;
    drop(repo);
    totals.add(&report);
    if waits_for_provider(&report, args) {
        say(
            args,
            format!(
                "{} packs ({}) are being restored by the storage provider; checking again in {} s",
                report.restoring_packs,
                human_bytes(report.restoring_bytes),
                args.poll.as_secs()
            ),
        )?;
    }
    Ok(report)
}

fn is_waiting(thawed: &Result<ThawReport>, args: &ThawArgs<'_>) -> bool {
    matches!(thawed, Ok(report) if waits_for_provider(report, args))
}

/// Whether the thaw goes on with another round after `report`'s.
fn waits_for_provider(report: &ThawReport, args: &ThawArgs<'_>) -> bool {
    !report.complete && !args.plan && !args.no_wait
}

/// A line about a waiting thaw, unless the output is JSON.
fn say(args: &ThawArgs<'_>, line: String) -> Result<()> {
    if !args.as_json {
        out!("{line}");
    }
    Ok(())
}

/// What every round of a thaw did: each round's report counts only its
/// own requests and copies (an earlier round's copy is "already thawed").
#[derive(Default)]
struct Totals {
    restore_requests: u64,
    restore_request_bytes: u64,
    packs_fetched: u64,
    bytes_fetched: u64,
}

impl Totals {
    fn add(&mut self, report: &ThawReport) {
        self.restore_requests += report.restore_requests;
        self.restore_request_bytes += report.restore_request_bytes;
        self.packs_fetched += report.packs_fetched;
        self.bytes_fetched += report.bytes_fetched;
    }

    /// The last round's report with the counts of every round.
    fn over_all_rounds(&self, mut last: ThawReport) -> ThawReport {
        let fetched_before = self.packs_fetched - last.packs_fetched;
        last.packs_already_thawed = last.packs_already_thawed.saturating_sub(fetched_before);
        last.restore_requests = self.restore_requests;
        last.restore_request_bytes = self.restore_request_bytes;
        last.packs_fetched = self.packs_fetched;
        last.bytes_fetched = self.bytes_fetched;
        last
    }
}

fn is_interrupted(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<strata::error::Error>(),
        Some(strata::error::Error::Interrupted(_))
    )
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
