//! Repositories behind a server (`--repo https://HOST:PORT/NAME`): the
//! client options from the command line and the environment, and which
//! commands work through a server.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use strata::reader::RepositoryReader;
use strata::remote::client::{ClientOptions, RemoteRepository, DEFAULT_TRIES};
use strata::remote::protocol::RemoteLocation;
use strata::remote::tls::Trust;

use super::args::RemoteArgs;

static ARGS: std::sync::OnceLock<RemoteArgs> = std::sync::OnceLock::new();

pub fn install(args: RemoteArgs) {
    let _ = ARGS.set(args);
}

/// The server location `path` names, if it names one.
pub fn location(path: &Path) -> Result<Option<RemoteLocation>> {
    match path.to_str().and_then(RemoteLocation::parse) {
        Some(parsed) => Ok(Some(parsed?)),
        None => Ok(None),
    }
}

/// Refuses a command that works only on a repository this process opens
/// itself.
pub fn refuse(path: &Path, command: &str) -> Result<()> {
    if location(path)?.is_some() {
        bail!(
            "{command} is not available through a repository server: run it against the repository itself (on the server's host, with the server stopped)"
        );
    }
    Ok(())
}

fn options() -> Result<ClientOptions> {
    let args = ARGS.get().context("client options not installed")?;
    let token = match &args.token_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the API token from {}", file.display()))?
            .trim()
            .to_string(),
        None => std::env::var("STRATA_TOKEN").map_err(|_| {
            anyhow::anyhow!("a repository behind a server needs an API token: set STRATA_TOKEN or give --token-file FILE")
        })?,
    };
    let trust = match &args.fingerprint {
        Some(fingerprint) => Trust::Fingerprint(fingerprint.clone()),
        None => Trust::Authorities(args.cacert.clone()),
    };
    Ok(ClientOptions {
        token,
        trust,
        tries: std::env::var("STRATA_REMOTE_TRIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_TRIES),
        limit_upload: args.limit_upload,
    })
}

pub fn open(location: RemoteLocation) -> Result<RemoteRepository> {
    let password = super::password::source();
    Ok(RemoteRepository::open(location, &options()?, Some(&password))?)
}

/// A repository to read: in this process, or behind a server.
pub fn open_reader(path: &Path) -> Result<Arc<dyn RepositoryReader>> {
    Ok(match location(path)? {
        Some(location) => Arc::new(open(location)?),
        None => Arc::new(super::open(path)?),
    })
}

/// Where this machine keeps its memory of repositories behind servers
/// (the data mover's file cache): ~/.cache/strata/remote.
pub fn cache_root() -> Result<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => std::path::PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("strata").join("remote"))
}
