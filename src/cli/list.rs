//! `strata list`.

use std::path::Path;

use anyhow::Result;
use strata::selector::time_labels;

use super::render::{escape_name, human_bytes, print_json, rp_json};
use super::{Status};

pub fn run(path: &Path, as_json: bool) -> Result<Status> {
    let repo = super::remote::open_reader(path)?;
    let repo = repo.as_ref();
    let points = repo.restore_points()?;
    if as_json {
        print_json(&serde_json::Value::Array(
            points.iter().map(rp_json).collect(),
        ))?;
        return Ok(Status::Ok);
    }
    let labels = time_labels(&points);
    out!(
        "{:<10} {:<24} {:<16} {:>8} {:>10}  tags",
        "id",
        "time",
        "source",
        "files",
        "size"
    );
    for rp in &points {
        let m = &rp.manifest;
        out!(
            "{:<10} {:<24} {:<16} {:>8} {:>10}  {}",
            rp.id.short(),
            labels[&rp.id],
            escape_name(m.source.as_bytes()),
            m.stats.files,
            human_bytes(m.stats.bytes_total),
            escape_name(m.tags.join(",").as_bytes())
        );
    }
    Ok(Status::Ok)
}
