//! Memory exchange and replication over the peer protocol.
//!
//! * Queries: a MemoryRequest with filters is answered with verified
//!   memories, a page per MemoryResponse, with a cursor for more.
//! * Pull: a MemoryRequest with `sync.have` (the requester's branch tips) is
//!   answered with a MemoryResponse carrying `transfer` (size, SHA-256,
//!   chunk count) followed by GitBundle chunks of a bundle of what is new
//!   (built in process), or with `tips` alone when nothing is new. The
//!   receiver writes the chunks to a file in the repository, checks size and
//!   hash, indexes the pack and runs the verified-ingest gate; it then sends
//!   back an `ingested` summary.
//! * Live: [`Replicator::run`] polls our `users/*` tips every
//!   `poll_interval` and announces changed tips (MemoryResponse with `id`
//!   null and `tips`) to every peer session; a node that receives an
//!   announce of tips it lacks pulls. Accepted tips change ours, so the next
//!   poll announces them onward (A → B → C).
//!
//! Between two nodes at most one bundle flows at a time: a node that is
//! sending a bundle to a peer does not pull from it until done, and when
//! two pull requests cross, the node with the lower key answers after its
//! own pull completes (so two large writes never block each other).
//!
//! The decisions (when to announce, pull, defer, give up) are the sans-IO
//! [`crate::service::replication`] machine; this module is its I/O: the
//! [`Replicator`] task that drives it, the answers from our store
//! (`answers`), transfers in and out (`transfer`), and the client calls of
//! `mmogit sync` and `mmogit p2p query` (`client`). Its errors are
//! [`ReplicateError`]s, which keep the peer's faults apart from our store's.

use std::path::PathBuf;
use std::time::Duration;

use mmogit_identity::PublicKey;
use mmogit_proto::MAX_BUNDLE_CHUNK;

mod answers;
mod client;
mod error;
mod replicator;
mod transfer;

pub use crate::service::replication::{ReplicationEvent, MAX_CONCURRENT_QUERIES, QUOTA_PERIOD};
pub use answers::{parse_tips, refusals};
pub use client::{
    query_peer, query_peer_with, since_string, sync_connection, ClientSync, ProgressFn,
    QueryLimits, QueryOutcome, SyncOutcome,
};
pub use error::ReplicateError;
pub use mmogit_proto::{IngestSummary, MemoryRequest};
pub use replicator::Replicator;
pub use transfer::Incoming;

/// Largest bundle bytes per GitBundle chunk (7 MiB).
pub const MAX_CHUNK: usize = MAX_BUNDLE_CHUNK;
/// Default largest transfer: 1 GiB.
pub const DEFAULT_MAX_TRANSFER: u64 = 1 << 30;
/// Most memories per query page.
pub const QUERY_PAGE: usize = 500;
/// Query pages stay under this many bytes of JSON (the frame limit is 10 MiB
/// after base64).
const QUERY_PAGE_BYTES: usize = 6 * 1024 * 1024;
/// A query that more memories match than this is answered with an error
/// (each match is sorted): narrow it with authors, types, tags or since.
pub const QUERY_MAX_MATCHES: usize = 1_000_000;
/// A query is worked on only when at most this many messages wait in the
/// session's queue.
const QUERY_QUEUED_AT_MOST: usize = 2;
/// How long a send may wait for room in a session's queue (only in tasks
/// of one session: the replicator's own loop never waits on a session).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// The bare memory repository.
    pub repo: PathBuf,
    /// Our key.
    pub me: PublicKey,
    /// Serve only our own branch (default: every `users/*` branch we hold).
    pub serve_own_only: bool,
    /// Largest bundle sent or received (default 1 GiB).
    pub max_transfer: u64,
    /// Sending rate limit in bytes per second (default none).
    pub max_rate: Option<u64>,
    /// Bundle bytes per GitBundle chunk (default and maximum 7 MiB).
    pub chunk_size: usize,
    /// How often our tips are polled for announces (default 100 ms).
    pub poll_interval: Duration,
    /// A pull with no progress for this long is abandoned (default 60 s).
    pub transfer_timeout: Duration,
    /// A pull still running after this long is abandoned, progress or not
    /// (default 1 hour: 1 GiB at 300 KB/s).
    pub transfer_deadline: Duration,
    /// Bundle bytes taken from one peer per day (default 1 GiB): a transfer
    /// that would go past it is refused. Relayed memories count against the
    /// peer that sent them.
    pub quota_bytes: u64,
    /// Memories accepted from one peer per day (default 1,000,000): once
    /// reached, that peer is not pulled from until the day is over.
    pub quota_memories: u64,
}

impl ReplicatorConfig {
    pub fn new(repo: PathBuf, me: PublicKey) -> ReplicatorConfig {
        ReplicatorConfig {
            repo,
            me,
            serve_own_only: false,
            max_transfer: DEFAULT_MAX_TRANSFER,
            max_rate: None,
            chunk_size: MAX_BUNDLE_CHUNK,
            poll_interval: Duration::from_millis(100),
            transfer_timeout: Duration::from_secs(60),
            transfer_deadline: Duration::from_secs(3600),
            quota_bytes: 1 << 30,
            quota_memories: 1_000_000,
        }
    }

    fn chunk(&self) -> usize {
        self.chunk_size.clamp(1, MAX_BUNDLE_CHUNK)
    }

    /// The limits the replication machine decides with.
    pub fn policy(&self) -> crate::service::replication::Policy {
        crate::service::replication::Policy {
            me: self.me,
            max_transfer: self.max_transfer,
            transfer_timeout: self.transfer_timeout,
            transfer_deadline: self.transfer_deadline,
            quota_bytes: self.quota_bytes,
            quota_memories: self.quota_memories,
        }
    }
}
