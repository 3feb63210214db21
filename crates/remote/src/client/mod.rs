//! The client side: a repository behind a server, for readers
//! ([`RemoteRepository`]) and for data movers ([`with_remote_session`]).

pub mod connection;
pub mod maintenance;
mod prefetch;
pub mod repository;
pub mod session;

pub use connection::{ClientOptions, DEFAULT_TRIES};
pub use maintenance::Maintenance;
pub use repository::RemoteRepository;
pub use session::{with_remote_session, RemoteSession};
