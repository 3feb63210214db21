//! Directory listings: the fixed top levels, sources and VMs, their
//! restore points by time, a restore point's tree, and the files shown
//! for a VM.

use std::sync::Arc;

use strata_guest::fs::{FileKind as GuestKind, GuestFs, NodeId};

use super::{Child, Inode, Kind, Namespace};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::format_time;
use crate::tree::NodeKind;

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
            Kind::GuestRoot(rp) => self.guest_disks(rp)?,
            Kind::GuestDisk { rp, disk } => self.guest_volumes(rp, *disk)?,
            Kind::GuestEmpty { .. } => Vec::new(),
            Kind::GuestNode { rp, fs, stat, path, volume } if stat.kind == GuestKind::Dir => {
                self.guest_children(rp, fs, stat.node, path, volume)?
            }
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
        if !d.disks.is_empty() {
            c.push(Child {
                name: b"guest".to_vec(),
                kind: Kind::GuestRoot(rp.clone()),
            });
        }
        for (i, disk) in d.disks.iter().enumerate() {
            let stem = d.disk_name(i);
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

    /// `guest/`: a folder per disk, named as `strata ls` names them.
    fn guest_disks(&self, rp: &Arc<RestorePoint>) -> Result<Vec<Child>> {
        let view = self.guest(rp)?;
        Ok(view
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| Child {
                name: d.name.clone().into_bytes(),
                kind: Kind::GuestDisk { rp: rp.clone(), disk: i },
            })
            .collect())
    }

    /// A disk's volumes: each the root of its file system, or an empty
    /// folder when it has none Strata reads (the reason is logged).
    fn guest_volumes(&self, rp: &Arc<RestorePoint>, disk: usize) -> Result<Vec<Child>> {
        let view = self.guest(rp)?;
        let disk = &view.disks[disk];
        let mut out = Vec::new();
        for v in disk.volumes() {
            let volume: Arc<str> = format!("{}/{}", disk.name, v.name).into();
            let opened = disk.open(&v.name).and_then(|fs| {
                let stat = fs.stat(fs.root())?;
                Ok((fs, stat))
            });
            let kind = match opened {
                Ok((fs, stat)) if stat.kind == GuestKind::Dir => Kind::GuestNode {
                    rp: rp.clone(),
                    fs,
                    stat: Arc::new(stat),
                    path: volume.clone(),
                    volume,
                },
                Ok(_) => Kind::GuestEmpty {
                    rp: rp.clone(),
                    why: "its root is not a directory".into(),
                },
                Err(e) => {
                    tracing::warn!(restore_point = %rp.id.short(), volume = %volume, reason = %e, "guest volume shows no files");
                    Kind::GuestEmpty {
                        rp: rp.clone(),
                        why: e.to_string().into(),
                    }
                }
            };
            out.push(Child {
                name: v.name.clone().into_bytes(),
                kind,
            });
        }
        Ok(out)
    }

    /// A guest directory's entries, each with its stat (what `ls -l`
    /// asks for next). An entry whose inode cannot be read is logged and
    /// left out, never shown with made-up metadata.
    fn guest_children(
        &self,
        rp: &Arc<RestorePoint>,
        fs: &Arc<dyn GuestFs>,
        dir: NodeId,
        path: &Arc<str>,
        volume: &Arc<str>,
    ) -> Result<Vec<Child>> {
        let entries = fs
            .read_dir(dir)
            .map_err(|e| Error::corrupt(format!("guest directory {path} of {}", rp.id.short()), e))?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let name = String::from_utf8_lossy(&entry.name);
            let child_path: Arc<str> = format!("{path}/{name}").into();
            if crate::tree::validate_name(&entry.name, "mount").is_err() {
                tracing::error!(restore_point = %rp.id.short(), path = %child_path, "unsafe guest name hidden");
                continue;
            }
            match fs.stat(entry.node) {
                Ok(stat) => out.push(Child {
                    name: entry.name,
                    kind: Kind::GuestNode {
                        rp: rp.clone(),
                        fs: fs.clone(),
                        stat: Arc::new(stat),
                        path: child_path,
                        volume: volume.clone(),
                    },
                }),
                Err(e) => tracing::error!(restore_point = %rp.id.short(), path = %child_path, error = %e, "guest entry unreadable; hidden"),
            }
        }
        // A damaged directory may name one entry twice: keep the first.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
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
