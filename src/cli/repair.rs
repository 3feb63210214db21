//! `strata repair index`.

use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::progress::NoProgress;
use strata::repair::repair_index;
use strata::repository::Repository;

use super::args::RepairCommand;
use super::render::print_json;
use super::Status;

pub fn run(path: &Path, command: RepairCommand, cancel: &CancelToken) -> Result<Status> {
    let RepairCommand::Index(json) = command;
    let mut repo = Repository::open_for_repair(path, "strata repair index", &super::open_options())?;
    let report = repair_index(&mut repo, &NoProgress, cancel)?;
    if json.json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        for line in report.lines() {
            out!("{line}");
        }
    }
    Ok(if report.is_complete() {
        Status::Ok
    } else {
        Status::Partial
    })
}
