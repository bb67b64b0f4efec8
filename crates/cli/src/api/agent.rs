//! [`Agent`]: one agent's home, as library calls.

use std::sync::Arc;

use mmogit_identity::{Identity, PublicKey, RecoveryPhrase};
use mmogit_node::{read_status, PeerRecord, PeerStore, StatusError, StatusFile, TrustState};
use mmogit_store::{
    Filter, NewMemory, RecallResult, SearchQuery, SearchResult, Store, VerifiedMemory,
};

use super::error::{Error, Result};
use crate::{Home, HomeError};

/// An agent: its home directory (key file, memory repository, peers), opened
/// once and used for every call. Cheap to clone; every call opens the
/// repository afresh, so an `Agent` may live beside a running `mmogit serve`
/// or other processes writing the same home (writes take the store's lock).
///
/// ```
/// use mmogit::{Agent, Home};
/// use mmogit::store::{Filter, MemoryType, NewMemory};
///
/// # fn main() -> Result<(), mmogit::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let (agent, _phrase) = Agent::init(Home::new(dir.path()))?; // or Agent::open(home)?
/// let m = agent.remember(NewMemory {
///     kind: MemoryType::Learning,
///     content: "Borrowck prevents data races".into(),
///     tags: vec!["rust".into()],
///     confidence: Some(0.9),
///     private: false,
/// })?;
/// let found = agent.recall(&Filter { tags: vec!["rust".into()], ..Filter::default() })?;
/// assert_eq!(found.memories[0].id(), m.id());
/// let hits = agent.search("borrowck", Filter::default())?;
/// assert_eq!(hits.hits.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Agent {
    home: Home,
    identity: Option<Arc<Identity>>,
}

impl Agent {
    /// Opens an initialized home: its identity must load (else
    /// [`HomeError::NotInitialized`]).
    pub fn open(home: Home) -> Result<Agent> {
        let identity = Arc::new(home.load_identity()?);
        Ok(Agent {
            home,
            identity: Some(identity),
        })
    }

    /// Opens a home for reading only, with its identity when one loads (a
    /// read-only replica has none: then nothing private can be decrypted and
    /// [`remember`](Agent::remember) and [`sync`](Agent::sync) fail).
    pub fn open_reader(home: Home) -> Agent {
        let identity = home.load_identity().ok().map(Arc::new);
        Agent { home, identity }
    }

    /// Creates a new identity and memory repository in `home` (what `mmogit
    /// init` does); fails if the home already has an identity. Returns the
    /// recovery phrase: show it to the owner once, it is not stored.
    pub fn init(home: Home) -> Result<(Agent, RecoveryPhrase)> {
        let (identity, phrase) = Identity::generate();
        let agent = Agent::init_with(home, identity)?;
        Ok((agent, phrase))
    }

    /// Like [`init`](Agent::init) with a given identity (e.g. recovered with
    /// [`Identity::from_phrase`]).
    pub fn init_with(home: Home, identity: Identity) -> Result<Agent> {
        if home.is_initialized() {
            return Err(Error::Usage(format!(
                "{} is already initialized",
                home.root().display()
            )));
        }
        home.create_dir()?;
        identity.save(&home.key_path(), false)?;
        home.init_repo(&identity.public_key())
            .map_err(|e| match e {
                HomeError::Store(e) => Error::Store(e),
                e => e.into(),
            })?;
        Ok(Agent {
            home,
            identity: Some(Arc::new(identity)),
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The identity, or [`HomeError::NotInitialized`] for a reader without one.
    pub fn identity(&self) -> Result<&Arc<Identity>> {
        self.identity
            .as_ref()
            .ok_or_else(|| HomeError::NotInitialized(self.home.root().to_path_buf()).into())
    }

    /// The identity when there is one.
    pub fn reader(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// This agent's public key (None for a reader without identity).
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| i.public_key())
    }

    /// Opens the memory repository.
    pub fn store(&self) -> Result<Store> {
        Ok(self.home.open_store()?)
    }

    /// Signs `new` and appends it to this agent's branch (one commit);
    /// returns the stored memory. Content, tags and confidence are checked
    /// ([`mmogit_store::StoreError::InvalidMemory`], a usage error).
    pub fn remember(&self, new: NewMemory) -> Result<VerifiedMemory> {
        let id = self.identity()?;
        let store = self.store()?;
        let m = VerifiedMemory::create(id, new)?;
        store
            .append(
                id,
                std::slice::from_ref(&m),
                &format!("{} {}", m.kind(), &m.id()[..12]),
            )
            .map_err(Error::Write)?;
        tracing::info!(id = m.id(), "memory stored");
        // The memory is stored and durable; keep one-pack-per-memory from
        // piling up where no `serve` runs its gc (see Store::consolidate_packs).
        if let Err(e) = store.consolidate_packs() {
            tracing::warn!(error = %e, "could not roll up small packs; `mmogit gc` will");
        }
        Ok(m)
    }

    /// Memories of every branch (ours and replicated ones) that match
    /// `filter`, newest first; each one verified. Files that do not verify
    /// are skipped and listed in `warnings`.
    pub fn recall(&self, filter: &Filter) -> Result<RecallResult> {
        check_filter(filter)?;
        Ok(self.store()?.recall(filter)?)
    }

    /// Full-text search (words and "quoted phrases", BM25 ranking, best
    /// first) combined with `filter`; every hit is read from git and
    /// verified. Our own private memories are searchable, nobody else's.
    pub fn search(&self, text: impl Into<String>, filter: Filter) -> Result<SearchResult> {
        check_filter(&filter)?;
        let query = SearchQuery {
            text: text.into(),
            filter,
        };
        Ok(self.store()?.search(&query, self.reader())?)
    }

    /// Resolves `me`, a full key, or a unique prefix (at least 8 hex) of an
    /// author held in the repository (the `--author` of the CLI).
    pub fn resolve_author(&self, s: &str) -> Result<PublicKey> {
        Ok(self.home.resolve_author(s, self.public_key().as_ref())?)
    }

    /// The peer store (`peers.json`), loaded now. To change it, use
    /// [`update_peers`](Agent::update_peers): saving this copy would undo
    /// whatever another process wrote since it was loaded.
    pub fn peers(&self) -> Result<PeerStore> {
        Ok(PeerStore::load(&self.home.peers_path())?)
    }

    /// Changes the peer store under its lock: reads it again, applies
    /// `change` and writes it (nothing when `change` fails), so that no
    /// concurrent change by `mmogit serve`, the CLI or another process is
    /// lost ([`PeerStore::update`]). A running `mmogit serve` applies a
    /// block or removal within a second, ending that key's sessions.
    pub fn update_peers<T>(&self, change: impl FnOnce(&mut PeerStore) -> Result<T>) -> Result<T> {
        PeerStore::update(&self.home.peers_path(), change)
    }

    /// What the node running on this home (`mmogit serve` or a
    /// [`P2PServer`](crate::P2PServer)) publishes in `status.json`: its
    /// address and sessions. A node that stopped leaves its last status
    /// behind ([`StatusFile::is_live`] tells); a home where none ever ran
    /// has none ([`StatusError::is_not_found`]).
    pub fn serve_status(&self) -> Result<StatusFile, StatusError> {
        read_status(&self.home.status_path())
    }

    /// Blocks a peer by name, key prefix or key (`mmogit p2p block`); its
    /// sessions with a running node end within a second.
    pub fn block_peer(&self, peer: &str) -> Result<PeerRecord> {
        self.update_peers(|s| Ok(s.set_blocked(peer)?.clone()))
    }

    /// Peers that asked to connect and wait for a decision.
    pub fn pending_peers(&self) -> Result<Vec<PeerRecord>> {
        Ok(self
            .peers()?
            .list()
            .into_iter()
            .filter(|r| r.trust == TrustState::Pending)
            .cloned()
            .collect())
    }

    /// Trusts a known peer (pending or blocked) by name, key prefix or key,
    /// optionally naming it (`mmogit p2p accept`).
    pub fn accept_peer(&self, peer: &str, name: Option<String>) -> Result<PeerRecord> {
        self.update_peers(|store| {
            let rec = store.trust(peer)?.clone();
            if name.is_some() {
                store.add(rec.pubkey, name, Vec::new(), rec.source);
            }
            Ok(store.get_key(&rec.pubkey).cloned().unwrap_or(rec))
        })
    }
}

/// Checks what the store does not: the confidence bound.
fn check_filter(filter: &Filter) -> Result<()> {
    if let Some(c) = filter.min_confidence {
        if !(0.0..=1.0).contains(&c) {
            return Err(Error::Usage(format!("min_confidence {c} is outside 0..1")));
        }
    }
    Ok(())
}
