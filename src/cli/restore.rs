//! `strata restore files`, `restore vm` and `restore disk`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use strata::cancel::CancelToken;
use strata::restore::files::{restore_files, FilesRestore, RestoreSummary};
use strata::restore::guest::{restore_guest_files, GuestRestore};
use strata::nbd::NbdUri;
use strata::restore::vm::{
    restore_disk_nbd, restore_disk_raw, restore_vm, DiskOutput, VmRestore, VmRestoreSummary,
};
use strata::restore_point::RestorePointKind;

use super::args::{DiskFormatArg, RestoreCommand};
use super::progress::TerminalProgress;
use super::render::{escape_name, human_bytes, mb_per_s, print_json};
use super::{Status};

pub fn run(path: &Path, command: RestoreCommand, cancel: &CancelToken) -> Result<Status> {
    match command {
        RestoreCommand::Vm {
            restore_point,
            to,
            name,
            disk_format,
            json,
        } => {
            let output = VmOutput::Folder(folder(to, name, disk_format, None));
            vm(path, &restore_point, output, json.json, cancel)?;
        }
        RestoreCommand::Disk {
            restore_point,
            disk,
            to,
            raw_to,
            to_nbd,
            name,
            disk_format,
            json,
        } => {
            let output = match (to, raw_to, to_nbd) {
                (_, Some(raw), _) => VmOutput::Raw { disk, path: raw },
                (_, _, Some(uri)) => VmOutput::Nbd { disk, uri: NbdUri::parse(&uri)? },
                (Some(to), None, None) => VmOutput::Folder(folder(to, name, disk_format, Some(disk))),
                (None, None, None) => bail!("give --to DIR, --raw-to PATH or --to-nbd URI"),
            };
            vm(path, &restore_point, output, json.json, cancel)?;
        }
        RestoreCommand::Files {
            restore_point,
            paths,
            to,
            json,
        } => return files(path, &restore_point, paths, to, json.json, cancel),
    }
    Ok(Status::Ok)
}

/// What a VM restore writes: a new VM folder, or one disk's raw contents.
enum VmOutput {
    Folder(VmRestore),
    Raw { disk: String, path: PathBuf },
    Nbd { disk: String, uri: NbdUri },
}

fn folder(
    to: PathBuf,
    name: Option<String>,
    format: DiskFormatArg,
    disk: Option<String>,
) -> VmRestore {
    VmRestore {
        target_dir: to,
        name,
        disk_output: match format {
            DiskFormatArg::Vmdk => DiskOutput::Vmdk,
            DiskFormatArg::Raw => DiskOutput::Raw,
        },
        disk,
    }
}

fn vm(
    path: &Path,
    selector: &str,
    output: VmOutput,
    as_json: bool,
    cancel: &CancelToken,
) -> Result<()> {
    let repo = super::remote::open_reader(path)?;
    let repo = repo.as_ref();
    let rp = repo.resolve(selector)?;
    let progress = TerminalProgress::bytes("restore", !as_json);
    let summary = match output {
        VmOutput::Folder(request) => restore_vm(repo, &rp, &request, &progress, cancel)?,
        VmOutput::Raw { disk, path } => {
            restore_disk_raw(repo, &rp, &disk, &path, &progress, cancel)?
        }
        VmOutput::Nbd { disk, uri } => restore_disk_nbd(repo, &rp, &disk, &uri, &progress, cancel)?,
    };
    render_vm(&summary, as_json)
}

fn files(
    path: &Path,
    selector: &str,
    paths: Vec<String>,
    to: PathBuf,
    as_json: bool,
    cancel: &CancelToken,
) -> Result<Status> {
    let shared = super::remote::open_reader(path)?;
    let repo = shared.as_ref();
    let rp = repo.resolve(selector)?;
    let progress = TerminalProgress::bytes("restore", !as_json);
    let summary = if rp.manifest.kind == RestorePointKind::Vm {
        // Files inside the VM's disks: <disk>/<volume>/<path>.
        if paths.is_empty() {
            bail!(
                "restore point {} is a VM: name guest paths (<disk>/<volume>/<path>, see `strata show`), or use `strata restore vm` or `strata restore disk`",
                rp.id.short()
            );
        }
        let view = super::guest::view(&shared, &rp)?;
        let request = GuestRestore {
            paths,
            target: to.clone(),
        };
        restore_guest_files(&view, &request, &progress, cancel)?
    } else {
        let request = FilesRestore {
            paths,
            target: to.clone(),
        };
        restore_files(repo, &rp, &request, &progress, cancel)?
    };
    if as_json {
        print_json(&serde_json::to_value(&summary)?)?;
    } else {
        render_files(&summary, &to)?;
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

fn render_files(summary: &RestoreSummary, to: &Path) -> Result<()> {
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
    Ok(())
}

fn render_vm(summary: &VmRestoreSummary, as_json: bool) -> Result<()> {
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
