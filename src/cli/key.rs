//! `strata key`: the key slots (passwords) of an encrypted repository.

use std::path::Path;

use anyhow::Result;
use serde_json::json;
use strata::key_slot::SlotId;
use strata::keys::{self, NewKey, Unlocked};
use strata::reader::RepositoryReader;
use strata::storage::ObjectStore;

use super::args::{KeyCommand, NewPasswordArgs};
use super::init::kdf_params;
use super::render::print_json;
use super::{open, open_exclusive, password, Status};

pub fn run(path: &Path, command: KeyCommand) -> Result<Status> {
    if let Some(location) = super::remote::location(path)? {
        // The slots are sealed and opened here; the server stores them
        // (admin tokens only) and never removes the last one.
        let repo = super::remote::open(location)?;
        let repository_id = repo.config().repository_id.clone();
        return manage(&repo.key_slots(), &repository_id, repo.unlocked()?, command);
    }
    let name = match &command {
        KeyCommand::List(_) => {
            let repo = open(path)?;
            return manage(repo.store(), &repo.config().repository_id, repo.unlocked()?, command);
        }
        KeyCommand::Add(_) => "strata key add",
        KeyCommand::Remove { .. } => "strata key remove",
        KeyCommand::Passwd(_) => "strata key passwd",
    };
    let repo = open_exclusive(path, name)?;
    manage(repo.store(), &repo.config().repository_id, repo.unlocked()?, command)
}

/// Runs `command` on the key slots in `store`, with the slot the
/// password opened.
fn manage(store: &dyn ObjectStore, repository_id: &str, unlocked: &Unlocked, command: KeyCommand) -> Result<Status> {
    match command {
        KeyCommand::List(json) => {
            let slots = keys::list(store, unlocked)?;
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
            let id = with_new_key(&args, |key| keys::add(store, repository_id, unlocked, key))?;
            report("added key slot", &id.to_string(), args.json.json)?;
        }
        KeyCommand::Remove { id, force } => {
            let removed = keys::remove(store, unlocked, &id, force)?;
            out!("removed key slot {removed}");
        }
        KeyCommand::Passwd(args) => {
            let id = with_new_key(&args, |key| keys::change_password(store, repository_id, unlocked, key))?;
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
