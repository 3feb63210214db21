//! Directory listings: the fixed top levels, sources and VMs, their
//! restore points by time, a restore point's tree, and the files shown
//! for a VM.

use std::sync::Arc;

use super::{Child, Inode, Kind, Namespace};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::format_time;
use crate::tree::NodeKind;
use crate::vm::description::VmDescription;

/// The disk's base name as shown in the mount.
fn disk_stem(description: &VmDescription, index: usize) -> String {
    let disk = &description.disks[index];
    let stem = disk.stem().to_string();
    let clash = description
        .disks
        .iter()
        .enumerate()
        .any(|(i, d)| i != index && d.stem() == stem);
    if clash {
        format!("{stem}-{}", disk.slot.replace(':', "-"))
    } else {
        stem
    }
}

impl Namespace {
    pub(super) fn compute_children(&self, inode: &Inode) -> Result<Vec<Child>> {
        let mut children: Vec<Child> = match &inode.kind {
            Kind::Root => vec![
                Child {
                    name: b"files".to_vec(),
                    kind: Kind::FilesRoot,
                },
                Child {
                    name: b"vms".to_vec(),
                    kind: Kind::VmsRoot,
                },
            ],
            Kind::FilesRoot => self.sources(RestorePointKind::Files)?,
            Kind::VmsRoot => self.sources(RestorePointKind::Vm)?,
            Kind::Source(source) => self.points_by_time(RestorePointKind::Files, source)?,
            Kind::Vm(source) => self.points_by_time(RestorePointKind::Vm, source)?,
            Kind::FilesPoint(rp) => self.tree_children(rp, &rp.manifest.root, "")?,
            Kind::Dir { rp, tree, path, .. } => self.tree_children(rp, tree, path)?,
            Kind::VmPoint(rp) => self.vm_files(rp)?,
            _ => return Err(Error::InvalidInput("not a directory".into())),
        };
        children.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(children)
    }

    /// The sources (or VMs) that have restore points of `kind`.
    fn sources(&self, kind: RestorePointKind) -> Result<Vec<Child>> {
        let mut names: Vec<String> = self
            .catalog()?
            .points
            .iter()
            .filter(|rp| rp.manifest.kind == kind)
            .map(|rp| rp.manifest.source.clone())
            .collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|n| Child {
                name: n.as_bytes().to_vec(),
                kind: if kind == RestorePointKind::Files {
                    Kind::Source(n)
                } else {
                    Kind::Vm(n)
                },
            })
            .collect())
    }

    /// A source's (or VM's) restore points by time, and `latest`.
    fn points_by_time(&self, kind: RestorePointKind, source: &str) -> Result<Vec<Child>> {
        let points = self.points_of(kind, source)?;
        let mut c: Vec<Child> = Vec::new();
        if let Some((latest, _)) = points.last() {
            c.push(Child {
                name: b"latest".to_vec(),
                kind: Kind::Latest(latest.as_bytes().to_vec()),
            });
        }
        for (name, rp) in points {
            let kind = if kind == RestorePointKind::Files {
                Kind::FilesPoint(rp)
            } else {
                Kind::VmPoint(rp)
            };
            c.push(Child {
                name: name.into_bytes(),
                kind,
            });
        }
        Ok(c)
    }

    /// A VM restore point's `.vmx`, and a descriptor and flat file per disk.
    fn vm_files(&self, rp: &Arc<RestorePoint>) -> Result<Vec<Child>> {
        let d = self.description(rp)?;
        let mut c = Vec::new();
        if !d.vmx.is_empty() {
            c.push(Child {
                name: format!("{}.vmx", d.name).into_bytes(),
                kind: Kind::Blob {
                    time: rp.manifest.time,
                    data: Arc::new(d.vmx.clone()),
                    owner: d.vmx_owner,
                },
            });
        }
        for (i, disk) in d.disks.iter().enumerate() {
            let stem = disk_stem(&d, i);
            let flat = format!("{stem}-flat.vmdk");
            let text =
                crate::vmdk::writer::flat_descriptor_text(&flat, disk.capacity, &disk.adapter_type);
            c.push(Child {
                name: format!("{stem}.vmdk").into_bytes(),
                kind: Kind::Blob {
                    time: rp.manifest.time,
                    data: Arc::new(text.into_bytes()),
                    owner: disk.owner,
                },
            });
            c.push(Child {
                name: flat.clone().into_bytes(),
                kind: Kind::FlatDisk {
                    rp: rp.clone(),
                    description: d.clone(),
                    disk: i,
                    path: format!(
                        "vms/{}/{}/{flat}",
                        rp.manifest.source,
                        format_time(rp.manifest.time)
                    ),
                },
            });
        }
        Ok(c)
    }

    fn tree_children(
        &self,
        rp: &Arc<RestorePoint>,
        tree: &ChunkId,
        path: &str,
    ) -> Result<Vec<Child>> {
        let tree = self.repo.load_tree(tree)?;
        let mut out = Vec::with_capacity(tree.nodes.len());
        for node in tree.nodes {
            if crate::tree::validate_name(&node.name, "mount").is_err() {
                tracing::error!(restore_point = %rp.id.short(), path, name = %String::from_utf8_lossy(&node.name), "unsafe name hidden");
                continue;
            }
            let child_path = format!("{path}/{}", String::from_utf8_lossy(&node.name));
            let name = node.name.clone();
            let kind = match &node.kind {
                NodeKind::Directory { subtree } => Kind::Dir {
                    rp: rp.clone(),
                    tree: *subtree,
                    node: Arc::new(node),
                    path: child_path,
                },
                _ => Kind::Entry {
                    rp: rp.clone(),
                    node: Arc::new(node),
                    path: child_path,
                },
            };
            out.push(Child { name, kind });
        }
        Ok(out)
    }
}
