//! VMware `.vmx` configuration files: `key = "value"` lines.
//!
//! The file is kept verbatim in the backup; parsing yields a summary and the
//! list of disks. Restore rewrites only the values it must change
//! (`displayName`, disk file names) and keeps every other line as it was.

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Vmx {
    lines: Vec<String>,
    /// (lower-case key, value, line index)
    entries: Vec<(String, String, usize)>,
}

/// A disk attached to a controller slot such as `scsi0:1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxDisk {
    pub slot: String,
    pub file_name: String,
}

const CONTROLLERS: [&str; 4] = ["scsi", "ide", "sata", "nvme"];

impl Vmx {
    pub fn parse(text: &str, origin: &str) -> Result<Vmx> {
        let mut entries = Vec::new();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (n, line) in lines.iter().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = trimmed.split_once('=').ok_or_else(|| {
                Error::corrupt(
                    format!("VM configuration {origin}"),
                    format!(
                        "line {}: expected key = \"value\", found {trimmed:?}",
                        n + 1
                    ),
                )
            })?;
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(Error::corrupt(
                    format!("VM configuration {origin}"),
                    format!("line {}: bad key {key:?}", n + 1),
                ));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            entries.push((key.to_ascii_lowercase(), value.to_string(), n));
        }
        Ok(Vmx { lines, entries })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.entries
            .iter()
            .rev()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, _)| v.as_str())
    }

    pub fn display_name(&self) -> Option<&str> {
        self.get("displayName").filter(|n| !n.is_empty())
    }

    pub fn cpus(&self) -> u32 {
        self.get("numvcpus")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    pub fn memory_mb(&self) -> u64 {
        self.get("memsize")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn guest_os(&self) -> &str {
        self.get("guestOS").unwrap_or("")
    }

    /// Present hard disks in slot order (CD-ROM images and absent devices
    /// are left out).
    pub fn disks(&self) -> Vec<VmxDisk> {
        let mut disks = Vec::new();
        for (key, value, _) in &self.entries {
            let Some(slot) = key.strip_suffix(".filename") else {
                continue;
            };
            let Some((controller, unit)) = slot.split_once(':') else {
                continue;
            };
            let is_controller = CONTROLLERS.iter().any(|c| {
                controller
                    .strip_prefix(c)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
            if !is_controller || unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if self
                .get(&format!("{slot}.present"))
                .is_some_and(|p| p.eq_ignore_ascii_case("false"))
            {
                continue;
            }
            let device = self
                .get(&format!("{slot}.deviceType"))
                .unwrap_or("")
                .to_ascii_lowercase();
            if device.contains("cdrom")
                || device.contains("atapi")
                || !value.to_ascii_lowercase().ends_with(".vmdk")
            {
                continue;
            }
            disks.push(VmxDisk {
                slot: slot.to_string(),
                file_name: value.clone(),
            });
        }
        disks.sort_by_key(|d| slot_order(&d.slot));
        disks
    }

    /// The file with `changes` applied: each key's value replaced where it
    /// is set, appended where it is not.
    pub fn rewrite(&self, changes: &[(String, String)]) -> String {
        let mut lines = self.lines.clone();
        for (key, value) in changes {
            let lower = key.to_ascii_lowercase();
            let line = format!("{key} = \"{value}\"");
            match self.entries.iter().rev().find(|(k, _, _)| *k == lower) {
                Some((_, _, n)) => lines[*n] = line,
                None => lines.push(line),
            }
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

fn slot_order(slot: &str) -> (usize, u32, u32) {
    let (controller, unit) = slot.split_once(':').unwrap_or((slot, "0"));
    let kind = CONTROLLERS
        .iter()
        .position(|c| controller.starts_with(c))
        .unwrap_or(9);
    let bus = controller
        .trim_start_matches(char::is_alphabetic)
        .parse()
        .unwrap_or(0);
    (kind, bus, unit.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#".encoding = "UTF-8"
displayName = "web01"
numvcpus = "4"
memsize = "8192"
guestOS = "ubuntu-64"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
scsi0:1.fileName = "web01_1.vmdk"
sata0:0.fileName = "data.vmdk"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "ubuntu.iso"
nvme0:0.present = "FALSE"
nvme0:0.fileName = "gone.vmdk"
"#;

    #[test]
    fn summary_and_disks() {
        let vmx = Vmx::parse(SAMPLE, "t").unwrap();
        assert_eq!(vmx.display_name(), Some("web01"));
        assert_eq!(
            (vmx.cpus(), vmx.memory_mb(), vmx.guest_os()),
            (4, 8192, "ubuntu-64")
        );
        let slots: Vec<_> = vmx
            .disks()
            .into_iter()
            .map(|d| (d.slot, d.file_name))
            .collect();
        assert_eq!(
            slots,
            vec![
                ("scsi0:0".into(), "web01.vmdk".into()),
                ("scsi0:1".into(), "web01_1.vmdk".into()),
                ("sata0:0".into(), "data.vmdk".into())
            ]
        );
    }

    #[test]
    fn rewrite_keeps_other_lines() {
        let vmx = Vmx::parse(SAMPLE, "t").unwrap();
        let text = vmx.rewrite(&[
            ("displayName".into(), "web01_1".into()),
            ("scsi0:0.fileName".into(), "web01_1.vmdk".into()),
        ]);
        let again = Vmx::parse(&text, "t").unwrap();
        assert_eq!(again.display_name(), Some("web01_1"));
        assert_eq!(again.disks()[0].file_name, "web01_1.vmdk");
        assert_eq!(again.get("memsize"), Some("8192"));
        assert_eq!(text.lines().count(), SAMPLE.lines().count());
    }

    #[test]
    fn malformed_lines_are_named() {
        let err = Vmx::parse("displayName = \"x\"\nthis is not a setting\n", "bad.vmx")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.vmx") && err.contains("line 2"), "{err}");
    }
}
