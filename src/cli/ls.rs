//! `strata ls`.

use std::path::Path;

use strata::reader::RepositoryReader;
use anyhow::Result;
use strata::listing::list_tree;
use strata::restore::vm::load_description;
use strata::restore_point::{RestorePoint, RestorePointKind};
use strata::selector::format_time;
use strata::tree::{Node, NodeKind};

use super::render::escape_name;
use super::{Status};

pub fn run(path: &Path, selector: &str, dir: Option<String>, recursive: bool) -> Result<Status> {
    let shared = super::remote::open_reader(path)?;
    let repo = shared.as_ref();
    let rp = repo.resolve(selector)?;
    if rp.manifest.kind == RestorePointKind::Vm {
        match dir {
            // Inside a disk: <disk>/<volume>/<path>.
            Some(guest_path) => super::guest::ls(&super::guest::view(&shared, &rp)?, &guest_path, recursive)?,
            None => list_vm(repo, &rp)?,
        }
        return Ok(Status::Ok);
    }
    let dir = dir.unwrap_or_else(|| "/".into());
    let tree_id = match repo.lookup_path(&rp, &dir)? {
        None => rp.manifest.root,
        Some(Node {
            kind: NodeKind::Directory { subtree },
            ..
        }) => subtree,
        Some(node) => {
            out!("{}", ls_line(&node, &dir));
            return Ok(Status::Ok);
        }
    };
    // The given path is shown as typed; the names below it are escaped.
    let prefix = dir.trim_end_matches('/');
    for entry in list_tree(repo, tree_id, recursive) {
        let (path, node) = entry?;
        out!(
            "{}",
            ls_line(&node, &format!("{prefix}/{}", escape_name(&path)))
        );
    }
    Ok(Status::Ok)
}

/// A VM restore point lists its configuration and disks.
fn list_vm(repo: &dyn RepositoryReader, rp: &RestorePoint) -> Result<()> {
    let d = load_description(repo, rp)?;
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
    Ok(())
}

/// `ls -l`'s first column: the kind's letter and the permission bits.
pub fn mode_string(letter: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(letter);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
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
        mode_string(node.kind.letter(), node.mode),
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
