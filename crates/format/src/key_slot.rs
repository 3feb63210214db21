//! Key slots (`keys/<id>`): the master key of an encrypted repository,
//! wrapped by a key derived from one password with Argon2id.
//!
//! A repository has one slot per password. Changing a password writes a
//! new slot and removes the old one; the master key, and so every object
//! sealed with it, never changes. A slot ends with a plain BLAKE3 checksum
//! so that a damaged slot is told apart from a wrong password, which an
//! authenticated cipher alone cannot do.

use std::fmt;
use std::str::FromStr;

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::codec::{Decoder, Encoder};
use crate::crypto::{random_bytes, MasterKey, ObjectKey, MASTER_KEY_LEN, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::format::{KEY_SLOT_MAGIC, KEY_SLOT_VERSION};

const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;

/// Argon2id's cost. The defaults take about half a second on the project's
/// machine (figures in `docs/FORMAT.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl KdfParams {
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 128 * 1024,
        passes: 4,
        lanes: 1,
    };
    /// The cheapest cost there is, for tests that open repositories many
    /// times; never for a real password.
    #[doc(hidden)]
    pub const CHEAPEST: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };
    /// Bounds on what a slot may ask for: a slot is read before anything
    /// is authenticated, so a hostile one must not make us allocate
    /// terabytes or spin for hours.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_PASSES: u32 = 64;
    const MAX_LANES: u32 = 16;

    pub fn validate(&self) -> Result<()> {
        let ok = (1..=Self::MAX_LANES).contains(&self.lanes)
            && (1..=Self::MAX_PASSES).contains(&self.passes)
            && (8 * self.lanes..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "Argon2id parameters out of range: {} KiB, {} passes, {} lanes (at most {} KiB, {} passes, {} lanes)",
                self.memory_kib,
                self.passes,
                self.lanes,
                Self::MAX_MEMORY_KIB,
                Self::MAX_PASSES,
                Self::MAX_LANES
            )))
        }
    }

    fn derive(&self, password: &[u8], salt: &[u8; SALT_LEN]) -> Result<ObjectKey> {
        let params = Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| Error::InvalidInput(format!("Argon2id parameters: {e}")))?;
        let mut key = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, salt, key.as_mut())
            .map_err(|e| Error::InvalidInput(format!("Argon2id: {e}")))?;
        Ok(ObjectKey::new(*key))
    }
}

/// A key slot's name: eight random bytes, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub [u8; 8]);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotId({self})")
    }
}

impl FromStr for SlotId {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a 16-digit hex key slot id");
        if s.len() != 16 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 8];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(SlotId(out))
    }
}

impl SlotId {
    pub fn object_name(&self) -> String {
        format!("keys/{self}")
    }

    pub fn from_object_name(name: &str) -> Option<SlotId> {
        name.strip_prefix("keys/")?.parse().ok()
    }
}

/// One decoded key slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub id: SlotId,
    /// When the slot was made, Unix seconds.
    pub created: i64,
    /// The host it was made on, for people telling slots apart.
    pub host: String,
    pub kdf: KdfParams,
    salt: [u8; SALT_LEN],
    /// The master key sealed with the password's key.
    wrapped: Vec<u8>,
}

impl KeySlot {
    /// A new slot opening `master` with `password`, for the repository
    /// with id `repository_id` (a slot copied into another repository does
    /// not open there).
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        repository_id: &str,
        kdf: KdfParams,
        created: i64,
        host: &str,
    ) -> Result<KeySlot> {
        kdf.validate()?;
        let mut id = [0u8; 8];
        random_bytes(&mut id)?;
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let mut slot = KeySlot {
            id: SlotId(id),
            created,
            host: host.to_string(),
            kdf,
            salt,
            wrapped: Vec::new(),
        };
        let key = kdf.derive(password, &salt)?;
        let aad = slot.aad(repository_id);
        key.seal_into(&aad, master.as_bytes(), &mut slot.wrapped)?;
        Ok(slot)
    }

    /// The master key, or `None` when `password` is not this slot's.
    pub fn open(&self, password: &[u8], repository_id: &str) -> Result<Option<MasterKey>> {
        let key = self.kdf.derive(password, &self.salt)?;
        let mut wrapped = Zeroizing::new(self.wrapped.clone());
        let Ok(plain) = key.open_in_place(&self.aad(repository_id), &mut wrapped) else {
            return Ok(None);
        };
        let bytes: [u8; MASTER_KEY_LEN] = (&*plain)
            .try_into()
            .map_err(|_| Error::corrupt(self.id.object_name(), "wrapped key has the wrong length"))?;
        Ok(Some(MasterKey::from_bytes(bytes)))
    }

    /// Everything before the wrapped key, bound to it so that no field
    /// (the cost, the host) can be changed without the slot failing.
    fn header(&self) -> Encoder {
        let mut e = Encoder::new();
        e.raw(&KEY_SLOT_MAGIC)
            .u16(KEY_SLOT_VERSION)
            .raw(&self.id.0)
            .i64(self.created)
            .bytes(self.host.as_bytes())
            .u8(KDF_ARGON2ID)
            .u32(self.kdf.memory_kib)
            .u32(self.kdf.passes)
            .u32(self.kdf.lanes)
            .raw(&self.salt);
        e
    }

    fn aad(&self, repository_id: &str) -> Vec<u8> {
        let mut aad = b"strata key slot v1\0".to_vec();
        aad.extend_from_slice(repository_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&self.header().into_bytes());
        aad
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = self.header();
        e.raw(&self.wrapped);
        let mut bytes = e.into_bytes();
        let checksum = blake3::hash(&bytes);
        bytes.extend_from_slice(checksum.as_bytes());
        bytes
    }

    /// Decodes the slot stored as `name`, refusing damage (checksum),
    /// unknown versions and costs out of bounds before anything is
    /// derived.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<KeySlot> {
        let damaged = |detail: String| Error::corrupt(format!("key slot {name}"), detail);
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(damaged(format!("only {} bytes long", bytes.len())));
        };
        let (body, checksum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != checksum {
            return Err(damaged("checksum mismatch".into()));
        }
        let mut d = Decoder::new(body, "key slot");
        let decode = |e| damaged(format!("{e}"));
        d.expect_magic(&KEY_SLOT_MAGIC).map_err(decode)?;
        let version = d.u16().map_err(decode)?;
        if version != KEY_SLOT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: format!("key slot {name}"),
                found: version.into(),
                supported: KEY_SLOT_VERSION.into(),
            });
        }
        let id = SlotId(d.array().map_err(decode)?);
        if SlotId::from_object_name(name).is_some_and(|named| named != id) {
            return Err(damaged(format!("it holds slot {id}")));
        }
        let created = d.i64().map_err(decode)?;
        let host = String::from_utf8_lossy(d.bytes().map_err(decode)?).into_owned();
        let kdf_kind = d.u8().map_err(decode)?;
        if kdf_kind != KDF_ARGON2ID {
            return Err(damaged(format!("unknown key derivation {kdf_kind}")));
        }
        let kdf = KdfParams {
            memory_kib: d.u32().map_err(decode)?,
            passes: d.u32().map_err(decode)?,
            lanes: d.u32().map_err(decode)?,
        };
        kdf.validate().map_err(|e| damaged(e.to_string()))?;
        let salt = d.array().map_err(decode)?;
        let wrapped = d.raw(MASTER_KEY_LEN + SEAL_OVERHEAD).map_err(decode)?.to_vec();
        d.finish().map_err(decode)?;
        Ok(KeySlot {
            id,
            created,
            host,
            kdf,
            salt,
            wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams::CHEAPEST;

    #[test]
    fn a_slot_opens_with_its_password_only() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::create(&master, b"secret", "repo-a", CHEAP, 1_700_000_000, "host").unwrap();
        let bytes = slot.encode();
        let name = slot.id.object_name();
        let back = KeySlot::decode(&name, &bytes).unwrap();
        assert_eq!(back, slot);
        let opened = back.open(b"secret", "repo-a").unwrap().unwrap();
        assert_eq!(opened.as_bytes(), master.as_bytes());
        assert!(back.open(b"Secret", "repo-a").unwrap().is_none());
        assert!(back.open(b"secret", "repo-b").unwrap().is_none(), "bound to its repository");
    }

    #[test]
    fn damage_is_named_and_never_mistaken_for_a_wrong_password() {
        let master = MasterKey::generate().unwrap();
        let slot = KeySlot::create(&master, b"pw", "r", CHEAP, 0, "h").unwrap();
        let bytes = slot.encode();
        let name = slot.id.object_name();
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            let err = KeySlot::decode(&name, &flipped).unwrap_err().to_string();
            assert!(err.contains("key slot") && err.contains("damaged"), "byte {i}: {err}");
        }
        assert!(KeySlot::decode(&name, &bytes[..40]).is_err());
        // A hostile slot with a valid checksum but an absurd cost.
        let mut huge = slot.clone();
        huge.kdf.memory_kib = u32::MAX;
        let err = KeySlot::decode(&name, &huge.encode()).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        // Under another slot's name.
        let other = SlotId([9; 8]).object_name();
        assert!(KeySlot::decode(&other, &bytes).is_err());
    }

    #[test]
    fn slot_layout_matches_golden() {
        let master = MasterKey::from_bytes([3; MASTER_KEY_LEN]);
        let mut slot = KeySlot {
            id: SlotId([0x11; 8]),
            created: 1_800_000_000,
            host: "golden".into(),
            kdf: CHEAP,
            salt: [0x22; SALT_LEN],
            wrapped: Vec::new(),
        };
        let key = CHEAP.derive(b"golden password", &slot.salt).unwrap();
        key.seal_with_nonce(&[0x33; 24], &slot.aad("golden-repo"), master.as_bytes(), &mut slot.wrapped);
        let golden = crate::codec::assert_golden("key_slot_v1.bin", &slot.encode());
        let back = KeySlot::decode("keys/1111111111111111", &golden).unwrap();
        let opened = back.open(b"golden password", "golden-repo").unwrap().unwrap();
        assert_eq!(opened.as_bytes(), master.as_bytes());
    }
}
