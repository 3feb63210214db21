//! The volumes of a disk, as the mount's `guest/<disk>/` lists them: its
//! partitions (`p1`, `p2`, …), or `whole` when a file system (or an LVM2
//! physical volume) covers the disk without a table, and every linear
//! logical volume of an LVM2 physical volume found on any of them
//! (`<vg>-<lv>`). A volume that cannot be read is still listed, with why.

use std::sync::Arc;

use crate::partition::{self, Scheme};
use crate::probe::{probe, Content};
use crate::source::{ByteSource, Window};

/// One volume of a disk.
#[derive(Clone)]
pub struct Volume {
    /// `p1`, `whole`, `vg0-root`.
    pub name: String,
    /// Its bytes; `None` when it cannot be read (see `problem`).
    pub device: Option<Window>,
    pub content: Content,
    /// Why it shows nothing: a partition past the disk's end, an
    /// encrypted or unknown volume, damaged LVM metadata, …
    pub problem: Option<String>,
    /// The partition's table (`mbr`, `gpt`), `lvm`, or `none`.
    pub source: &'static str,
}

impl Volume {
    pub fn len(&self) -> u64 {
        self.device.as_ref().map_or(0, ByteSource::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every volume of `disk`, in the order a person reads them: partitions
/// by number, then logical volumes by name. `disk_name` names the disk in
/// messages. Never fails: what cannot be read is a volume with a problem.
pub fn volumes(disk: Arc<dyn ByteSource>, disk_name: &str) -> Vec<Volume> {
    let mut out = Vec::new();
    match partition::read(disk.as_ref()) {
        Err(e) => out.push(unreadable("table", &e.to_string(), "none")),
        Ok(None) => match Window::range(Arc::clone(&disk), 0, disk.len()) {
            Ok(whole) => out.push(volume("whole".into(), whole, "none")),
            Err(e) => out.push(unreadable("whole", &e.to_string(), "none")),
        },
        Ok(Some(table)) => {
            let source = match table.scheme {
                Scheme::Mbr => "mbr",
                Scheme::Gpt => "gpt",
            };
            for p in table.partitions {
                let name = format!("p{}", p.number);
                match p.problem {
                    Some(problem) => out.push(unreadable(&name, &problem, source)),
                    None => match Window::range(Arc::clone(&disk), p.offset, p.len) {
                        Ok(w) => out.push(volume(name, w, source)),
                        Err(e) => out.push(unreadable(&name, &e.to_string(), source)),
                    },
                }
            }
        }
    }
    // The disk's physical volumes, read together: a volume group may
    // span several of them, and keep its metadata on only some.
    let mut logical = Vec::new();
    let mut pvs = Vec::new();
    let mut partitions = Vec::new();
    for v in &out {
        if v.content != Content::LvmPhysicalVolume {
            continue;
        }
        let Some(device) = &v.device else { continue };
        let pv_name = format!("{disk_name}/{}", v.name);
        match crate::lvm::physical_volume(device.clone(), &pv_name) {
            Ok(pv) => {
                pvs.push(pv);
                partitions.push(v.name.clone());
            }
            Err(e) => {
                tracing::warn!(volume = %pv_name, error = %e, "LVM2 metadata unreadable");
                logical.push((v.name.clone(), unreadable(&format!("{}-lvm", v.name), &e.to_string(), "lvm")));
            }
        }
    }
    let (lvs, problems) = crate::lvm::logical_volumes(&pvs);
    for lv in lvs {
        let name = format!("{}-{}", lv.vg, lv.name);
        let found = match lv.device {
            Ok(w) => volume(name, w, "lvm"),
            Err(why) => unreadable(&name, &why, "lvm"),
        };
        logical.push((partitions[lv.described_by].clone(), found));
    }
    for (i, why) in problems {
        tracing::warn!(volume = %pvs[i].name, error = %why, "LVM2 volumes unreadable");
        logical.push((partitions[i].clone(), unreadable(&format!("{}-lvm", partitions[i]), &why, "lvm")));
    }
    out.extend(one_per_name(logical));
    out
}

/// The logical volumes found on a disk's physical volumes (each with the
/// partition whose metadata described it), one per name, by name. Two
/// readable volumes of one name (two volume groups of one name, as disks
/// cloned from one template have) are both kept, the later one named
/// after its partition too (`vg0-root~p3`: LVM names have no `~`); of a
/// readable and an unreadable one, the readable one.
fn one_per_name(mut found: Vec<(String, Volume)>) -> Vec<Volume> {
    found.sort_by(|(_, a), (_, b)| a.name.cmp(&b.name).then(b.device.is_some().cmp(&a.device.is_some())));
    let mut out: Vec<Volume> = Vec::with_capacity(found.len());
    for (partition, mut volume) in found {
        match out.iter().rfind(|kept| kept.name == volume.name || kept.name.starts_with(&format!("{}~", volume.name))) {
            None => out.push(volume),
            Some(kept) if kept.device.is_some() && volume.device.is_some() => {
                volume.name = format!("{}~{partition}", volume.name);
                out.push(volume);
            }
            Some(_) => {}
        }
    }
    out
}

fn volume(name: String, device: Window, source: &'static str) -> Volume {
    let (content, problem) = match probe(&device) {
        Ok(content) => (content, why_empty(content)),
        Err(e) => (Content::Unknown, Some(format!("reading its first bytes: {e}"))),
    };
    Volume {
        name,
        device: Some(device),
        content,
        problem,
        source,
    }
}

fn unreadable(name: &str, why: &str, source: &'static str) -> Volume {
    Volume {
        name: name.to_string(),
        device: None,
        content: Content::Unknown,
        problem: Some(why.to_string()),
        source,
    }
}

/// Why a volume with this content shows no files (`None`: it has a file
/// system to read, or is an LVM physical volume, whose logical volumes
/// are listed on their own).
fn why_empty(content: Content) -> Option<String> {
    match content {
        Content::Luks | Content::BitLocker => Some(format!("{}: its files cannot be read without its key", content.name())),
        Content::Swap => Some("swap space: no files".into()),
        Content::Unknown => Some("no file system Strata reads (ext2/3/4, XFS, NTFS, FAT, exFAT) was found on it".into()),
        Content::LvmPhysicalVolume => Some("an LVM2 physical volume: its logical volumes are listed beside it".into()),
        Content::Ext | Content::Xfs | Content::Ntfs | Content::Fat | Content::Exfat => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(name: &str, readable: bool) -> Volume {
        let disk: Arc<dyn ByteSource> = Arc::new(vec![0u8; 4096]);
        match readable {
            true => volume(name.into(), Window::range(disk, 0, 4096).unwrap(), "lvm"),
            false => unreadable(name, "it lies on physical volume pv0, not on this one", "lvm"),
        }
    }

    #[test]
    fn a_volume_seen_through_two_physical_volumes_is_listed_once_readable() {
        let found = vec![
            ("p2".to_string(), lv("vg0-root", false)),
            ("p3".to_string(), lv("vg0-root", true)),
            ("p3".to_string(), lv("vg0-swap", false)),
            ("p2".to_string(), lv("vg0-swap", false)),
            ("p2".to_string(), lv("vg0-home", true)),
            ("p5".to_string(), lv("vg0-home", true)),
        ];
        let listed: Vec<(String, bool)> = one_per_name(found).into_iter().map(|v| (v.name, v.device.is_some())).collect();
        assert_eq!(
            listed,
            [
                ("vg0-home".to_string(), true),
                ("vg0-home~p5".to_string(), true),
                ("vg0-root".to_string(), true),
                ("vg0-swap".to_string(), false),
            ]
        );
    }
}
