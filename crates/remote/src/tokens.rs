//! API tokens: who may call the server, in which role, for which sources.
//!
//! Kept in `<state>/tokens.json` (mode 0600) with only a BLAKE3 hash of
//! each secret: the secret is 256 random bits, so a fast hash is as good
//! as a slow one, and the file leaks nothing usable. A token is presented
//! as `NAME:SECRET` in `Authorization: Bearer …`; it is printed once, when
//! made.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use strata_engine::error::{Error, IoContext, Result};

use crate::protocol::Role;

const TOKENS_FILE: &str = "tokens.json";
const TOKENS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// Globs (`*`, `?`) of the source names this token may touch.
    pub sources: Vec<String>,
    /// Hex BLAKE3 of the secret.
    hash: String,
    pub created: i64,
}

impl TokenRecord {
    /// Whether this token may touch source `source`.
    pub fn covers(&self, source: &str) -> bool {
        self.sources.iter().any(|glob| glob_matches(glob.as_bytes(), source.as_bytes()))
    }

    /// Whether this token sees every source (restore points whose source
    /// the server cannot know are shown only to such tokens).
    pub fn covers_all(&self) -> bool {
        self.sources.iter().any(|glob| glob == "*")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// The token file of a server's state directory.
pub struct Tokens {
    path: PathBuf,
    /// The file as last read, by its identity and modification time: a
    /// server answers thousands of requests a second, and each would
    /// otherwise read and parse the file again.
    cached: std::sync::Mutex<Option<(FileStamp, Vec<TokenRecord>)>>,
}

/// What changes when the token file is replaced or written.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
        })
    }
}

impl Tokens {
    pub fn in_state(state: &Path) -> Tokens {
        Tokens {
            path: state.join(TOKENS_FILE),
            cached: std::sync::Mutex::new(None),
        }
    }

    /// The tokens, read again only when the file changed (`add` and
    /// `remove` replace it by renaming, which changes its inode).
    fn current(&self) -> Result<Vec<TokenRecord>> {
        let stamp = FileStamp::of(&self.path);
        let mut cached = self.cached.lock().expect("token cache lock");
        if let (Some(stamp), Some((seen, tokens))) = (stamp, cached.as_ref()) {
            if stamp == *seen {
                return Ok(tokens.clone());
            }
        }
        let tokens = self.load()?.tokens;
        *cached = stamp.map(|stamp| (stamp, tokens.clone()));
        Ok(tokens)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<TokensFile> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let file: TokensFile = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt(self.path.display().to_string(), e.to_string()))?;
                if file.version != TOKENS_VERSION {
                    return Err(Error::UnsupportedVersion {
                        what: self.path.display().to_string(),
                        found: u64::from(file.version),
                        supported: u64::from(TOKENS_VERSION),
                    });
                }
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile {
                version: TOKENS_VERSION,
                tokens: Vec::new(),
            }),
            Err(e) => Err(Error::io("reading", &self.path, e)),
        }
    }

    fn save(&self, file: &TokensFile) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).at("creating", dir)?;
        }
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| Error::InvalidInput(e.to_string()))?;
        crate::tls::write_private(&self.path, &bytes)
    }

    /// Makes a token; returns the secret to hand to its user, shown once.
    pub fn add(&self, name: &str, role: Role, sources: Vec<String>) -> Result<String> {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) {
            return Err(Error::InvalidInput(format!(
                "token name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
            )));
        }
        if sources.is_empty() {
            return Err(Error::InvalidInput("a token needs at least one --sources glob ('*' for all)".into()));
        }
        let mut file = self.load()?;
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(Error::InvalidInput(format!("a token named {name:?} exists already; remove it first")));
        }
        let mut secret = [0u8; 32];
        strata_engine::crypto::random_bytes(&mut secret)?;
        let secret = hex::encode(secret);
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        file.tokens.push(TokenRecord {
            name: name.to_string(),
            role,
            sources,
            hash: hash_secret(&secret),
            created,
        });
        self.save(&file)?;
        Ok(format!("{name}:{secret}"))
    }

    pub fn remove(&self, name: &str) -> Result<bool> {
        let mut file = self.load()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Ok(false);
        }
        self.save(&file)?;
        Ok(true)
    }

    pub fn list(&self) -> Result<Vec<TokenRecord>> {
        Ok(self.load()?.tokens)
    }

    /// The token `presented` (`NAME:SECRET`) names, if its secret is right.
    /// The file is checked on each call, so tokens added or removed while
    /// the server runs count at once.
    pub fn authenticate(&self, presented: &str) -> Result<Option<TokenRecord>> {
        let Some((name, secret)) = presented.rsplit_once(':') else {
            return Ok(None);
        };
        let hash = blake3::hash(secret.as_bytes());
        // blake3::Hash compares in constant time.
        Ok(self.current()?.into_iter().find(|t| {
            t.name == name && blake3::Hash::from_hex(&t.hash).is_ok_and(|stored| stored == hash)
        }))
    }
}

fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Shell-style matching of `*` (any run of bytes) and `?` (one byte).
pub fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    // Iterative, with one backtrack point: linear for globs with a single
    // star, and never recursive on hostile input.
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    g = sg + 1;
                    t = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches(b"*", b"anything"));
        assert!(glob_matches(b"web*", b"web01"));
        assert!(!glob_matches(b"web*", b"db01"));
        assert!(glob_matches(b"w?b-*-x", b"web-1-x"));
        assert!(!glob_matches(b"w?b-*-x", b"web-1-y"));
        assert!(glob_matches(b"", b""));
        assert!(!glob_matches(b"", b"a"));
    }

    #[test]
    fn tokens_authenticate_by_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::in_state(dir.path());
        let secret = tokens.add("mover1", Role::Backup, vec!["web*".into()]).unwrap();
        assert!(tokens.add("mover1", Role::Admin, vec!["*".into()]).is_err());
        let found = tokens.authenticate(&secret).unwrap().unwrap();
        assert_eq!(found.role, Role::Backup);
        assert!(found.covers("web01") && !found.covers("db"));
        assert!(tokens.authenticate("mover1:00").unwrap().is_none());
        assert!(tokens.authenticate("nobody").unwrap().is_none());
        assert!(tokens.remove("mover1").unwrap());
        assert!(tokens.authenticate(&secret).unwrap().is_none());
    }
}
