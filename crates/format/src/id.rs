//! Typed identifiers. Chunks and restore points are named by the BLAKE3 hash
//! of their bytes; packs by the first 16 bytes of the BLAKE3 hash of the
//! whole pack file, so every name can be verified against its content.

use std::fmt;
use std::str::FromStr;

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some(Self(bytes.try_into().ok()?))
            }

            /// The first eight hex digits, as shown to people.
            pub fn short(&self) -> String {
                self.to_string()[..8].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex(s).map(Self).ok_or_else(|| {
                    format!("{s:?} is not a {}-digit hex {}", $len * 2, stringify!($name))
                })
            }
        }
    };
}

hash_id!(
    /// BLAKE3 of a chunk's plaintext: file data, or an encoded tree.
    ChunkId, 32
);
hash_id!(
    /// First 16 bytes of BLAKE3 over a whole pack file.
    PackId, 16
);
hash_id!(
    /// BLAKE3 of a restore point's encoded manifest.
    RestorePointId, 32
);

impl ChunkId {
    /// The plain BLAKE3 id of `data`: the id of an unencrypted repository
    /// (format version 1). Code that may write to an encrypted repository
    /// takes ids from its [`IdKey`] instead.
    pub fn of(data: &[u8]) -> Self {
        IdKey::PLAIN.chunk_id(data)
    }
}

/// How a repository names chunks and restore points: the plain BLAKE3 of
/// their plaintext, or, in an encrypted repository, BLAKE3 keyed with a key
/// derived from the master key, so that an id reveals nothing about the
/// content to anyone without the key (no "does it hold this file?").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdKey(Option<[u8; 32]>);

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "IdKey(keyed)" } else { "IdKey(plain)" })
    }
}

impl IdKey {
    pub const PLAIN: IdKey = IdKey(None);

    pub fn keyed(key: [u8; 32]) -> Self {
        IdKey(Some(key))
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// A hasher computing ids this way, for content fed in pieces.
    pub fn hasher(&self) -> blake3::Hasher {
        match &self.0 {
            Some(key) => blake3::Hasher::new_keyed(key),
            None => blake3::Hasher::new(),
        }
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(self.hash(data))
    }

    pub fn restore_point_id(&self, manifest: &[u8]) -> RestorePointId {
        RestorePointId(self.hash(manifest))
    }

    fn hash(&self, data: &[u8]) -> [u8; 32] {
        match &self.0 {
            Some(key) => *blake3::keyed_hash(key, data).as_bytes(),
            None => *blake3::hash(data).as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.short().len(), 8);
        assert!("zz".parse::<PackId>().is_err());
    }
}
