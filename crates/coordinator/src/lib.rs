//! The coordinator and its pool of data movers, with their state in
//! PostgreSQL: the inventory (movers, sources), throttling limits, and a
//! queue of jobs and tasks that movers take work from with `SELECT … FOR
//! UPDATE SKIP LOCKED` leases. Any number of movers and coordinator
//! replicas may run on any number of machines; one coordinator at a time
//! is active (a session advisory lock), the others stand by.
//!
//! ```text
//!  people ─▶ inventory, backup-now, job cancel ─┐
//!                                               ▼
//!  coordinator (leader) ─▶ PostgreSQL ◀─ movers: register, heartbeat,
//!    expire leases, retry,      ▲         claim (dispatch), report
//!    finish jobs                └── standby coordinators wait for the lock
//! ```
//! docs/COORDINATOR.md describes the schema, the dispatch rules and the
//! faults.

pub mod coordinator;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod inventory;
pub mod mover;
pub mod policy;
pub mod report;
pub mod queue;

pub use error::{Error, Result};
