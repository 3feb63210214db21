//! The command line: [`args`] parses, [`run`] hands each command to its
//! module, and each command module resolves its arguments, calls one
//! library function and renders the result as human text or `--json`.
//! Terminal concerns stay here: progress bars ([`progress`]) and the
//! signals that cancel a job ([`signals`]).

/// Writes a line to standard output. Output is what a person or a script
/// asked for; when the reader goes away (`strata list | head -1`), the
/// error travels up like any other and `main` ends quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout(),
            format_args!("{}\n", format_args!($($arg)*)),
        )?
    };
}

pub mod args;
mod backup;
mod check;
mod forget;
mod guest;
mod init;
mod key;
mod list;
mod ls;
mod mount;
mod pool;
pub mod password;
mod progress;
mod prune;
mod remote;
mod render;
mod repair;
mod restore;
mod server;
mod show;
pub mod signals;
mod stats;
mod thaw;
mod tier;

use std::path::Path;

use anyhow::{Context, Result};
use strata::cancel::CancelToken;
use strata::repository::{Exclusive, Repository};

use args::{Cli, Command};

/// The exit status; see `main`.
#[derive(Clone, Copy)]
pub enum Status {
    Ok = 0,
    Error = 1,
    Partial = 3,
    CheckFailed = 4,
}

/// True when `error` is standard output's reader having gone away.
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn run(cli: Cli, cancel: &CancelToken) -> Result<Status> {
    password::install(password::PasswordOptions {
        file: cli.password_file.clone(),
        command: cli.password_command.clone(),
    });
    remote::install(cli.remote.clone());
    let _ = STATE_DIR.set(cli.state.clone());
    let _ = READ_CACHE_BYTES.set(cli.read_cache_mib.saturating_mul(1 << 20));
    let repo = cli
        .repo
        .context("no repository given: use --repo DIR or set STRATA_REPO");
    if let (Ok(path), Some(name)) = (&repo, local_only(&cli.command)) {
        remote::refuse(path, name)?;
    }
    match cli.command {
        Command::Server(args) => server::run(args, cli.remote.limit_upload, cancel),
        Command::Coordinator(args) => pool::coordinator(args, cancel),
        Command::Mover(args) => pool::mover(args, repo, cancel),
        Command::Source(command) => pool::source(command),
        Command::BackupNow { sources, db, json } => pool::backup_now(&db, &sources, json.json),
        Command::Job(command) => pool::job(command),
        Command::Policy(command) => pool::policy(command),
        Command::Report { day, db, json } => pool::report(&db, day, json.json),
        Command::Limit { scope, name, max_tasks, db } => pool::limit(&db, &scope, &name, max_tasks),
        Command::Init {
            cold,
            cold_storage_class,
            warm_days,
            compression_level,
            encryption,
            kdf,
        } => init::run(
            &repo?,
            &init::InitArgs {
                cold: cold.as_deref(),
                cold_storage_class: cold_storage_class.as_deref(),
                warm_days,
                compression_level,
                encryption,
                kdf,
            },
        ),
        Command::Key(command) => key::run(&repo?, command),
        Command::Unlock => unlock(&repo?),
        Command::Backup(command) => backup::run(&repo?, command, cancel),
        Command::List(json) => list::run(&repo?, json.json),
        Command::Show {
            restore_point,
            json,
        } => show::run(&repo?, &restore_point, json.json),
        Command::Ls {
            restore_point,
            path,
            recursive,
        } => ls::run(&repo?, &restore_point, path, recursive),
        Command::Stats(json) => stats::run(&repo?, json.json),
        Command::Check { read_data, json } => check::run(&repo?, read_data, json.json, cancel),
        Command::Repair(command) => repair::run(&repo?, command, cancel),
        Command::Restore(command) => restore::run(&repo?, command, cancel),
        Command::Tier(command) => tier::run(&repo?, command, cancel),
        Command::Thaw {
            restore_point,
            days,
            plan,
            no_wait,
            poll_seconds,
            expedited,
            notify,
            notify_arg,
            json,
        } => thaw::run(
            &repo?,
            &thaw::ThawArgs {
                restore_point: &restore_point,
                days,
                plan,
                no_wait,
                poll: std::time::Duration::from_secs(poll_seconds),
                priority: if expedited {
                    strata::storage::RestorePriority::Expedited
                } else {
                    strata::storage::RestorePriority::Standard
                },
                notify: notify
                    .map(|program| [vec![program], notify_arg].concat())
                    .as_deref(),
                as_json: json.json,
            },
            cancel,
        ),
        Command::Forget(args) => forget::run(&repo?, &args, cancel),
        Command::Prune {
            repack_below,
            dry_run,
            json,
        } => prune::run(repo, repack_below, dry_run, json.json, cancel),
        Command::Mount {
            mountpoint,
            allow_other,
            cache_size,
            no_xattrs,
            foreground: _,
        } => {
            let options = strata::mount::MountOptions {
                allow_other,
                cache_size,
                no_xattrs,
            };
            mount::run(&repo?, &mountpoint, &options, cancel)
        }
        Command::Umount { mountpoint } => mount::umount(&mountpoint),
    }
}

/// `STRATA_COLD_DELAY_MS` makes every cold-tier request slow, to rehearse
/// an archival backend (see the README's tiering section);
/// `STRATA_BUCKET_RETRIES` sets how often a bucket request is retried.
fn open_options() -> strata::repository::OpenOptions {
    fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }
    strata::repository::OpenOptions {
        cold_delay: number("STRATA_COLD_DELAY_MS").map(std::time::Duration::from_millis),
        password: Some(password::source()),
        state_dir: STATE_DIR.get().cloned().flatten(),
        read_cache_bytes: READ_CACHE_BYTES.get().copied(),
        access: None,
        bucket_retries: number("STRATA_BUCKET_RETRIES"),
        key_withheld: false,
    }
}

/// `--read-cache-mib`, in bytes.
static READ_CACHE_BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// `--state`, for every command's open.
static STATE_DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// `strata unlock`: removes the lock object of a repository in a bucket.
fn unlock(path: &Path) -> Result<Status> {
    let location = strata::site::location_of(path)?;
    if location.is_directory() {
        out!("{} is a directory: its writer lock is an flock, which the kernel releases when its holder exits; nothing to break", path.display());
        return Ok(Status::Ok);
    }
    let store = strata::site::reading_store(&location, &open_options())?;
    match strata::lock::ObjectLock::break_lock(store.as_ref())? {
        Some(holder) => out!("removed the lock of {holder} from {location}"),
        None => out!("{location} holds no lock"),
    }
    Ok(Status::Ok)
}

/// The commands that need the repository in this process (they hold its
/// writer lock or read its index): not available through a server.
fn local_only(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Init { .. } => "strata init",
        Command::Unlock => "strata unlock",
        Command::Repair(_) => "strata repair",
        _ => return None,
    })
}

fn open(path: &Path) -> Result<Repository> {
    Ok(Repository::open_with(path, &open_options())?)
}

fn open_exclusive(path: &Path, command: &str) -> Result<Repository<Exclusive>> {
    Ok(Repository::open_exclusive_with(
        path,
        command,
        &open_options(),
    )?)
}
