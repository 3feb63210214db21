//! `strata key`: the key slots (passwords) of an encrypted repository.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use strata::key_slot::SlotId;
use strata::keys::{self, NewKey};

use super::args::{KeyCommand, NewPasswordArgs};
use super::init::kdf_params;
use super::render::print_json;
use super::{open, open_exclusive, password, Status};

pub fn run(path: &Path, command: KeyCommand) -> Result<Status> {
    match command {
        KeyCommand::List(json) => {
            let repo = open(path)?;
            let slots = keys::list(repo.store(), repo.unlocked()?)?;
            if json.json {
                print_json(&serde_json::to_value(&slots)?)?;
                return Ok(Status::Ok);
            }
            for slot in slots {
                let created = strata::selector::format_time(strata::tree::Timestamp {
                    sec: slot.created,
                    nsec: 0,
                });
                out!(
                    "{} {}  created {created} on {}  Argon2id {} MiB x {}",
                    if slot.in_use { "*" } else { " " },
                    slot.id,
                    slot.host,
                    slot.memory_kib / 1024,
                    slot.passes
                );
            }
        }
        KeyCommand::Add(args) => {
            let repo = open_exclusive(path, "strata key add")?;
            let id = with_new_key(&args, |key| {
                keys::add(repo.store(), &repo.config().repository_id, repo.unlocked()?, key)
            })?;
            report("added key slot", &id.to_string(), args.json.json)?;
        }
        KeyCommand::Remove { id, force } => {
            let repo = open_exclusive(path, "strata key remove")?;
            let removed = keys::remove(repo.store(), repo.unlocked()?, &id, force)?;
            out!("removed key slot {removed}");
        }
        KeyCommand::Passwd(args) => {
            let repo = open_exclusive(path, "strata key passwd")?;
            let id = with_new_key(&args, |key| {
                keys::change_password(repo.store(), &repo.config().repository_id, repo.unlocked()?, key)
            })?;
            report("password changed; new key slot", &id.to_string(), args.json.json)?;
        }
    }
    Ok(Status::Ok)
}

/// Calls `make` with the new password and cost the arguments give.
fn with_new_key(
    args: &NewPasswordArgs,
    make: impl FnOnce(&NewKey<'_>) -> strata::Result<SlotId>,
) -> Result<SlotId> {
    let password = password::new_password(args.new_password_file.as_deref())?;
    Ok(make(&NewKey {
        password: &password,
        kdf: kdf_params(&args.kdf),
    })?)
}

fn report(what: &str, id: &str, as_json: bool) -> Result<()> {
    if as_json {
        print_json(&json!({ "id": id }))?;
    } else {
        out!("{what} {id}");
    }
    Ok(())
}
