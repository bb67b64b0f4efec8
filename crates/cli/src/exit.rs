//! Errors become one clear line on stderr and a documented exit code.

use std::process::ExitCode;

use mmogit::api::{NodeError, PeerStoreError, ReplicateError, StoreError};
use mmogit::HomeError;
use mmogit_identity::IdentityError;

/// Exit codes a script can rely on (listed in the README).
pub mod code {
    /// Any failure not listed below.
    pub const FAILURE: u8 = 1;
    /// Bad command line or bad input (clap uses 2 for usage errors too).
    pub const USAGE: u8 = 2;
    /// No identity in the home: run `mmogit init`.
    pub const NOT_INITIALIZED: u8 = 3;
    /// Verification failed: a memory or a history is forged or damaged.
    pub const VERIFICATION_FAILED: u8 = 4;
    /// The key file is unsafe (readable by others) or corrupt.
    pub const KEY_FILE: u8 = 5;
    /// The peer cannot be reached (connection refused, no route, bad address).
    pub const UNREACHABLE: u8 = 10;
    /// Connecting, the handshake or a request timed out.
    pub const TIMEOUT: u8 = 11;
    /// The peer does not trust our key.
    pub const NOT_AUTHORIZED: u8 = 12;
    /// The peer proved another key than the one expected: possible impersonation.
    pub const WRONG_PUBKEY: u8 = 13;
    /// The peer broke the protocol, speaks no common version, or closed the session.
    pub const PROTOCOL: u8 = 14;
}

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

fn identity_code(e: &IdentityError) -> Option<u8> {
    match e {
        IdentityError::KeyFilePermissions { .. } | IdentityError::KeyFileCorrupt { .. } => {
            Some(code::KEY_FILE)
        }
        IdentityError::InvalidPhrase(_) | IdentityError::InvalidPublicKey(_) => Some(code::USAGE),
        _ => None,
    }
}

fn store_code(e: &StoreError) -> Option<u8> {
    match e {
        StoreError::InvalidMemory(_) | StoreError::InvalidQuery(_) => Some(code::USAGE),
        StoreError::NoRepository(_) => Some(code::NOT_INITIALIZED),
        _ => None,
    }
}

fn home_code(e: &HomeError) -> Option<u8> {
    match e {
        HomeError::NotInitialized(_) => Some(code::NOT_INITIALIZED),
        HomeError::BadKey(_) | HomeError::UnknownKey { .. } | HomeError::AmbiguousKey { .. } => {
            Some(code::USAGE)
        }
        HomeError::Identity(e) => identity_code(e),
        HomeError::Store(e) => store_code(e),
        _ => None,
    }
}

fn peers_code(e: &PeerStoreError) -> Option<u8> {
    match e {
        PeerStoreError::NotFound(_)
        | PeerStoreError::Ambiguous { .. }
        | PeerStoreError::PrefixTooShort(_) => Some(code::USAGE),
        _ => None,
    }
}

fn node_code(e: &NodeError) -> Option<u8> {
    match e {
        NodeError::Unreachable { .. } => Some(code::UNREACHABLE),
        NodeError::Timeout(_) => Some(code::TIMEOUT),
        NodeError::NotAuthorized { .. } => Some(code::NOT_AUTHORIZED),
        NodeError::WrongPubkey { .. } | NodeError::KeyNotProven { .. } => Some(code::WRONG_PUBKEY),
        NodeError::VersionMismatch(_)
        | NodeError::PeerClosed(_)
        | NodeError::Protocol(_)
        | NodeError::KeyNeeded => Some(code::PROTOCOL),
        NodeError::PeerStore(e) => peers_code(e),
        _ => None,
    }
}

/// A sync's error: the peer's fault keeps the connection codes; our store
/// failing is a failure of ours (1), never reported as the peer's.
fn replicate_code(e: &ReplicateError) -> Option<u8> {
    match e {
        ReplicateError::Peer(e) => node_code(e),
        ReplicateError::Store(e) => Some(store_code(e).unwrap_or(code::FAILURE)),
        _ => Some(code::FAILURE),
    }
}

/// The code of an error of the library API (None: look at its causes).
fn api_code(e: &mmogit::Error) -> Option<u8> {
    match e {
        mmogit::Error::Home(e) => home_code(e),
        mmogit::Error::Identity(e) => identity_code(e),
        mmogit::Error::Store(e) => store_code(e),
        mmogit::Error::Node(e) => node_code(e),
        mmogit::Error::Peers(e) => peers_code(e),
        mmogit::Error::Usage(_)
        | mmogit::Error::KeyNeeded { .. }
        | mmogit::Error::OwnKey { .. } => Some(code::USAGE),
        mmogit::Error::Unreachable(_) => Some(code::UNREACHABLE),
        _ => None,
    }
}

/// Picks the exit code of an error by looking through its causes.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        let found = if let Some(e) = cause.downcast_ref::<Exit>() {
            Some(e.code)
        } else if let Some(e) = cause.downcast_ref::<mmogit::Error>() {
            api_code(e)
        } else if let Some(e) = cause.downcast_ref::<HomeError>() {
            home_code(e)
        } else if let Some(e) = cause.downcast_ref::<IdentityError>() {
            identity_code(e)
        } else if let Some(e) = cause.downcast_ref::<StoreError>() {
            store_code(e)
        } else if let Some(e) = cause.downcast_ref::<NodeError>() {
            node_code(e)
        } else if let Some(e) = cause.downcast_ref::<ReplicateError>() {
            replicate_code(e)
        } else if let Some(e) = cause.downcast_ref::<PeerStoreError>() {
            peers_code(e)
        } else {
            None
        };
        if let Some(c) = found {
            return c;
        }
    }
    code::FAILURE
}

/// True when the error is a write to a closed stdout (`mmogit recall | head -1`):
/// a normal end for a command-line tool, not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(|e| e.kind())
            .or_else(|| c.downcast_ref::<serde_json::Error>()?.io_error_kind());
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// Makes a `println!` into a closed stdout end the process quietly with
/// success instead of a panic message (the standard macros panic on EPIPE).
pub fn quiet_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Prints `error: <message>` (and its causes with -v) and returns the exit
/// code; a closed stdout is a quiet success.
pub fn report(err: &anyhow::Error, verbose: u8) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err}");
    let mut causes = err.chain().skip(1).peekable();
    if verbose > 0 {
        for c in causes {
            eprintln!("  caused by: {c}");
        }
    } else if causes.peek().is_some() {
        // Keep it to one line unless the cause adds something.
        if let Some(c) = err.chain().nth(1) {
            let s = c.to_string();
            if !err.to_string().contains(&s) {
                eprintln!("  caused by: {s} (-v for details)");
            }
        }
    }
    ExitCode::from(code_of(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_error_says_whose_fault_it_was() {
        let code = |e: ReplicateError| code_of(&anyhow::Error::new(e));
        // The peer broke the protocol or timed out: its codes.
        assert_eq!(
            code(ReplicateError::Peer(NodeError::Protocol(
                "bad chunk".into()
            ))),
            code::PROTOCOL
        );
        assert_eq!(
            code(ReplicateError::Peer(NodeError::Timeout("waiting".into()))),
            code::TIMEOUT
        );
        // Our own store failed: a failure of ours, never the peer's code.
        assert_eq!(
            code(ReplicateError::Store(StoreError::InvalidBundle(
                "disk".into()
            ))),
            code::FAILURE
        );
        assert_eq!(
            code(ReplicateError::Store(StoreError::NoRepository("/x".into()))),
            code::NOT_INITIALIZED
        );
        assert_eq!(
            code(ReplicateError::Worker("panicked".into())),
            code::FAILURE
        );
    }
}
