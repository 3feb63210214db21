//! `strata thaw`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::reader::RepositoryReader;
use strata::remote::client::maintenance::data_chunks;
use strata::remote::client::Maintenance;
use strata::storage::Location;
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
    match super::remote::location(path)? {
        None => {
            // The first round resolves the restore point; later ones keep
            // it, so that a backup made while the thaw waits cannot change
            // what `SOURCE@latest` names.
            let repo = open_exclusive(path, "strata thaw")?;
            let rp = repo.resolve(args.restore_point)?;
            let config = repo.config().clone();
            let trusted_root = match repo.location() {
                Location::Directory(root) => Some(root.clone()),
                _ => None,
            };
            let mut first = Some(repo);
            let mut next_round = |cancel: &CancelToken| -> Result<ThawReport> {
                // Each round holds the writer lock only while it requests
                // and copies: a backup may run while the provider restores
                // archived packs.
                let repo = match first.take() {
                    Some(repo) => repo,
                    None => open_exclusive(path, "strata thaw")?,
                };
                let progress = TerminalProgress::bytes("thaw", !args.as_json && !args.plan);
                Ok(strata::thaw::thaw(&repo, &rp, &options, &progress, cancel)?)
            };
            let thawed = rounds(&mut next_round, args, cancel);
            finish(&rp, &config, trusted_root.as_deref(), thawed, args)
        }
        Some(location) => {
            // This client walks the restore point (it holds the key) and
            // seals the thaw records; each round the server requests and
            // copies under the maintenance lease.
            let repo = super::remote::open(location)?;
            let rp = repo.resolve(args.restore_point)?;
            let chunks = data_chunks(&repo, &rp, cancel)?;
            let mut next_round = |cancel: &CancelToken| -> Result<ThawReport> {
                let lease = Maintenance::begin(&repo, args.poll, cancel)?;
                Ok(lease.thaw(&rp.id, &chunks, &options, cancel)?)
            };
            let thawed = rounds(&mut next_round, args, cancel);
            finish(&rp, repo.config(), None, thawed, args)
        }
    }
}

/// Runs rounds until the thaw is complete, planned, or not to be waited
/// for; returns the last round's report with the counts of every round.
fn rounds(
    next_round: &mut dyn FnMut(&CancelToken) -> Result<ThawReport>,
    args: &ThawArgs<'_>,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let mut totals = Totals::default();
    let mut thawed = round(next_round, args, &mut totals, cancel);
    let mut failed_rounds = 0;
    while is_waiting(&thawed, args) {
        if let Err(e) = pause(args.poll, cancel) {
            thawed = Err(e);
            break;
        }
        match round(next_round, args, &mut totals, cancel) {
            // A backup (or an admin) holds the repository: check later.
            Err(e) if is_busy(&e) => {
                say(args, format!("{e}; checking again in {} s", args.poll.as_secs()))?;
            }
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
    thawed.map(|last| totals.over_all_rounds(last))
}

/// Notifies, once the thaw is finished or has failed, and reports.
fn finish(
    rp: &RestorePoint,
    config: &strata::config::RepoConfig,
    trusted_root: Option<&Path>,
    thawed: Result<ThawReport>,
    args: &ThawArgs<'_>,
) -> Result<Status> {
    // The notification runs after the writer lock is released, once the
    // thaw is finished or has failed.
    let finished = thawed.as_ref().map_or(true, |report| report.complete);
    if !args.plan && finished {
        let notice = strata::notify::ThawNotice {
            restore_point: rp,
            ok: thawed.is_ok(),
            until: thawed.as_ref().ok().map(|r| r.until.as_str()),
        };
        let notifier = match args.notify {
            Some(argv) => strata::notify::Notifier::Given(argv),
            None => strata::notify::Notifier::Configured,
        };
        strata::notify::notify_thaw(trusted_root, config, &notice, notifier);
    }
    let report = thawed?;
    if args.as_json {
        print_json(&serde_json::to_value(&report)?)?;
    } else if args.plan {
        render_plan(rp, &report)?;
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

/// One round of a thaw.
fn round(
    next_round: &mut dyn FnMut(&CancelToken) -> Result<ThawReport>,
    args: &ThawArgs<'_>,
    totals: &mut Totals,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let report = next_round(cancel)?;
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
