//! The guest files of VM restore points on the command line: the volumes
//! `strata show` lists under each disk, and `strata ls VM_RP
//! <disk>/<volume>/<path>`.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use strata::chunk_cache::ChunkCache;
use strata::guest::fs::{FileKind, GuestFs, NodeId, Stat};
use strata::guest::vm::{GuestView, COMMAND_CACHE_BYTES};
use strata::reader::RepositoryReader;
use strata::restore::vm::load_description;
use strata::restore_point::RestorePoint;
use strata::selector::format_time;
use strata::tree::Timestamp;

use super::render::{escape_name, human_bytes};

pub fn view(repo: &Arc<dyn RepositoryReader>, rp: &RestorePoint) -> Result<GuestView> {
    let description = load_description(repo.as_ref(), rp)?;
    Ok(GuestView::new(Arc::clone(repo), &description, Arc::new(ChunkCache::new(COMMAND_CACHE_BYTES))))
}

/// Each disk's volumes: name, file system, label, size, or why it shows
/// no files.
pub fn volumes_json(view: &GuestView) -> serde_json::Value {
    json!(view
        .disks
        .iter()
        .map(|disk| json!({
            "disk": disk.name,
            "volumes": disk.volumes().iter().map(|v| {
                let (filesystem, label, problem) = describe(disk, v);
                json!({
                    "name": v.name,
                    "size": v.len(),
                    "table": v.source,
                    "filesystem": filesystem,
                    "label": label,
                    "problem": problem,
                })
            }).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}

/// The file system's name and label, or why it shows nothing (opening it
/// checks its superblock).
fn describe(disk: &strata::guest::vm::GuestDisk, v: &strata::guest::volume::Volume) -> (String, Option<String>, Option<String>) {
    if let Some(problem) = &v.problem {
        return (v.content.name().to_string(), None, Some(problem.clone()));
    }
    match disk.open(&v.name) {
        Ok(fs) => {
            let (content, label) = fs.describe();
            (content.name().to_string(), label, None)
        }
        Err(e) => (v.content.name().to_string(), None, Some(e.to_string())),
    }
}

pub fn render_volumes(view: &GuestView) -> Result<()> {
    for disk in &view.disks {
        for v in disk.volumes() {
            let (filesystem, label, problem) = describe(disk, v);
            let label = label.map(|l| format!(" \"{}\"", escape_name(l.as_bytes()))).unwrap_or_default();
            match problem {
                None => out!(
                    "  volume       {}/{}: {filesystem}{label}, {}",
                    escape_name(disk.name.as_bytes()),
                    escape_name(v.name.as_bytes()),
                    human_bytes(v.len())
                ),
                Some(why) => out!(
                    "  volume       {}/{}: {}, no files: {}",
                    escape_name(disk.name.as_bytes()),
                    escape_name(v.name.as_bytes()),
                    human_bytes(v.len()),
                    escape_name(why.as_bytes())
                ),
            }
        }
    }
    Ok(())
}

/// `strata ls VM_RP <disk>/<volume>/<path> [-R]`.
pub fn ls(view: &GuestView, guest_path: &str, recursive: bool) -> Result<()> {
    let (fs, node, _) = view
        .resolve(guest_path)
        .map_err(|e| anyhow::anyhow!("guest path {guest_path}: {e}"))?;
    let shown = guest_path.trim_end_matches('/');
    let stat = fs.stat(node)?;
    if stat.kind != FileKind::Dir {
        out!("{}", line(fs.as_ref(), &stat, shown));
        return Ok(());
    }
    list(fs.as_ref(), node, shown, recursive, &mut vec![node])
}

fn list(fs: &dyn GuestFs, dir: NodeId, shown: &str, recursive: bool, above: &mut Vec<NodeId>) -> Result<()> {
    let mut entries = fs.read_dir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in entries {
        let path = format!("{shown}/{}", escape_name(&entry.name));
        let stat = match fs.stat(entry.node) {
            Ok(stat) => stat,
            Err(e) => {
                eprintln!("strata: {path}: {e}");
                continue;
            }
        };
        out!("{}", line(fs, &stat, &path));
        if recursive && stat.kind == FileKind::Dir {
            if above.contains(&entry.node) {
                eprintln!("strata: {path}: the directory contains itself (a directory loop in a damaged file system); not descended");
                continue;
            }
            above.push(entry.node);
            list(fs, entry.node, &path, recursive, above)?;
            above.pop();
        }
    }
    Ok(())
}

fn line(fs: &dyn GuestFs, stat: &Stat, path: &str) -> String {
    let letter = match stat.kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
    };
    let mode = super::ls::mode_string(letter, stat.mode);
    let mut line = format!(
        "{mode} {:>3} {:<8} {:<8} {:>12} {} {path}",
        stat.nlink,
        stat.uid,
        stat.gid,
        stat.size,
        format_time(Timestamp {
            sec: stat.mtime.sec,
            nsec: stat.mtime.nsec
        })
    );
    if stat.kind == FileKind::Symlink {
        if let Ok(target) = fs.read_link(stat.node) {
            line.push_str(" -> ");
            line.push_str(&escape_name(&target));
        }
    }
    line
}
