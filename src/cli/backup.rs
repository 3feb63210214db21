//! `strata backup files`, `backup vm`, `backup image` and `backup nbd`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use strata::backup::file_cache::FileCache;
use strata::backup::files::{backup_files, default_source, BackupOutcome, FilesBackup};
use strata::backup::vm::{backup_vm, VmBackup, VmSource};
use strata::nbd::NbdUri;
use strata::cancel::CancelToken;
use strata::restore_point::RestorePointKind;
use strata::selector::{format_time_exact, parse_time};
use strata::reader::RepositoryReader as _;
use strata::remote::client::with_remote_session;
use strata::session::{with_local_session, BackupSession};

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
            let progress = TerminalProgress::bytes("backup", !json.json);
            let request = FilesBackup {
                paths,
                source,
                tags,
                time,
            };
            let source = request.source.clone().unwrap_or_else(default_source);
            let (outcome, sent) = in_session(path, "strata backup files", |session, cache_dir| {
                let file_cache = FileCache::open(&cache_dir(&source), session.settings().name_key)?;
                backup_files(session, &file_cache, &request, &progress, cancel)
            })?;
            render(&outcome, sent, json.json)
        }
        BackupCommand::Vm { vm, args } => {
            backup_disks(path, VmSource::Vm(vm), Bitmaps::default(), args, "strata backup vm", cancel)
        }
        BackupCommand::Nbd {
            uri,
            name,
            disk_name,
            disks,
            bitmap,
            next_bitmap,
            args,
        } => {
            let mut named = Vec::new();
            if let Some(uri) = uri {
                named.push((disk_name, NbdUri::parse(&uri)?));
            }
            for spec in &disks {
                let (disk, uri) = spec
                    .split_once('=')
                    .with_context(|| format!("--disk {spec:?}: expected NAME=URI"))?;
                named.push((disk.to_string(), NbdUri::parse(uri)?));
            }
            let source = VmSource::Nbd { name, disks: named };
            let bitmaps = Bitmaps { read: bitmap, next: next_bitmap };
            backup_disks(path, source, bitmaps, args, "strata backup nbd", cancel)
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
            backup_disks(path, source, Bitmaps::default(), args, "strata backup image", cancel)
        }
    }
}

/// The QEMU dirty bitmaps of an NBD backup: the one read, and the one
/// that started with it.
#[derive(Default)]
struct Bitmaps {
    read: Option<String>,
    next: Option<String>,
}

fn backup_disks(
    path: &Path,
    source: VmSource,
    bitmaps: Bitmaps,
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
    let progress = TerminalProgress::bytes("backup", !args.json.json);
    let request = VmBackup {
        source,
        time,
        full: args.full,
        changed_extents,
        bitmap: bitmaps.read,
        next_bitmap: bitmaps.next,
        tags: args.tags,
    };
    let (outcome, sent) = in_session(path, command, |session, _| {
        backup_vm(session, &request, &progress, cancel)
    })?;
    render(&outcome, sent, args.json.json)
}

/// Runs `work` in a backup session on the repository at `path`: in this
/// process, or through the server `path` names. `work` also gets where
/// this machine keeps its file cache of a source of the repository.
/// Returns what `work` returned and, through a server, the bytes sent to
/// it.
fn in_session<R>(
    path: &Path,
    command: &str,
    work: impl FnOnce(&dyn BackupSession, &dyn Fn(&str) -> PathBuf) -> strata::Result<R>,
) -> Result<(R, Option<u64>)> {
    match super::remote::location(path)? {
        None => {
            // One writer at a time: one cache for every source.
            let repo = open_exclusive(path, command)?;
            let cache_dir = repo.state().file_cache_dir();
            let outcome = with_local_session(&repo, |session| work(session, &|_| cache_dir.clone()))?;
            Ok((outcome, None))
        }
        Some(location) => {
            let repo = super::remote::open(location)?;
            let base = match super::STATE_DIR.get().cloned().flatten() {
                Some(state) => state.join("file-cache"),
                None => super::remote::cache_root()?
                    .join(&repo.config().repository_id)
                    .join("file-cache"),
            };
            // Backups of different sources run at once on one mover: each
            // source has a cache of its own (named by a hash, not by the
            // source's name).
            let per_source = |source: &str| base.join(&blake3::hash(source.as_bytes()).to_hex()[..32]);
            let outcome = with_remote_session(&repo, |session| work(session, &per_source))?;
            Ok((outcome, Some(repo.bytes_sent())))
        }
    }
}

fn render(outcome: &BackupOutcome, bytes_sent: Option<u64>, as_json: bool) -> Result<Status> {
    let m = &outcome.manifest;
    let s = &m.stats;
    if as_json {
        print_json(&json!({
            "bytes_sent": bytes_sent,
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
            "disks": outcome.disks,
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
        for disk in &outcome.disks {
            if let Some(why) = &disk.full_because {
                eprintln!("strata: disk {} was read in full: {why}", disk.disk);
            }
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
