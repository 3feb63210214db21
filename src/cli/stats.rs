//! `strata stats`.

use std::path::Path;

use anyhow::Result;
use strata::reader::RepositoryReader;

use super::render::{human_bytes, print_json};
use super::{open, Status};

pub fn run(path: &Path, as_json: bool) -> Result<Status> {
    let s = match super::remote::location(path)? {
        None => strata::stats::stats(&open(path)?)?,
        Some(location) => {
            // The server counts what it stores; the restore points, which
            // only the key opens, are counted here.
            let repo = super::remote::open(location)?;
            let storage = repo.storage()?;
            strata::stats::combine(repo.config(), storage.stored, &repo.restore_points()?)
        }
    };
    if as_json {
        print_json(&serde_json::to_value(&s)?)?;
        return Ok(Status::Ok);
    }
    out!("repository       {}", super::render::describe_protection(&s.encryption, s.format_version));
    out!("restore points   {}", s.restore_points);
    out!("logical data     {}", human_bytes(s.logical_bytes));
    out!(
        "unique data      {} in {} chunks (dedup {:.2}x)",
        human_bytes(s.unique_bytes),
        s.chunks,
        s.dedup_ratio
    );
    out!(
        "stored           {} (compression {:.2}x)",
        human_bytes(s.stored_bytes),
        s.compression_ratio
    );
    out!(
        "packs            {} totalling {}",
        s.packs,
        human_bytes(s.pack_bytes)
    );
    Ok(Status::Ok)
}
