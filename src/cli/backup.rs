//! `strata backup files`, `backup vm` and `backup image`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use strata::backup::file_cache::FileCache;
use strata::backup::files::{backup_files, BackupOutcome, FilesBackup};
use strata::backup::vm::{backup_vm, VmBackup, VmSource};
use strata::cancel::CancelToken;
use strata::restore_point::RestorePointKind;
use strata::selector::{format_time_exact, parse_time};
use strata::session::with_local_session;

use super::args::{BackupCommand, DiskBackupArgs};
use super::progress::TerminalProgress;
use super::render::{escape_name, human_bytes, print_json};
use super::{open_exclusive, Status};

pub fn run(path: &Path, command: BackupCommand, cancel: &CancelToken) -> Result<Status> {
    match command {
        BackupCommand::Files {
            paths,
            source,
            tags,
            time,
            json,
        } => {
            let time = time.as_deref().map(parse_time).transpose()?;
            let repo = open_exclusive(path, "strata backup files")?;
            let progress = TerminalProgress::bytes("backup", !json.json);
            let request = FilesBackup {
                paths,
                source,
                tags,
                time,
            };
            let file_cache = FileCache::open(&repo.state().file_cache_dir(), repo.protection().name_key())?;
            let outcome = with_local_session(&repo, |session| {
                backup_files(session, &file_cache, &request, &progress, cancel)
            })?;
            render(&outcome, json.json)
        }
        BackupCommand::Vm { vm, args } => {
            backup_disks(path, VmSource::Vm(vm), args, "strata backup vm", cancel)
        }
        BackupCommand::Image {
            disk,
            name,
            format,
            args,
        } => {
            let source = VmSource::Image {
                path: disk,
                name,
                format: format.map(Into::into),
            };
            backup_disks(path, source, args, "strata backup image", cancel)
        }
    }
}

fn backup_disks(
    path: &Path,
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
    let repo = open_exclusive(path, command)?;
    let progress = TerminalProgress::bytes("backup", !args.json.json);
    let request = VmBackup {
        source,
        time,
        full: args.full,
        changed_extents,
    };
    let outcome = with_local_session(&repo, |session| {
        backup_vm(session, &request, &progress, cancel)
    })?;
    render(&outcome, args.json.json)
}

fn render(outcome: &BackupOutcome, as_json: bool) -> Result<Status> {
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
            eprintln!("missed {}: {}", escape_name(&missed.path), missed.reason);
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
