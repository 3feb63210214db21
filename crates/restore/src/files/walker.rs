//! The walker: creates the restored entries in tree order through
//! directory descriptors. Directories, symlinks and special files are
//! made here; files are created under a temporary name and queued for
//! the workers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::links::{LinkState, LinkTarget};
use super::metadata::{apply_metadata, timespec};
use super::plan::Selected;
use super::worker::Job;
use super::Outcome;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::reader::RepositoryReader;
use crate::fsops::{self, os, SpecialKind};
use crate::tree::{validate_name, Node, NodeKind};

/// A directory being restored. Its metadata is set when the last entry
/// below it is done, i.e. when the last `Arc` to it is dropped: workers
/// finish files (and rename them into place) after the walker has moved
/// on, and each of those would move the directory's times.
pub(super) struct OpenDir<'a> {
    pub(super) fd: OwnedFd,
    /// `None` for the target itself, whose metadata stays as it is.
    pub(super) node: Option<Node>,
    pub(super) shown: PathBuf,
    /// Keeps the parent open, and its metadata pending, until this is done.
    pub(super) _parent: Option<Arc<OpenDir<'a>>>,
    pub(super) outcome: &'a Outcome,
}

impl Drop for OpenDir<'_> {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            if let Err(e) = apply_metadata(self.fd.as_fd(), node, &self.shown, self.outcome.is_root)
            {
                self.outcome.fail(&self.shown, &e);
            }
        }
    }
}

pub(super) struct RestoreWalker<'a, 'r> {
    pub(super) repo: &'r dyn RepositoryReader,
    pub(super) cancel: &'r CancelToken,
    pub(super) jobs: crossbeam_channel::Sender<Job<'a>>,
    pub(super) outcome: &'a Outcome,
    /// Hard-linked files by link id, with how many more names the backup
    /// said they have; an entry (and the descriptor it keeps open) goes
    /// once all are queued.
    pub(super) links: HashMap<u64, (Arc<LinkTarget>, u32)>,
    pub(super) root: Arc<OpenDir<'a>>,
    pub(super) root_tree: ChunkId,
}

impl<'a> RestoreWalker<'a, '_> {
    pub(super) fn restore_selected(&mut self, sel: &Selected) -> Result<()> {
        let Some(node) = &sel.node else {
            self.repo.prefetch_tree(&self.root_tree);
            let tree = self.repo.load_tree(&self.root_tree)?;
            self.prefetch_files(&tree);
            let root = self.root.clone();
            for child in &tree.nodes {
                self.restore_node(&root, PathBuf::new(), child)?;
            }
            return Ok(());
        };
        if let NodeKind::Directory { subtree } = &node.kind {
            self.repo.prefetch_tree(subtree);
        }
        // The ancestors get their metadata once the node below is done.
        let mut dir = self.root.clone();
        let mut rel = PathBuf::new();
        for ancestor in &sel.ancestors {
            validate_name(&ancestor.name, "restore point")?;
            rel.push(os(&ancestor.name));
            dir = Arc::new(OpenDir {
                fd: fsops::make_dir(&dir.fd, os(&ancestor.name), &rel)?,
                node: Some(ancestor.clone()),
                shown: rel.clone(),
                _parent: Some(dir),
                outcome: self.outcome,
            });
        }
        self.restore_node(&dir, rel, node)
    }

    /// Tells the repository which chunks this directory's files will
    /// read, in the order the workers will read them.
    fn prefetch_files(&self, tree: &crate::tree::Tree) {
        let ids: Vec<ChunkId> = tree
            .nodes
            .iter()
            .filter_map(|node| match &node.kind {
                NodeKind::File { extents } => Some(extents),
                _ => None,
            })
            .flatten()
            .filter_map(|extent| match extent {
                crate::tree::Extent::Data { id, .. } => Some(*id),
                crate::tree::Extent::Hole { .. } => None,
            })
            .collect();
        if !ids.is_empty() {
            self.repo.prefetch(&ids);
        }
    }

    fn restore_node(
        &mut self,
        parent: &Arc<OpenDir<'a>>,
        parent_rel: PathBuf,
        node: &Node,
    ) -> Result<()> {
        self.cancel.check()?;
        validate_name(&node.name, "restore point")?;
        let name = os(&node.name);
        let rel = parent_rel.join(name);
        match &node.kind {
            NodeKind::Directory { subtree } => {
                let dir = Arc::new(OpenDir {
                    fd: fsops::make_dir(&parent.fd, name, &rel)?,
                    node: Some(node.clone()),
                    shown: rel.clone(),
                    _parent: Some(parent.clone()),
                    outcome: self.outcome,
                });
                let tree = self.repo.load_tree(subtree)?;
                self.prefetch_files(&tree);
                for child in &tree.nodes {
                    self.restore_node(&dir, rel.clone(), child)?;
                }
                self.outcome.record(|s| s.directories += 1);
            }
            NodeKind::File { .. } => self.queue_file(parent, rel, node)?,
            NodeKind::Symlink { target } => {
                let owner = self.outcome.is_root.then_some((node.uid, node.gid));
                let times = (&timespec(node.atime), &timespec(node.mtime));
                self.in_place(parent, &rel, |partial| {
                    let fd = fsops::make_symlink(&parent.fd, partial, os(target), &rel)?;
                    fsops::set_symlink_metadata(&fd, owner, times, &rel).map(|()| true)
                })?;
            }
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. } => {
                let (kind, rdev) = match node.kind {
                    NodeKind::CharDevice { rdev } => (SpecialKind::CharDevice, rdev),
                    NodeKind::BlockDevice { rdev } => (SpecialKind::BlockDevice, rdev),
                    _ => (SpecialKind::Fifo, 0),
                };
                let owner = self.outcome.is_root.then_some((node.uid, node.gid));
                let times = (&timespec(node.atime), &timespec(node.mtime));
                self.in_place(parent, &rel, |partial| {
                    match fsops::make_special(&parent.fd, partial, kind, rdev, &rel) {
                        Ok(fd) => fsops::set_special_metadata(&fd, owner, node.mode, times, &rel)
                            .map(|()| true),
                        Err(Error::Io { source, .. })
                            if source.raw_os_error() == Some(libc::EPERM)
                                && kind != SpecialKind::Fifo =>
                        {
                            self.outcome.warn(format!(
                                "{}: device nodes can only be created by root",
                                rel.display()
                            ));
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                })?;
            }
            NodeKind::Socket => {
                self.outcome
                    .warn(format!("{}: sockets are not restored", rel.display()));
            }
        }
        Ok(())
    }

    /// Makes an entry under a temporary name with `make` and renames it
    /// into place. A failure is that entry's own: it is reported, the
    /// partial entry removed, and the restore goes on (unless interrupted).
    /// `make` returns false when it skipped the entry (with a warning).
    fn in_place(
        &self,
        parent: &OpenDir,
        rel: &Path,
        make: impl FnOnce(&OsStr) -> Result<bool>,
    ) -> Result<()> {
        let name = rel.file_name().expect("restored entries have a name");
        let partial = fsops::partial_name();
        let partial = partial.as_os_str();
        let made = make(partial).and_then(|made| {
            if made {
                fsops::commit_partial(&parent.fd, partial, name, rel)?;
            }
            Ok(made)
        });
        match made {
            Ok(true) => self.outcome.record(|s| s.other += 1),
            Ok(false) => {}
            Err(e @ Error::Interrupted(_)) => {
                fsops::discard_partial(&parent.fd, partial);
                return Err(e);
            }
            Err(e) => {
                fsops::discard_partial(&parent.fd, partial);
                self.outcome.fail(rel, &e);
            }
        }
        Ok(())
    }

    fn queue_file(&mut self, parent: &Arc<OpenDir<'a>>, rel: PathBuf, node: &Node) -> Result<()> {
        let mut link = None;
        if node.link_id != 0 {
            if let Some((first, remaining)) = self.links.get_mut(&node.link_id) {
                let job = Job::Link {
                    dir: parent.clone(),
                    name: os(&node.name).to_os_string(),
                    shown: rel,
                    first: first.clone(),
                };
                *remaining = remaining.saturating_sub(1);
                if *remaining == 0 {
                    self.links.remove(&node.link_id);
                }
                return self.send(job);
            }
            let first = Arc::new(LinkTarget::new(rel.clone()));
            if node.nlink > 1 {
                self.links
                    .insert(node.link_id, (first.clone(), node.nlink - 1));
            }
            link = Some(first);
        }
        let partial = fsops::partial_name();
        let file = match fsops::create_partial_file(&parent.fd, &partial, &rel) {
            Ok(file) => file,
            Err(e) => {
                if let Some(link) = &link {
                    link.finish(LinkState::Failed);
                }
                return Err(e);
            }
        };
        self.send(Job::File {
            dir: parent.clone(),
            partial,
            file,
            node: Box::new(node.clone()),
            shown: rel,
            link,
        })
    }

    fn send(&self, job: Job<'a>) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error::Interrupted("restore workers stopped".into()))
    }
}
