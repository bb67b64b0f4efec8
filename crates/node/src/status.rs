//! The status file: how `mmogit serve` tells other processes (e.g.
//! `mmogit p2p status`) which peers it is connected to.
//!
//! Schema (JSON object, `version` 1; times are Unix milliseconds):
//!
//! ```json
//! {
//!   "version": 1,
//!   "pid": 4242,                      // the serving process
//!   "running": true,                  // false once the node shut down cleanly
//!   "started_at_ms": 1735689600000,
//!   "updated_at_ms": 1735689612345,   // rewritten at least every 5 s while running
//!   "pubkey": "<64 hex>",             // the node's key
//!   "listen_addr": "0.0.0.0:7420",
//!   "inbound_connections": 3,         // open inbound TCP connections (incl. handshakes)
//!   "rate_limited": 0,                // inbound attempts refused by the per-IP rate limit
//!   "evicted": 0,                     // unauthenticated connections closed to make room (slots full)
//!   "slow_dropped": 0,                // sessions closed: the peer took no data for the send timeout
//!   "peers": [ {
//!     "pubkey": "<64 hex>",
//!     "connected": true,
//!     "direction": "out",             // "in" | "out" | null
//!     "addr": "192.0.2.7:7420",       // session address, else the last address dialled
//!     "connected_since_ms": 1735689601000,
//!     "last_seen_ms": 1735689612000,
//!     "rtt_us": 412,
//!     "backoff_ms": 1000,             // dialled peers: next failure's delay (un-jittered)
//!     "next_attempt_ms": null,        // dialled peers without a session
//!     "failures": 0,
//!     "last_error": null
//!   } ]
//! }
//! ```
//!
//! The file is replaced atomically (temporary file + rename) on every change,
//! at most twice a second. A reader tells a stale file from a live one with
//! [`StatusFile::is_live`]: `running` and the process `pid` still exists
//! (a crashed node leaves `running: true` behind).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use mmogit_identity::PublicKey;
use serde::{Deserialize, Serialize};

use crate::registry::PeerStatus;

/// Schema version written.
pub const STATUS_VERSION: u32 = 1;

/// The contents of the status file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    pub version: u32,
    pub pid: u32,
    pub running: bool,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub pubkey: PublicKey,
    pub listen_addr: String,
    #[serde(default)]
    pub inbound_connections: usize,
    #[serde(default)]
    pub rate_limited: u64,
    #[serde(default)]
    pub evicted: u64,
    #[serde(default)]
    pub slow_dropped: u64,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

impl StatusFile {
    /// True when the writing node is still running: `running` is set and
    /// its process exists (on systems where that cannot be checked, `running`
    /// alone decides). A reused pid can make a crashed node look alive.
    pub fn is_live(&self) -> bool {
        self.running && pid_alive(self.pid).unwrap_or(true)
    }
}

/// Whether a process with this id exists; `None` when unknown (no `/proc`).
pub fn pid_alive(pid: u32) -> Option<bool> {
    if pid == std::process::id() {
        return Some(true);
    }
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return None;
    }
    Some(proc_root.join(pid.to_string()).exists())
}

/// Errors reading the status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read status file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("status file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl StatusError {
    /// True when the file does not exist (no node has run with this path).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StatusError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads and parses the status file at `path`.
pub fn read_status(path: &Path) -> Result<StatusFile, StatusError> {
    let data = fs::read(path).map_err(|source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| StatusError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: StatusFile = serde_json::from_slice(&data).map_err(|e| corrupt(e.to_string()))?;
    if file.version != STATUS_VERSION {
        return Err(corrupt(format!("unsupported version {}", file.version)));
    }
    Ok(file)
}

/// Writes `status` to `path` atomically (temporary file in the same
/// directory, then rename).
pub(crate) fn write_status(path: &Path, status: &StatusFile) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    json.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("status.json");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmogit_identity::Identity;

    #[test]
    fn round_trip_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let pk = Identity::from_secret_bytes(&[1; 32]).public_key();
        let mut s = StatusFile {
            version: STATUS_VERSION,
            pid: std::process::id(),
            running: true,
            started_at_ms: 1,
            updated_at_ms: 2,
            pubkey: pk,
            listen_addr: "127.0.0.1:7420".into(),
            inbound_connections: 0,
            rate_limited: 0,
            evicted: 0,
            slow_dropped: 0,
            peers: vec![PeerStatus {
                pubkey: pk,
                connected: true,
                direction: Some(crate::Direction::Outbound),
                addr: Some("127.0.0.1:1".into()),
                connected_since_ms: Some(1),
                last_seen_ms: Some(2),
                rtt_us: Some(3),
                backoff_ms: Some(1000),
                next_attempt_ms: None,
                failures: 0,
                last_error: None,
            }],
        };
        write_status(&path, &s).unwrap();
        let back = read_status(&path).unwrap();
        assert_eq!(back, s);
        assert!(back.is_live());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"direction\": \"out\""), "{text}");
        s.running = false;
        assert!(!s.is_live());
        s.running = true;
        s.pid = u32::MAX - 1; // no such process
        if pid_alive(1).is_some() {
            assert!(!s.is_live());
        }
        assert!(read_status(&dir.path().join("nope"))
            .unwrap_err()
            .is_not_found());
        fs::write(&path, b"{").unwrap();
        assert!(matches!(
            read_status(&path),
            Err(StatusError::Corrupt { .. })
        ));
    }
}
