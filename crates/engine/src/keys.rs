//! An encrypted repository's key slots: unlocking it with a password, and
//! listing, adding and removing slots (`strata key`).
//!
//! Each slot (`keys/<id>`, format in `key_slot`) wraps the one master key
//! with one password. Opening costs one Argon2id derivation per slot tried;
//! the master key then stays in memory for the life of the `Repository`.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::crypto::{MasterKey, Protection};
use crate::error::{Error, Result};
use crate::key_slot::{KdfParams, KeySlot, SlotId};
use crate::storage::ObjectStore;

/// A password, wiped from memory when dropped.
#[derive(Clone)]
pub struct Password(Zeroizing<Vec<u8>>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Self {
        Password(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where the password of an encrypted repository comes from (a terminal,
/// a file, a command): asked only when the repository is encrypted, and
/// only once per open.
pub trait PasswordSource: Send + Sync {
    /// The password of the repository at `location`.
    fn password(&self, location: &str) -> Result<Password>;
}

/// A password known in advance (tests, and callers that asked already).
pub struct FixedPassword(pub Password);

impl PasswordSource for FixedPassword {
    fn password(&self, _location: &str) -> Result<Password> {
        Ok(self.0.clone())
    }
}

/// The password and cost of a repository's first key slot.
pub struct NewKey<'a> {
    pub password: &'a Password,
    pub kdf: KdfParams,
}

/// The keys of an opened encrypted repository.
pub struct Unlocked {
    master: MasterKey,
    /// The slot the password opened.
    pub slot: SlotId,
}

impl std::fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unlocked(slot {})", self.slot)
    }
}

impl Unlocked {
    pub fn protection(&self) -> Protection {
        Protection::encrypted(&self.master)
    }
}

/// What `strata key list` shows of a slot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotInfo {
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    pub host: String,
    pub memory_kib: u32,
    pub passes: u32,
    /// Whether this is the slot the password given opened.
    pub in_use: bool,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes a new slot for `master`; durable when this returns.
fn write_slot(
    store: &dyn ObjectStore,
    repository_id: &str,
    master: &MasterKey,
    key: &NewKey<'_>,
) -> Result<SlotId> {
    if key.password.as_bytes().is_empty() {
        return Err(Error::InvalidInput("refusing an empty password".into()));
    }
    let slot = KeySlot::create(
        master,
        key.password.as_bytes(),
        repository_id,
        key.kdf,
        crate::clock::now().sec,
        &hostname(),
    )?;
    store.put(&slot.id.object_name(), &slot.encode())?;
    Ok(slot.id)
}

/// Makes the keys of a new repository and its first slot.
pub fn create(store: &dyn ObjectStore, repository_id: &str, key: &NewKey<'_>) -> Result<Unlocked> {
    let master = MasterKey::generate()?;
    let slot = write_slot(store, repository_id, &master, key)?;
    Ok(Unlocked { master, slot })
}

/// The names of the slots in `store`.
pub fn slot_names(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut names = store.list_all("keys/")?;
    names.retain(|n| SlotId::from_object_name(n).is_some());
    names.sort();
    Ok(names)
}

/// Opens the repository's master key with `password`, trying each slot.
pub fn unlock(store: &dyn ObjectStore, repository_id: &str, password: &Password) -> Result<Unlocked> {
    let names = slot_names(store)?;
    if names.is_empty() {
        return Err(Error::corrupt(
            format!("repository {}", store.location()),
            "it is encrypted but has no key slots under keys/",
        ));
    }
    let mut damaged = Vec::new();
    let mut tried = 0;
    for name in &names {
        let slot = match store.get(name).and_then(|bytes| KeySlot::decode(name, &bytes)) {
            Ok(slot) => slot,
            Err(e) => {
                tracing::warn!(slot = %name, error = %e, "skipping a key slot");
                damaged.push(e.to_string());
                continue;
            }
        };
        tried += 1;
        if let Some(master) = slot.open(password.as_bytes(), repository_id)? {
            tracing::debug!(slot = %slot.id, "unlocked");
            return Ok(Unlocked {
                master,
                slot: slot.id,
            });
        }
    }
    if tried == 0 {
        return Err(Error::corrupt(
            format!("repository {}", store.location()),
            format!("no key slot can be read: {}", damaged.join("; ")),
        ));
    }
    let mut detail = format!("none of its {tried} key slots opens with it");
    if !damaged.is_empty() {
        detail += &format!(" (and {} damaged: {})", damaged.len(), damaged.join("; "));
    }
    Err(Error::WrongPassword {
        repository: store.location(),
        detail,
    })
}

/// Every slot, as `key list` shows them; a damaged slot is an error
/// naming it.
pub fn list(store: &dyn ObjectStore, unlocked: &Unlocked) -> Result<Vec<SlotInfo>> {
    slot_names(store)?
        .iter()
        .map(|name| {
            let slot = KeySlot::decode(name, &store.get(name)?)?;
            Ok(SlotInfo {
                id: slot.id.to_string(),
                created: slot.created,
                host: slot.host,
                memory_kib: slot.kdf.memory_kib,
                passes: slot.kdf.passes,
                in_use: slot.id == unlocked.slot,
            })
        })
        .collect()
}

/// Adds a slot opening the repository with another password.
pub fn add(
    store: &dyn ObjectStore,
    repository_id: &str,
    unlocked: &Unlocked,
    key: &NewKey<'_>,
) -> Result<SlotId> {
    write_slot(store, repository_id, &unlocked.master, key)
}

/// The one slot whose id starts with `prefix`.
fn find(store: &dyn ObjectStore, prefix: &str) -> Result<SlotId> {
    let matching: Vec<SlotId> = slot_names(store)?
        .iter()
        .filter_map(|n| SlotId::from_object_name(n))
        .filter(|id| !prefix.is_empty() && id.to_string().starts_with(&prefix.to_ascii_lowercase()))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::InvalidInput(format!("no key slot {prefix:?}"))),
        _ => Err(Error::InvalidInput(format!(
            "{prefix:?} matches {} key slots; give more digits",
            matching.len()
        ))),
    }
}

/// Removes slot `prefix`. The last slot is never removed (the data would
/// be lost with it), and the one in use only with `force`.
pub fn remove(store: &dyn ObjectStore, unlocked: &Unlocked, prefix: &str, force: bool) -> Result<SlotId> {
    let id = find(store, prefix)?;
    if slot_names(store)?.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "key slot {id} is the repository's last: without it nothing could be read; add another first"
        )));
    }
    if id == unlocked.slot && !force {
        return Err(Error::InvalidInput(format!(
            "key slot {id} is the one this password opened; add --force to remove it"
        )));
    }
    store.delete(&id.object_name())?;
    Ok(id)
}

/// Replaces the slot in use with one for a new password. The new slot is
/// durable before the old one goes, so a crash leaves one or both.
pub fn change_password(
    store: &dyn ObjectStore,
    repository_id: &str,
    unlocked: &Unlocked,
    key: &NewKey<'_>,
) -> Result<SlotId> {
    let new = write_slot(store, repository_id, &unlocked.master, key)?;
    store.delete(&unlocked.slot.object_name())?;
    Ok(new)
}

/// The protection of a repository: none for format version 1, else its
/// keys, unlocked with the password `source` gives.
pub(crate) fn protection_for(
    store: &dyn ObjectStore,
    config: &crate::config::RepoConfig,
    source: Option<&Arc<dyn PasswordSource>>,
) -> Result<(Protection, Option<Arc<Unlocked>>)> {
    if !config.is_encrypted() {
        if !slot_names(store)?.is_empty() {
            // Someone turned an encrypted repository's configuration into
            // an unencrypted one: writing would store data in the clear.
            return Err(Error::corrupt(
                format!("repository {}", store.location()),
                "config.json says it is unencrypted, but it has key slots under keys/",
            ));
        }
        return Ok((Protection::none(), None));
    }
    let Some(source) = source else {
        return Err(Error::PasswordRequired {
            repository: store.location(),
            detail: "no password was given".into(),
        });
    };
    let password = source.password(&store.location())?;
    let unlocked = unlock(store, &config.repository_id, &password)?;
    Ok((unlocked.protection(), Some(Arc::new(unlocked))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    const CHEAP: KdfParams = KdfParams::CHEAPEST;

    fn password(text: &str) -> Password {
        Password::new(text.as_bytes().to_vec())
    }

    fn key(password: &Password) -> NewKey<'_> {
        NewKey {
            password,
            kdf: CHEAP,
        }
    }

    #[test]
    fn slots_open_with_their_passwords_and_share_one_master_key() {
        let store = MemoryStore::new();
        let (first, second) = (password("first"), password("second"));
        let created = create(&store, "repo", &key(&first)).unwrap();
        let added = add(&store, "repo", &created, &key(&second)).unwrap();
        let by_first = unlock(&store, "repo", &first).unwrap();
        let by_second = unlock(&store, "repo", &second).unwrap();
        assert_eq!(by_second.slot, added);
        assert_eq!(by_first.master.as_bytes(), by_second.master.as_bytes());
        let listed = list(&store, &by_second).unwrap();
        assert_eq!(listed.iter().filter(|s| s.in_use).count(), 1);
        let err = unlock(&store, "repo", &password("third")).unwrap_err();
        assert!(matches!(err, Error::WrongPassword { .. }), "{err}");
        assert!(unlock(&store, "other repo", &first).is_err(), "slots are bound to their repository");
    }

    #[test]
    fn removing_and_changing_keep_at_least_one_slot() {
        let store = MemoryStore::new();
        let (old, new) = (password("old"), password("new"));
        let unlocked = create(&store, "r", &key(&old)).unwrap();
        let in_use = unlocked.slot.to_string();
        let err = remove(&store, &unlocked, &in_use, true).unwrap_err().to_string();
        assert!(err.contains("last"), "{err}");
        let changed = change_password(&store, "r", &unlocked, &key(&new)).unwrap();
        assert!(matches!(unlock(&store, "r", &old), Err(Error::WrongPassword { .. })));
        let reopened = unlock(&store, "r", &new).unwrap();
        assert_eq!(reopened.slot, changed);
        assert_eq!(reopened.master.as_bytes(), unlocked.master.as_bytes());
        let spare = add(&store, "r", &reopened, &key(&old)).unwrap();
        let err = remove(&store, &reopened, &changed.to_string(), false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(remove(&store, &reopened, &spare.to_string()[..6], false).unwrap(), spare);
    }

    #[test]
    fn a_damaged_slot_is_named_and_the_others_still_open() {
        let store = MemoryStore::new();
        let (a, b) = (password("a"), password("b"));
        let unlocked = create(&store, "r", &key(&a)).unwrap();
        add(&store, "r", &unlocked, &key(&b)).unwrap();
        let name = unlocked.slot.object_name();
        store.flip_byte(&name, 20).unwrap();
        assert!(unlock(&store, "r", &b).is_ok());
        let err = unlock(&store, "r", &a).unwrap_err().to_string();
        assert!(err.contains("wrong password") && err.contains("damaged"), "{err}");
        let err = list(&store, &unlock(&store, "r", &b).unwrap()).unwrap_err().to_string();
        assert!(err.contains(&name) && err.contains("checksum"), "{err}");
    }
}
