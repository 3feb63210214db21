//! `strata show`.

use std::path::Path;

use strata::reader::RepositoryReader;
use anyhow::Result;
use serde_json::json;
use strata::backup::vm::describe_format;
use strata::restore::vm::load_description;
use strata::restore_point::{RestorePoint, RestorePointKind};
use strata::selector::{select, time_labels};
use strata::vm::description::VmDescription;

use super::render::{describe_protection, escape_name, human_bytes, print_json, rp_json};
use super::{Status};

pub fn run(path: &Path, selector: &str, as_json: bool) -> Result<Status> {
    let shared = super::remote::open_reader(path)?;
    let repo = shared.as_ref();
    let points = repo.restore_points()?;
    let rp = select(&points, selector)?;
    if as_json {
        let mut value = rp_json(rp);
        value["repository"] = json!({
            "format_version": repo.config().format_version,
            "encryption": strata::stats::encryption_name(repo.config()),
        });
        if rp.manifest.kind == RestorePointKind::Vm {
            value["vm"] = vm_json(&load_description(repo, rp)?);
            value["vm"]["guest"] = super::guest::volumes_json(&super::guest::view(&shared, rp)?);
        }
        print_json(&value)?;
    } else {
        render(repo, rp, &time_labels(&points)[&rp.id])?;
        if rp.manifest.kind == RestorePointKind::Vm {
            super::guest::render_volumes(&super::guest::view(&shared, rp)?)?;
        }
    }
    Ok(Status::Ok)
}

/// The VM's description is read only once the lines before it are out.
fn render(repo: &dyn RepositoryReader, rp: &RestorePoint, time: &str) -> Result<()> {
    let m = &rp.manifest;
    let s = &m.stats;
    out!("restore point {}", rp.id);
    out!("  source       {}", escape_name(m.source.as_bytes()));
    out!("  time         {time}");
    out!("  host         {}", escape_name(m.hostname.as_bytes()));
    out!(
        "  repository   {}",
        describe_protection(
            &strata::stats::encryption_name(repo.config()),
            repo.config().format_version
        )
    );
    out!(
        "  tags         {}",
        escape_name(m.tags.join(", ").as_bytes())
    );
    for p in &m.paths {
        out!("  path         {}", escape_name(p));
    }
    out!(
        "  parent       {}",
        m.parent
            .map(|p| p.short())
            .unwrap_or_else(|| "none (full backup)".into())
    );
    out!(
        "  files        {} in {} directories",
        s.files,
        s.directories
    );
    out!("  size         {}", human_bytes(s.bytes_total));
    out!("  read         {}", human_bytes(s.bytes_read));
    out!(
        "  new          {} in {} chunks, {} stored",
        human_bytes(s.bytes_new),
        s.chunks_new,
        human_bytes(s.bytes_stored)
    );
    out!("  duration     {:.1}s", s.duration_ms as f64 / 1000.0);
    if m.kind == RestorePointKind::Vm {
        render_vm(&load_description(repo, rp)?)?;
    }
    out!("  missed       {}", m.missed.len());
    for missed in &m.missed {
        out!("    {}: {}", escape_name(&missed.path), missed.reason);
    }
    Ok(())
}

fn render_vm(d: &VmDescription) -> Result<()> {
    let guest = if d.guest_os.is_empty() {
        "unknown".to_string()
    } else {
        escape_name(d.guest_os.as_bytes())
    };
    out!(
        "  vm           {} ({} vCPU, {} MB, guest {guest})",
        escape_name(d.name.as_bytes()),
        d.cpus,
        d.memory_mb
    );
    for disk in &d.disks {
        out!(
            "  disk         {} {}: {} capacity, {} allocated, from {}",
            escape_name(disk.slot.as_bytes()),
            escape_name(disk.file_name.as_bytes()),
            human_bytes(disk.capacity),
            human_bytes(disk.allocated_bytes()),
            describe_format(disk.source_format)
        );
    }
    Ok(())
}

/// A VM restore point's machine and disks, as `show` prints them; the
/// disk names are what `restore disk` takes.
fn vm_json(d: &VmDescription) -> serde_json::Value {
    json!({
        "name": d.name,
        "cpus": d.cpus,
        "memory_mb": d.memory_mb,
        "guest_os": d.guest_os,
        "disks": d.disks.iter().map(|disk| json!({
            "slot": disk.slot,
            "controller": disk.slot.split_once(':').map_or(disk.slot.as_str(), |(c, _)| c),
            "file_name": disk.file_name,
            "adapter_type": disk.adapter_type,
            "capacity": disk.capacity,
            "allocated": disk.allocated_bytes(),
            "source_format": describe_format(disk.source_format),
        })).collect::<Vec<_>>(),
    })
}
