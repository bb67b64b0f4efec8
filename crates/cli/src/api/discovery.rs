//! Reaching peers and trusting them (`mmogit p2p connect`, `mmogit p2p add`).

use std::sync::Arc;
use std::time::Duration;

use mmogit_identity::{Identity, PublicKey};
use mmogit_node::discovery::{Candidate, CandidateTable, Discovery, MdnsDiscovery};
use mmogit_node::replicate::{since_string, MemoryRequest, QueryOutcome};
use mmogit_node::{Connection, NodeError, PeerRecord, PeerSource, PeerStore};
use mmogit_store::{Filter, StoreError};

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

/// Asks the peer on `conn` for memories matching `filter`, page after page
/// until its `limit` or the end, each page within `timeout` (`mmogit p2p
/// query`). The protocol carries the kinds, tags, authors, `since` and
/// `limit` of a filter; one that sets anything else is a usage error. Every
/// memory is verified (signature and id); those that do not verify are in
/// `rejected`, with the reason.
pub async fn query_peer(
    conn: &mut Connection,
    filter: &Filter,
    timeout: Duration,
) -> Result<QueryOutcome> {
    if filter.min_confidence.is_some() || filter.after.is_some() || filter.max_matches.is_some() {
        return Err(Error::Usage(
            "a peer query filters by kind, tag, author, time and limit only".into(),
        ));
    }
    let req = MemoryRequest {
        authors: filter.authors.iter().map(|a| a.to_hex()).collect(),
        types: filter
            .kinds
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
        tags: filter.tags.clone(),
        since: filter.since.map(since_string),
        limit: filter.limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        ..Default::default()
    };
    Ok(mmogit_node::replicate::query_peer(conn, req, timeout).await?)
}

/// The mmogit nodes announcing themselves on the local network with mDNS,
/// listened for during `listen` (`mmogit p2p discover`), leaving out
/// `ours`. A node found is only a candidate: nothing is exchanged with it
/// until it is trusted ([`Peering`]). One announcing a private tag
/// resolves to a key only for those who know it
/// ([`Announced::resolve`](super::Announced::resolve)).
pub async fn discover_lan(listen: Duration, ours: Option<PublicKey>) -> Result<Vec<Candidate>> {
    let disc = MdnsDiscovery::new().map_err(|e| Error::Other(format!("cannot start mDNS: {e}")))?;
    let mut rx = disc
        .browse()
        .map_err(|e| Error::Other(format!("cannot browse with mDNS: {e}")))?;
    let mut table = CandidateTable::new(ours);
    let end = tokio::time::Instant::now() + listen;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            ev = rx.recv() => match ev {
                Some(ev) => { table.apply(ev, std::time::Instant::now()); }
                None => break,
            },
        }
    }
    // Withdrawing blocks for about a second.
    tokio::task::spawn_blocking(move || disc.shutdown())
        .await
        .map_err(|e| Error::Other(format!("mDNS shutdown task: {e}")))?;
    Ok(table.candidates())
}

/// What [`Peering::add_peer`] and [`Peering::trust`] did.
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

/// A peer found by [`Peering::probe`] and not trusted yet: the key to trust
/// and how it was learned. Show it to the owner, then
/// [`trust`](Peering::trust) it.
#[derive(Debug, Clone)]
pub struct PeerProbe {
    /// The address (`ip:port`) or git URL probed.
    pub target: String,
    /// The key to trust: the one the peer proved in the handshake or its
    /// remote's single `users/<key>` branch, else the one given.
    pub pubkey: PublicKey,
    /// How long the handshake took (an address that answered).
    pub rtt: Option<Duration>,
    /// A remark: the peer does not trust us yet, was unreachable and is
    /// taken on the given key, or its git remote has no branch of that key yet.
    pub note: Option<String>,
    git: bool,
}

impl PeerProbe {
    /// Whether the peer is reached through a git remote (else directly at
    /// its address).
    pub fn is_git(&self) -> bool {
        self.git
    }
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
#[derive(Clone)]
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

    /// Trusts a peer by `ip:port` or by git URL (or path): [`probe`](Peering::probe),
    /// then [`trust`](Peering::trust).
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
        let probe = self.probe(target, pubkey).await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.trust(&probe))
            .await
            .map_err(|e| Error::Other(format!("add peer task: {e}")))?
    }

    /// Finds out which key the peer at `target` (`ip:port`, or a git URL or
    /// path) has, without trusting it yet (see [`add_peer`](Peering::add_peer)
    /// for what is accepted). Fails with [`Error::OwnKey`] when the key is
    /// this agent's, and for a git remote with [`Error::KeyNeeded`] when
    /// `pubkey` is not given and the remote holds no `users/<key>` branch or
    /// several.
    pub async fn probe(&self, target: &str, pubkey: Option<PublicKey>) -> Result<PeerProbe> {
        if is_address(target) && !target.contains('/') {
            self.probe_address(target, pubkey).await
        } else {
            let (home, me, timeout) = (self.home.clone(), self.identity.public_key(), self.timeout);
            let target = target.to_string();
            tokio::task::spawn_blocking(move || probe_git(&home, &me, &target, pubkey, timeout))
                .await
                .map_err(|e| Error::Other(format!("probe peer task: {e}")))?
        }
    }

    /// Trusts the peer of `probe` in the peer store (`peers.json`, under its
    /// lock), by address, or by git URL after adding git remote
    /// `peer_<8 hex>` to the memory repository. Blocks briefly (files, git).
    pub fn trust(&self, probe: &PeerProbe) -> Result<PeerAdded> {
        let pk = probe.pubkey;
        let record = if probe.git {
            let store = self.home.open_store()?;
            let remote = format!("peer_{}", pk.short(8));
            store.set_remote(&remote, &probe.target)?;
            PeerStore::update(&self.home.peers_path(), |peers| {
                peers.add(pk, self.name.clone(), Vec::new(), PeerSource::Git);
                Ok::<_, Error>(
                    peers
                        .set_git(&pk, Some(probe.target.clone()), Some(remote))
                        .cloned()
                        .expect("just added"),
                )
            })?
        } else {
            PeerStore::update(&self.home.peers_path(), |store| {
                Ok::<_, Error>(
                    store
                        .add(
                            pk,
                            self.name.clone(),
                            vec![probe.target.clone()],
                            PeerSource::Manual,
                        )
                        .clone(),
                )
            })?
        };
        Ok(PeerAdded {
            record,
            rtt: probe.rtt,
            note: probe.note.clone(),
        })
    }

    async fn probe_address(&self, addr: &str, pubkey: Option<PublicKey>) -> Result<PeerProbe> {
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
            return Err(Error::OwnKey {
                target: addr.to_string(),
                git: false,
            });
        }
        Ok(PeerProbe {
            target: addr.to_string(),
            pubkey: pk,
            rtt,
            note,
            git: false,
        })
    }
}

/// Whether `s` looks like `host:port` rather than a peer name or key prefix.
pub fn is_address(s: &str) -> bool {
    s.parse::<std::net::SocketAddr>().is_ok()
        || s.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

fn probe_git(
    home: &Home,
    me: &PublicKey,
    url: &str,
    pubkey: Option<PublicKey>,
    timeout: Duration,
) -> Result<PeerProbe> {
    // The repository must exist: the remote is added to it.
    home.open_store()?;
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
        (None, _) => {
            return Err(Error::KeyNeeded {
                target: url.to_string(),
                found: users,
            })
        }
    };
    if pk == *me {
        return Err(Error::OwnKey {
            target: url.to_string(),
            git: true,
        });
    }
    Ok(PeerProbe {
        target: url.to_string(),
        pubkey: pk,
        rtt: None,
        note,
        git: true,
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
