//! The one error type of the API.

use mmogit_identity::{IdentityError, PublicKey};
use mmogit_node::{NodeError, PeerStoreError};
use mmogit_store::StoreError;

use crate::HomeError;

/// Everything an API call can fail with. The display of the wrapped errors
/// is their own (the same lines the CLI prints).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The home: no identity (`mmogit init`), unknown or ambiguous key...
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The key file or a key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The memory repository; [`StoreError::InvalidMemory`] and
    /// [`StoreError::InvalidQuery`] are the caller's mistakes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a signed memory to the branch failed.
    #[error("storing the memory")]
    Write(#[source] StoreError),
    /// The network: unreachable, timeout, not authorized, wrong key...
    #[error(transparent)]
    Node(Box<NodeError>),
    /// The peer store (`peers.json`): unknown or ambiguous peer...
    #[error(transparent)]
    Peers(#[from] PeerStoreError),
    /// Which key to trust at a git remote is not clear: it holds no
    /// `users/<key>` branch or several (`found`); give the peer's key.
    #[error("{}", key_needed(.target, .found))]
    KeyNeeded {
        /// The remote's URL or path.
        target: String,
        /// The authors of its `users/<key>` branches.
        found: Vec<PublicKey>,
    },
    /// The peer at `target` is this agent itself: the address answered with
    /// our key (`git` false), or the git branch to trust is ours.
    #[error("{}", if *.git { format!("{target} is this agent's own branch") } else { format!("{target} is this agent itself") })]
    OwnKey {
        /// The address or git URL.
        target: String,
        /// Whether `target` is a git remote.
        git: bool,
    },
    /// A bad argument (the message says which and why).
    #[error("{0}")]
    Usage(String),
    /// A peer or remote could not be reached (git URL, address).
    #[error("{0}")]
    Unreachable(String),
    /// Something else (an I/O error, a task that died...).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether the caller's input was at fault (bad argument, unknown key,
    /// invalid memory or query) rather than the machine or the network.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::KeyNeeded { .. }
                | Error::OwnKey { .. }
                | Error::Store(StoreError::InvalidMemory(_) | StoreError::InvalidQuery(_))
                | Error::Home(
                    HomeError::BadKey(_)
                        | HomeError::UnknownKey { .. }
                        | HomeError::AmbiguousKey { .. }
                )
                | Error::Peers(
                    PeerStoreError::NotFound(_)
                        | PeerStoreError::Ambiguous { .. }
                        | PeerStoreError::PrefixTooShort(_)
                )
        )
    }
}

impl From<NodeError> for Error {
    fn from(e: NodeError) -> Self {
        Error::Node(Box::new(e))
    }
}

/// `Result` with the API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn key_needed(target: &str, found: &[PublicKey]) -> String {
    if found.is_empty() {
        format!("{target} has no users/<key> branch: pass the peer's key")
    } else {
        let list: Vec<String> = found.iter().map(|k| k.to_hex()).collect();
        format!(
            "{target} holds several agents' branches; choose one by key: {}",
            list.join(", ")
        )
    }
}
