//! Signed memories stored in git.
//!
//! Every author's memories live on branch `users/<64 hex pubkey>` of one bare
//! git repository, one file per memory at `memories/<2 hex>/<id>.json`, and
//! (for `remember`) one commit per write. Objects are written in process with
//! libgit2; the branch moves with a compare-and-swap, so concurrent writers
//! never lose a memory and a crash never leaves a half-written branch.

mod bundle;
mod index;
mod maintain;
mod memory;
mod pack;
mod packidx;
mod quarantine;
mod query;
mod repo;
mod search;
mod sync;
mod verify;

pub use bundle::{Bundle, BundleError, BundleWriter, BUNDLE_SIGNATURE, INCOMING_DIR};
/// Commit and blob ids, as [`Store`] takes and returns them.
pub use git2::Oid;
pub use index::IndexUpdate;
pub use maintain::{
    GcReport, ObjectCounts, AUTO_CONSOLIDATE_PACKS, DEFAULT_GC_GRACE, DEFAULT_GC_TIMEOUT,
};
pub use memory::{
    format_time, memory_path, parse_time, signing_bytes, MemoryType, NewMemory, UnverifiedMemory,
    VerifiedMemory, FORMAT_VERSION, MAX_CONTENT_BYTES, MAX_MEMORY_FILE_BYTES, MAX_TAGS,
    MAX_TAG_BYTES, SIGNING_DOMAIN,
};
pub use quarantine::{Quarantine, QUARANTINE_DIR};
pub use query::{Filter, RecallKey, RecallResult, Warning};
pub use repo::{branch_name, parse_branch_name, Store, BRANCH_PREFIX, NO_FSYNC_ENV};
pub use search::{fts_query, SearchHit, SearchQuery, SearchResult};
pub use sync::{
    remote_users, BranchIngest, Incoming, IngestReport, IngestStatus, EVIDENCE_PREFIX,
    MAX_EVIDENCE_PER_AUTHOR, QUARANTINE_PREFIX,
};
pub use verify::{Problem, VerifyReport};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid memory: {0}")]
    InvalidMemory(String),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error("no memory repository at {0}: run `mmogit init`")]
    NoRepository(std::path::PathBuf),
    #[error(
        "could not update branch {branch} after {attempts} attempts: other writers kept moving it"
    )]
    Contention { branch: String, attempts: u32 },
    #[error("branch {0} has an unexpected shape: {1}")]
    BadBranch(String, String),
    #[error("`{command}` failed: {message}")]
    GitCommand { command: String, message: String },
    #[error("`{command}` took longer than {}", humantime::format_duration(*after))]
    Timeout {
        command: String,
        after: std::time::Duration,
    },
    /// A git remote could not be read (`git ls-remote` failed).
    #[error("cannot read git repository {remote}: {message}")]
    RemoteUnreadable { remote: String, message: String },
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("search index: {0}")]
    SearchIndex(String),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
