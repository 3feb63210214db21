//! Many machines, one repository: the repository server (`strata
//! server`) and the client that data movers, restores and mounts use to
//! reach a repository through it.
//!
//! ```text
//!  data mover ─▶ RemoteSession (BackupSession) ─┐                 ┌─▶ Repository<Exclusive>, key withheld
//!  restore, mount ─▶ RemoteRepository (RepositoryReader) ─▶ HTTPS ─▶ server ─┤
//!                                                                   └─▶ sessions, claims, tokens
//! ```
//! The key never leaves the clients: movers seal chunks and packs before
//! they upload them, readers open what the server sends. The wire format
//! is in `protocol` and docs/PROTOCOL.md.

pub mod client;
pub mod protocol;
pub mod server;
pub mod throttle;
pub mod tls;
pub mod tokens;
