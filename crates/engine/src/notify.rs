//! The thaw notification: an administrator's program, told that a thaw
//! finished.
//!
//! It runs after the repository is closed (a slow or hanging notifier must
//! not hold the writer lock and block every backup), from an argv in
//! `config.json` (never a shell command line), with a timeout after which
//! it and everything it started are killed. Whoever can write
//! `config.json` chooses a program that `strata thaw` runs, often as
//! root; so the program runs only when `config.json` belongs to root or to
//! the user running `thaw`, and no one else may write it.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::config::{NotifyCommand, RepoConfig};
use crate::error::{Error, IoContext, Result};
use crate::restore_point::RestorePoint;

/// What the notification is told.
pub struct ThawNotice<'a> {
    pub restore_point: &'a RestorePoint,
    pub ok: bool,
    /// Until when the data is readable; `None` when the thaw failed early.
    pub until: Option<&'a str>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Who chose the program a notification runs.
pub enum Notifier<'a> {
    /// The person running `thaw` (`--notify`): trusted as they are.
    Given(&'a [String]),
    /// `tiers.notify_command` in the repository's configuration: run only
    /// from a local `config.json` that no one else may write. A bucket's
    /// configuration is never trusted to choose a program: whoever may
    /// write the bucket would run code on every machine that thaws.
    Configured,
}

/// Runs the notification, if there is one. Its failure is logged, never
/// fatal: the thaw itself has finished either way.
/// `trusted_root` is the directory of a repository this process opened,
/// whose `config.json` may name the program to run; a repository in a
/// bucket or behind a server has none (its configuration is not trusted).
pub fn notify_thaw(trusted_root: Option<&Path>, config: &RepoConfig, notice: &ThawNotice, notifier: Notifier<'_>) {
    let result = if notice.ok { "ok" } else { "failed" };
    tracing::info!(restore_point = %notice.restore_point.id.short(), result, until = notice.until.unwrap_or(""), "thaw finished");
    let timeout = config
        .tiers
        .notify_timeout_secs
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let argv: Vec<String> = match notifier {
        Notifier::Given(argv) => argv.to_vec(),
        Notifier::Configured => {
            let Some(command) = &config.tiers.notify_command else {
                return;
            };
            if let NotifyCommand::Program(program) = command {
                if program.chars().any(char::is_whitespace) {
                    tracing::warn!(
                        command = %program,
                        "thaw notification not run: tiers.notify_command is a shell command line; \
                         give it as an argv array, e.g. [\"/usr/local/bin/notify\", \"--thaw\"]"
                    );
                    return;
                }
            }
            let Some(repo_root) = trusted_root else {
                tracing::warn!(
                    "thaw notification not run: tiers.notify_command of a repository in a bucket \
                     or behind a server is not trusted; give the program with `strata thaw --notify PROGRAM`"
                );
                return;
            };
            if let Err(e) = check_config_owner(&RepoConfig::path(repo_root)) {
                tracing::warn!(command = ?command.argv(), error = %e, "thaw notification not run");
                return;
            }
            command.argv()
        }
    };
    let outcome = run_notifier(&argv, timeout, notice, result);
    match outcome {
        Ok(status) if status.success() => {}
        Ok(status) => {
            tracing::warn!(command = ?argv, %status, "thaw notification failed")
        }
        Err(e) => tracing::warn!(command = ?argv, error = %e, "thaw notification not run"),
    }
}

fn run_notifier(argv: &[String], timeout: Duration, notice: &ThawNotice, result: &str) -> Result<ExitStatus> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::InvalidInput("the thaw notification's command is empty".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("STRATA_RESTORE_POINT", notice.restore_point.id.to_string())
        .env("STRATA_SOURCE", &notice.restore_point.manifest.source)
        .env("STRATA_THAW_RESULT", result)
        .env("STRATA_THAW_UNTIL", notice.until.unwrap_or(""))
        .stdin(std::process::Stdio::null())
        // Standard output belongs to strata's own report (`--json`).
        .stdout(stderr_for_child())
        // Its own process group, so that a timeout ends its children too.
        .process_group(0);
    run_with_timeout(&mut cmd, program, timeout)
}

/// Refuses a `config.json` that someone other than root or this user could
/// have written.
fn check_config_owner(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).at("inspecting", path)?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(Error::InvalidInput(format!(
            "{} belongs to uid {}, not to root or the user running strata (uid {euid})",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Error::InvalidInput(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    // Whoever may write the directory may replace the file.
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_meta = std::fs::metadata(dir).at("inspecting", dir)?;
    if dir_meta.mode() & 0o022 != 0 {
        return Err(Error::InvalidInput(format!(
            "the repository directory {} is writable by group or others (mode {:o})",
            dir.display(),
            dir_meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn stderr_for_child() -> std::process::Stdio {
    use std::os::fd::AsFd;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from)
}

fn run_with_timeout(cmd: &mut Command, program: &str, timeout: Duration) -> Result<ExitStatus> {
    let mut child = cmd.spawn().at("running", program)?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().at("waiting for", program)? {
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(Error::InvalidInput(format!(
                "{program} did not finish within {} s and was killed",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
