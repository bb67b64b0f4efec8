//! Reaching peers and trusting them (`mmogit p2p connect`, `mmogit p2p add`).

use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::{Connection, NodeError, PeerRecord, PeerSource, PeerStore};
use mmogit_store::StoreError;

use super::error::{Error, Result};
use super::sync::client_config;
use crate::Home;

/// Connects to the node at `addr` ("ip:port" or "host:port") and completes
/// the authenticated handshake. With `expected`, a peer proving any other
/// key is refused ([`NodeError::WrongPubkey`]: possible impersonation).
pub async fn connect_to_peer(
    addr: &str,
    identity: Arc<Identity>,
    expected: Option<PublicKey>,
    timeout: Duration,
) -> Result<Connection> {
    Ok(mmogit_node::connect(addr, identity, expected, &client_config(timeout)).await?)
}

/// What [`Peering::add_peer`] did.
#[derive(Debug, Clone)]
pub struct PeerAdded {
    /// The peer record as saved (trusted).
    pub record: PeerRecord,
    /// How long the handshake took (address peers that answered).
    pub rtt: Option<Duration>,
    /// A remark: the peer does not trust us yet, or was unreachable and
    /// added on the given key.
    pub note: Option<String>,
}

/// Adds and trusts peers, with the semantics of `mmogit p2p add`.
///
/// ```no_run
/// # async fn demo(bob: mmogit::identity::PublicKey) -> Result<(), mmogit::Error> {
/// use mmogit::{Agent, Peering, Home};
/// let agent = Agent::open(Home::resolve(None)?)?;
/// let added = Peering::new(agent.home().clone(), agent.identity()?.clone())
///     .add_peer("192.0.2.10:7420", Some(bob))
///     .await?;
/// assert!(added.record.trust == mmogit::node::TrustState::Trusted);
/// # Ok(()) }
/// ```
pub struct Peering {
    home: Home,
    identity: Arc<Identity>,
    name: Option<String>,
    timeout: Duration,
}

impl Peering {
    /// Peer management for `home`, acting as `identity`.
    pub fn new(home: Home, identity: Arc<Identity>) -> Peering {
        Peering {
            home,
            identity,
            name: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// A name for the peers added next (usable instead of their key).
    pub fn name(mut self, name: impl Into<String>) -> Peering {
        self.name = Some(name.into());
        self
    }

    /// How long to wait for a peer or a git remote (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Peering {
        self.timeout = timeout;
        self
    }

    /// Trusts a peer by `ip:port` or by git URL (or path).
    ///
    /// An address: connects and completes the handshake; the peer must
    /// prove `pubkey` when given. Without `pubkey` the key the peer shows is
    /// trusted (check it with its owner). A peer that does not trust us yet
    /// is added all the same (a note says so), and so is an unreachable one
    /// when `pubkey` is given.
    ///
    /// A git URL: adds git remote `peer_<8 hex>` to the memory repository;
    /// the key is `pubkey`, or that of the remote's single `users/<key>` branch.
    pub async fn add_peer(&self, target: &str, pubkey: Option<PublicKey>) -> Result<PeerAdded> {
        if is_address(target) && !target.contains('/') {
            self.add_address(target, pubkey).await
        } else {
            let (home, me, name, timeout) = (
                self.home.clone(),
                self.identity.public_key(),
                self.name.clone(),
                self.timeout,
            );
            let target = target.to_string();
            tokio::task::spawn_blocking(move || add_git(&home, &me, &target, pubkey, name, timeout))
                .await
                .map_err(|e| Error::Other(format!("add peer task: {e}")))?
        }
    }

    async fn add_address(&self, addr: &str, pubkey: Option<PublicKey>) -> Result<PeerAdded> {
        let me = self.identity.public_key();
        let cfg = client_config(self.timeout);
        let (pk, rtt, note) =
            match mmogit_node::connect(addr, self.identity.clone(), pubkey, &cfg).await {
                Ok(conn) => {
                    let pk = conn.peer_pubkey();
                    let rtt = conn.handshake_rtt();
                    let _ = conn.close("bye").await;
                    (pk, Some(rtt), None)
                }
                Err(NodeError::NotAuthorized { peer: Some(pk) }) => (
                    pk,
                    None,
                    Some(format!(
                        "the peer does not trust you yet; it recorded your key as pending: its owner can run `mmogit p2p accept {}`",
                        me.short(12)
                    )),
                ),
                Err(e @ (NodeError::Unreachable { .. } | NodeError::Timeout(_))) => match pubkey {
                    Some(pk) => (
                        pk,
                        None,
                        Some(format!("{e}; added anyway, `mmogit serve` keeps trying")),
                    ),
                    None => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            };
        if pk == me {
            return Err(Error::Usage(format!("{addr} is this agent itself")));
        }
        let record = PeerStore::update(&self.home.peers_path(), |store| {
            Ok::<_, Error>(
                store
                    .add(
                        pk,
                        self.name.clone(),
                        vec![addr.to_string()],
                        PeerSource::Manual,
                    )
                    .clone(),
            )
        })?;
        Ok(PeerAdded { record, rtt, note })
    }
}

/// Whether `s` looks like `host:port` rather than a peer name or key prefix.
pub(crate) fn is_address(s: &str) -> bool {
    s.parse::<std::net::SocketAddr>().is_ok()
        || s.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

fn add_git(
    home: &Home,
    me: &PublicKey,
    url: &str,
    pubkey: Option<PublicKey>,
    name: Option<String>,
    timeout: Duration,
) -> Result<PeerAdded> {
    let store = home.open_store()?;
    let users = remote_users(url, timeout)?;
    let mut note = None;
    let pk = match (pubkey, users.as_slice()) {
        (Some(pk), _) => {
            if !users.contains(&pk) {
                note = Some(format!("{url} has no branch users/{} yet", pk.short(12)));
            }
            pk
        }
        (None, [one]) => *one,
        (None, []) => {
            return Err(Error::Usage(format!(
                "{url} has no users/<key> branch: pass the peer's key"
            )))
        }
        (None, many) => {
            let list: Vec<String> = many.iter().map(|k| k.to_hex()).collect();
            return Err(Error::Usage(format!(
                "{url} holds several agents' branches; choose one by key: {}",
                list.join(", ")
            )));
        }
    };
    if pk == *me {
        return Err(Error::Usage(format!("{url} is this agent's own branch")));
    }
    let remote = format!("peer_{}", pk.short(8));
    store.set_remote(&remote, url)?;
    let record = PeerStore::update(&home.peers_path(), |peers| {
        peers.add(pk, name, Vec::new(), PeerSource::Git);
        Ok::<_, Error>(
            peers
                .set_git(&pk, Some(url.to_string()), Some(remote))
                .cloned()
                .expect("just added"),
        )
    })?;
    Ok(PeerAdded {
        record,
        rtt: None,
        note,
    })
}

/// The authors of the `users/<key>` branches of a git remote, listed by
/// `git ls-remote` within `timeout` (then [`Error::Node`] with
/// `NodeError::Timeout`); a remote that cannot be read is
/// [`Error::Unreachable`]. (The store runs git: [`mmogit_store::remote_users`].)
pub fn remote_users(url: &str, timeout: Duration) -> Result<Vec<PublicKey>> {
    mmogit_store::remote_users(url, timeout).map_err(|e| match e {
        StoreError::Timeout { .. } => {
            NodeError::Timeout(format!("git ls-remote {url} took longer than {timeout:?}")).into()
        }
        StoreError::RemoteUnreadable { .. } => Error::Unreachable(e.to_string()),
        e => Error::Other(e.to_string()),
    })
}
