//! One function per command: open the repository, call the library,
//! render human text or `--json`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use strata::backup::files::{backup_files, BackupOutcome, FilesBackup};
use strata::backup::vm::{backup_vm, describe_format, VmBackup, VmSource};
use strata::check::check;
use strata::config::RepoConfig;
use strata::forget::{forget, KeepPolicy};
use strata::listing::list_tree;
use strata::cancel::CancelToken;
use strata::progress::NoProgress;
use strata::repair::repair_index;
use strata::repository::{Exclusive, Repository};
use strata::restore::files::{restore_files, FilesRestore};
use strata::restore::vm::{
    load_description, restore_disk_raw, restore_vm, DiskOutput, VmRestore, VmRestoreSummary,
};
use strata::restore_point::RestorePointKind;
use strata::restore_point::{
    format_time, format_time_exact, parse_time, select, time_labels, RestorePoint,
};
use strata::tree::{Node, NodeKind};

use crate::progress_bar::TerminalProgress;
use crate::cli::{
    BackupCommand, Cli, Command, DiskBackupArgs, DiskFormatArg, RepairCommand, RestoreCommand,
    TierCommand,
};

/// Writes a line to standard output. Output is what a person or a script
/// asked for; when the reader goes away (`strata list | head -1`), the
/// error travels up like any other and `main` ends quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// True when `error` is standard output's reader having gone away.
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Clone, Copy)]
pub enum Status {
    Ok = 0,
    Error = 1,
    Partial = 3,
    CheckFailed = 4,
}

fn repo_path(cli_repo: &Option<PathBuf>) -> Result<PathBuf> {
    cli_repo
        .clone()
        .context("no repository given: use --repo DIR or set STRATA_REPO")
}

fn open(path: &Path) -> Result<Repository> {
    Ok(Repository::open(path)?)
}

fn open_exclusive(path: &Path, command: &str) -> Result<Repository<Exclusive>> {
    Ok(Repository::open_exclusive(path, command)?)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    out!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn mb_per_s(bytes: u64, ms: u64) -> f64 {
    bytes as f64 / 1e6 / (ms.max(1) as f64 / 1000.0)
}

pub fn run(cli: Cli, cancel: &CancelToken) -> Result<Status> {
    let repo = repo_path(&cli.repo);
    match cli.command {
        Command::Init { cold, warm_days } => {
            let path = repo?;
            let config = RepoConfig::for_new_repository(warm_days, cold.as_deref())?;
            let id = config.repository_id.clone();
            Repository::init(&path, config)?;
            out!("created repository {id} at {}", path.display());
            Ok(Status::Ok)
        }
        Command::Tier(TierCommand::Status(json)) => {
            let repo = open(&repo?)?;
            let status = strata::tier::status(&repo)?;
            if json.json {
                print_json(&serde_json::to_value(&status)?)?;
            } else {
                out!(
                    "warm: {} in {} packs; {} restore points younger than {} days",
                    human_bytes(status.warm_bytes),
                    status.warm_packs,
                    status.restore_points_warm,
                    status.warm_days
                );
                out!(
                    "cold: {} in {} packs at {}; {} older restore points",
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
            }
            Ok(Status::Ok)
        }
        Command::Tier(TierCommand::Run { warm_days, json }) => {
            let repo = open_exclusive(&repo?, "strata tier run")?;
            let report = strata::tier::run(&repo, warm_days, &NoProgress, cancel)?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
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
            }
            Ok(Status::Ok)
        }
        Command::Thaw {
            restore_point,
            days,
            plan,
            json,
        } => {
            let path = repo?;
            let repo = open_exclusive(&path, "strata thaw")?;
            let rp = repo.resolve(&restore_point)?;
            let progress = TerminalProgress::bytes("thaw", !json.json && !plan);
            let thawed = strata::tier::thaw(&repo, &rp, days, plan, &progress, cancel);
            // The notification runs after the writer lock is released.
            let config = repo.config().clone();
            drop(repo);
            if !plan {
                let notice = strata::notify::ThawNotice {
                    restore_point: &rp,
                    ok: thawed.is_ok(),
                    until: thawed.as_ref().ok().map(|r| r.until.as_str()),
                };
                strata::notify::notify_thaw(&path, &config, &notice);
            }
            let report = thawed?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else if plan {
                out!(
                    "thawing {} would fetch {} cold packs, {}:",
                    rp.id.short(),
                    report.packs.len(),
                    human_bytes(report.bytes)
                );
                for (pack, size) in &report.packs {
                    out!("  {pack} {}", human_bytes(*size));
                }
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
        Command::Backup(BackupCommand::Files {
            paths,
            source,
            tags,
            time,
            json,
        }) => {
            let path = repo?;
            let time = time.as_deref().map(parse_time).transpose()?;
            let repo = open_exclusive(&path, "strata backup files")?;
            let progress = TerminalProgress::bytes("backup", !json.json);
            let outcome = backup_files(
                &repo,
                &FilesBackup {
                    paths,
                    source,
                    tags,
                    time,
                },
                &progress,
                cancel,
            )?;
            render_backup(&outcome, json.json)
        }
        Command::Backup(BackupCommand::Vm { vm, args }) => {
            let source = VmSource::Vm(vm);
            backup_disks(repo?, source, args, "strata backup vm", cancel)
        }
        Command::Backup(BackupCommand::Image {
            disk,
            name,
            format,
            args,
        }) => {
            let format = format.map(Into::into);
            let source = VmSource::Image {
                path: disk,
                name,
                format,
            };
            backup_disks(repo?, source, args, "strata backup image", cancel)
        }
        Command::List(json) => {
            let repo = open(&repo?)?;
            let points = repo.restore_points()?;
            let labels = time_labels(&points);
            if json.json {
                print_json(&serde_json::Value::Array(
                    points.iter().map(rp_json).collect(),
                ))?;
            } else {
                out!(
                    "{:<10} {:<24} {:<16} {:>8} {:>10}  tags",
                    "id", "time", "source", "files", "size"
                );
                for rp in &points {
                    let m = &rp.manifest;
                    out!(
                        "{:<10} {:<24} {:<16} {:>8} {:>10}  {}",
                        rp.id.short(),
                        labels[&rp.id],
                        escape_name(m.source.as_bytes()),
                        m.stats.files,
                        human_bytes(m.stats.bytes_total),
                        escape_name(m.tags.join(",").as_bytes())
                    );
                }
            }
            Ok(Status::Ok)
        }
        Command::Show {
            restore_point,
            json,
        } => {
            let repo = open(&repo?)?;
            let points = repo.restore_points()?;
            let rp = select(&points, &restore_point)?;
            if json.json {
                let mut value = rp_json(rp);
                if rp.manifest.kind == RestorePointKind::Vm {
                    value["vm"] = vm_json(&load_description(&repo, rp)?);
                }
                print_json(&value)?;
            } else {
                let m = &rp.manifest;
                let s = &m.stats;
                out!("restore point {}", rp.id);
                out!("  source       {}", escape_name(m.source.as_bytes()));
                out!("  time         {}", time_labels(&points)[&rp.id]);
                out!("  host         {}", escape_name(m.hostname.as_bytes()));
                out!("  tags         {}", escape_name(m.tags.join(", ").as_bytes()));
                for p in &m.paths {
                    out!("  path         {}", escape_name(p));
                }
                out!(
                    "  parent       {}",
                    m.parent
                        .map(|p| p.short())
                        .unwrap_or_else(|| "none (full backup)".into())
                );
                out!(
                    "  files        {} in {} directories",
                    s.files, s.directories
                );
                out!("  size         {}", human_bytes(s.bytes_total));
                out!("  read         {}", human_bytes(s.bytes_read));
                out!(
                    "  new          {} in {} chunks, {} stored",
                    human_bytes(s.bytes_new),
                    s.chunks_new,
                    human_bytes(s.bytes_stored)
                );
                out!("  duration     {:.1}s", s.duration_ms as f64 / 1000.0);
                if m.kind == RestorePointKind::Vm {
                    let d = load_description(&repo, rp)?;
                    let guest = if d.guest_os.is_empty() {
                        "unknown".to_string()
                    } else {
                        escape_name(d.guest_os.as_bytes())
                    };
                    out!(
                        "  vm           {} ({} vCPU, {} MB, guest {guest})",
                        escape_name(d.name.as_bytes()),
                        d.cpus,
                        d.memory_mb
                    );
                    for disk in &d.disks {
                        out!(
                            "  disk         {} {}: {} capacity, {} allocated, from {}",
                            escape_name(disk.slot.as_bytes()),
                            escape_name(disk.file_name.as_bytes()),
                            human_bytes(disk.capacity),
                            human_bytes(disk.allocated_bytes()),
                            describe_format(disk.source_format)
                        );
                    }
                }
                out!("  missed       {}", m.missed.len());
                for missed in &m.missed {
                    out!(
                        "    {}: {}",
                        escape_name(&missed.path),
                        missed.reason
                    );
                }
            }
            Ok(Status::Ok)
        }
        Command::Ls {
            restore_point,
            path,
            recursive,
        } => {
            let repo = open(&repo?)?;
            let rp = repo.resolve(&restore_point)?;
            if rp.manifest.kind == RestorePointKind::Vm {
                let d = load_description(&repo, &rp)?;
                if !d.vmx.is_empty() {
                    let name = escape_name(d.name.as_bytes());
                    out!("{:<10} {:>14}  {name}.vmx", "config", d.vmx.len());
                }
                for disk in &d.disks {
                    out!(
                        "{:<10} {:>14}  {}",
                        escape_name(disk.slot.as_bytes()),
                        disk.capacity,
                        escape_name(disk.file_name.as_bytes())
                    );
                }
                return Ok(Status::Ok);
            }
            let path = path.unwrap_or_else(|| "/".into());
            let tree_id = match repo.lookup_path(&rp, &path)? {
                None => rp.manifest.root,
                Some(Node {
                    kind: NodeKind::Directory { subtree },
                    ..
                }) => subtree,
                Some(node) => {
                    out!("{}", ls_line(&node, &path));
                    return Ok(Status::Ok);
                }
            };
            // The given path is shown as typed; the names below it are escaped.
            let prefix = path.trim_end_matches('/');
            for entry in list_tree(&repo, tree_id, recursive) {
                let (path, node) = entry?;
                out!("{}", ls_line(&node, &format!("{prefix}/{}", escape_name(&path))));
            }
            Ok(Status::Ok)
        }
        Command::Mount {
            mountpoint,
            allow_other,
            cache_size,
            no_xattrs,
            foreground: _,
        } => {
            let path = repo?;
            let repo = open(&path)?;
            let options = strata::mount::MountOptions {
                allow_other,
                cache_size,
                no_xattrs,
            };
            let shown = mountpoint.display().to_string();
            strata::mount::mount(repo, &mountpoint, &options, cancel, || {
                let _ = writeln!(
                    std::io::stdout(),
                    "mounted {} at {shown}; unmount with Ctrl-C or `strata umount {shown}`",
                    path.display()
                );
            })?;
            Ok(Status::Ok)
        }
        Command::Forget {
            source,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            json,
        } => {
            let repo = open_exclusive(&repo?, "strata forget")?;
            let policy = KeepPolicy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
            };
            let decisions = forget(&repo, source.as_deref(), &policy, dry_run)?;
            if json.json {
                print_json(&serde_json::to_value(&decisions)?)?;
            } else {
                for d in &decisions {
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
            }
            Ok(Status::Ok)
        }
        Command::Prune {
            repack_below,
            dry_run,
            json,
        } => {
            if !(0.0..=1.0).contains(&repack_below) {
                bail!("--repack-below must be between 0 and 1");
            }
            let repo = open_exclusive(&repo?, "strata prune")?;
            let progress = TerminalProgress::bytes("prune", !json.json);
            let report = strata::prune::prune(
                &repo,
                &strata::prune::PruneOptions {
                    repack_below,
                    repack_cold: true,
                    dry_run,
                },
                &progress,
                cancel,
            )?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                out!(
                    "{} {} of {} in {} packs: {} packs deleted, {} repacked into {}, {} chunks removed ({} restore points kept, mark filter {})",
                    if dry_run { "would free" } else { "freed" },
                    human_bytes(report.bytes_freed),
                    human_bytes(report.bytes_before),
                    report.packs_before,
                    report.packs_deleted,
                    report.packs_repacked,
                    report.packs_written,
                    report.chunks_removed,
                    report.restore_points,
                    human_bytes(report.mark_filter_bytes),
                );
            }
            Ok(Status::Ok)
        }
        Command::Umount { mountpoint } => {
            strata::mount::unmount(&mountpoint)?;
            Ok(Status::Ok)
        }
        Command::Stats(json) => {
            let repo = open(&repo?)?;
            stats(&repo, json.json)?;
            Ok(Status::Ok)
        }
        Command::Check { read_data, json } => {
            let repo = open(&repo?)?;
            let progress = TerminalProgress::bytes("check", read_data && !json.json);
            let report = check(&repo, read_data, &progress, cancel)?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
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
                    out!("damaged chunk {} in pack {}: {}", d.chunk, d.pack, d.detail);
                    for a in &d.affected {
                        out!("  affects {a}");
                    }
                }
                if report.is_clean() {
                    out!("no errors found");
                }
            }
            Ok(if report.is_clean() {
                Status::Ok
            } else {
                Status::CheckFailed
            })
        }
        Command::Repair(RepairCommand::Index(json)) => {
            let mut repo = Repository::open_for_repair(&repo?, "strata repair index")?;
            let report = repair_index(&mut repo, &NoProgress, cancel)?;
            if json.json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                for line in report.lines() {
                    out!("{line}");
                }
            }
            Ok(if report.is_complete() {
                Status::Ok
            } else {
                Status::Partial
            })
        }
        Command::Restore(RestoreCommand::Vm {
            restore_point,
            to,
            name,
            disk_format,
            json,
        }) => {
            let repo = open(&repo?)?;
            let rp = repo.resolve(&restore_point)?;
            let progress = TerminalProgress::bytes("restore", !json.json);
            let request = VmRestore {
                target_dir: to,
                name,
                disk_output: disk_output(disk_format),
                disk: None,
            };
            let summary = restore_vm(&repo, &rp, &request, &progress, cancel)?;
            render_vm_restore(&summary, json.json)?;
            Ok(Status::Ok)
        }
        Command::Restore(RestoreCommand::Disk {
            restore_point,
            disk,
            to,
            raw_to,
            name,
            disk_format,
            json,
        }) => {
            let repo = open(&repo?)?;
            let rp = repo.resolve(&restore_point)?;
            let progress = TerminalProgress::bytes("restore", !json.json);
            let summary = match (to, raw_to) {
                (_, Some(path)) => restore_disk_raw(&repo, &rp, &disk, &path, &progress, cancel)?,
                (Some(to), None) => {
                    let request = VmRestore {
                        target_dir: to,
                        name,
                        disk_output: disk_output(disk_format),
                        disk: Some(disk),
                    };
                    restore_vm(&repo, &rp, &request, &progress, cancel)?
                }
                (None, None) => bail!("give --to DIR or --raw-to PATH"),
            };
            render_vm_restore(&summary, json.json)?;
            Ok(Status::Ok)
        }
        Command::Restore(RestoreCommand::Files {
            restore_point,
            paths,
            to,
            json,
        }) => {
            let repo = open(&repo?)?;
            let rp = repo.resolve(&restore_point)?;
            if rp.manifest.kind == RestorePointKind::Vm {
                bail!(
                    "restore point {} is a VM; use `strata restore vm` or `strata restore disk`",
                    rp.id.short()
                );
            }
            let progress = TerminalProgress::bytes("restore", !json.json);
            let summary = restore_files(
                &repo,
                &rp,
                &FilesRestore {
                    paths,
                    target: to.clone(),
                },
                &progress,
                cancel,
            )?;
            if json.json {
                print_json(&serde_json::to_value(&summary)?)?;
            } else {
                out!(
                    "restored {} files, {} directories, {} other entries ({}) to {} in {:.1}s ({:.0} MB/s)",
                    summary.files,
                    summary.directories,
                    summary.other,
                    human_bytes(summary.bytes_written),
                    to.display(),
                    summary.duration_ms as f64 / 1000.0,
                    mb_per_s(summary.bytes_written, summary.duration_ms),
                );
                for w in &summary.warnings {
                    eprintln!("warning: {}", escape_name(w.as_bytes()));
                }
                for (path, e) in &summary.failed {
                    eprintln!(
                        "failed {}: {}",
                        escape_name(path.as_bytes()),
                        escape_name(e.as_bytes())
                    );
                }
            }
            if !summary.failed.is_empty() {
                eprintln!(
                    "strata: restore is partial: {} files failed",
                    summary.failed.len()
                );
                return Ok(Status::Partial);
            }
            Ok(Status::Ok)
        }
    }
}

fn disk_output(arg: DiskFormatArg) -> DiskOutput {
    match arg {
        DiskFormatArg::Vmdk => DiskOutput::Vmdk,
        DiskFormatArg::Raw => DiskOutput::Raw,
    }
}

fn backup_disks(
    path: PathBuf,
    source: VmSource,
    args: DiskBackupArgs,
    command: &str,
    cancel: &CancelToken,
) -> Result<Status> {
    let time = args.time.as_deref().map(parse_time).transpose()?;
    let mut changed_extents = Vec::new();
    for spec in &args.changed_extents {
        let (disk, file) = spec
            .split_once('=')
            .with_context(|| format!("--changed-extents {spec:?}: expected DISK=FILE"))?;
        changed_extents.push((disk.to_string(), PathBuf::from(file)));
    }
    let repo = open_exclusive(&path, command)?;
    let progress = TerminalProgress::bytes("backup", !args.json.json);
    let outcome = backup_vm(
        &repo,
        &VmBackup {
            source,
            time,
            full: args.full,
            changed_extents,
        },
        &progress,
        cancel,
    )?;
    render_backup(&outcome, args.json.json)
}

fn render_backup(outcome: &BackupOutcome, as_json: bool) -> Result<Status> {
    let m = &outcome.manifest;
    let s = &m.stats;
    if as_json {
        print_json(&json!({
            "restore_point": outcome.id.to_string(),
            "kind": m.kind,
            "source": m.source,
            "time": format_time_exact(m.time),
            "files": s.files,
            "directories": s.directories,
            "bytes_total": s.bytes_total,
            "bytes_read": s.bytes_read,
            "bytes_new": s.bytes_new,
            "bytes_stored": s.bytes_stored,
            "chunks_new": s.chunks_new,
            "duration_ms": s.duration_ms,
            "missed": m.missed,
        }))?;
    } else {
        let what = match m.kind {
            RestorePointKind::Files => format!("{} files", s.files),
            RestorePointKind::Vm => format!("{} disks", s.files),
        };
        out!(
            "restore point {} of {} at {}: {} ({}), {} read, {} new, {} stored, {:.1}s",
            outcome.id.short(),
            m.source,
            format_time_exact(m.time),
            what,
            human_bytes(s.bytes_total),
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_new),
            human_bytes(s.bytes_stored),
            s.duration_ms as f64 / 1000.0,
        );
        for missed in &m.missed {
            eprintln!(
                "missed {}: {}",
                escape_name(&missed.path),
                missed.reason
            );
        }
    }
    if !m.missed.is_empty() {
        eprintln!(
            "strata: backup is partial: {} entries could not be read (they are retried next time)",
            m.missed.len()
        );
        return Ok(Status::Partial);
    }
    Ok(Status::Ok)
}

fn render_vm_restore(summary: &VmRestoreSummary, as_json: bool) -> Result<()> {
    if as_json {
        print_json(&serde_json::to_value(summary).expect("summary serializes"))?;
    } else {
        out!(
            "restored {} to {} ({}) in {:.1}s ({:.0} MB/s)",
            summary.name,
            summary.folder.display(),
            human_bytes(summary.bytes_written),
            summary.duration_ms as f64 / 1000.0,
            mb_per_s(summary.bytes_written, summary.duration_ms),
        );
        for file in &summary.files {
            out!("  {file}");
        }
    }
    Ok(())
}

fn rp_json(rp: &RestorePoint) -> serde_json::Value {
    let m = &rp.manifest;
    json!({
        "id": rp.id.to_string(),
        "kind": m.kind,
        "source": m.source,
        "time": format_time_exact(m.time),
        "host": m.hostname,
        "tags": m.tags,
        "paths": m.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
        "parent": m.parent.map(|p| p.to_string()),
        "stats": m.stats,
        "missed": m.missed,
    })
}

/// A VM restore point's machine and disks, as `show` prints them; the
/// disk names are what `restore disk` takes.
fn vm_json(d: &strata::vm::description::VmDescription) -> serde_json::Value {
    json!({
        "name": d.name,
        "cpus": d.cpus,
        "memory_mb": d.memory_mb,
        "guest_os": d.guest_os,
        "disks": d.disks.iter().map(|disk| json!({
            "slot": disk.slot,
            "controller": disk.slot.split_once(':').map_or(disk.slot.as_str(), |(c, _)| c),
            "file_name": disk.file_name,
            "adapter_type": disk.adapter_type,
            "capacity": disk.capacity,
            "allocated": disk.allocated_bytes(),
            "source_format": describe_format(disk.source_format),
        })).collect::<Vec<_>>(),
    })
}

fn mode_string(node: &Node) -> String {
    let mut s = String::with_capacity(10);
    s.push(node.kind.letter());
    for shift in [6, 3, 0] {
        let bits = (node.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A name from a restore point, made safe for a terminal as `ls -b` does:
/// control characters (escape sequences, newlines), backslashes, bytes
/// that are not UTF-8 and characters that reorder text become escapes, so
/// a hostile name can neither rewrite the screen nor pass for another.
fn escape_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
                '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

fn ls_line(node: &Node, path: &str) -> String {
    let owner = if node.user.is_empty() {
        node.uid.to_string()
    } else {
        escape_name(&node.user)
    };
    let group = if node.group.is_empty() {
        node.gid.to_string()
    } else {
        escape_name(&node.group)
    };
    let mut line = format!(
        "{} {:>3} {:<8} {:<8} {:>12} {} {}",
        mode_string(node),
        node.nlink,
        owner,
        group,
        node.size,
        format_time(node.mtime),
        path
    );
    if let NodeKind::Symlink { target } = &node.kind {
        line.push_str(" -> ");
        line.push_str(&escape_name(target));
    }
    line
}

fn stats(repo: &Repository, as_json: bool) -> Result<()> {
    let s = strata::stats::stats(repo)?;
    if as_json {
        print_json(&serde_json::to_value(&s)?)?;
        return Ok(());
    }
    out!("restore points   {}", s.restore_points);
    out!("logical data     {}", human_bytes(s.logical_bytes));
    out!(
        "unique data      {} in {} chunks (dedup {:.2}x)",
        human_bytes(s.unique_bytes),
        s.chunks,
        s.dedup_ratio
    );
    out!(
        "stored           {} (compression {:.2}x)",
        human_bytes(s.stored_bytes),
        s.compression_ratio
    );
    out!(
        "packs            {} totalling {}",
        s.packs,
        human_bytes(s.pack_bytes)
    );
    Ok(())
}
