//! The node's decisions without I/O: who to dial and when, one session per
//! peer, trust changes, and replication (announce → pull → relay, defer while
//! a pull runs, quotas). Inputs go in with the time they happen at; what the
//! node should do comes out as [`Io`] actions. Time and randomness are inputs
//! (the caller's clock, a seeded RNG): the same inputs and seed give the same
//! actions, which is what lets a test or a simulator run many nodes in one
//! process with a virtual clock.
//!
//! The tokio shell (the dialer, the session driver, the replicator task)
//! feeds these machines and carries out their actions: it moves bytes, runs
//! store work on blocking threads, and reports the results back as inputs.

pub mod replication;
pub(crate) mod sessions;
