//! The home directory: key file, memory repository, peer data.

use std::path::{Path, PathBuf};

use mmogit_identity::{Identity, IdentityError, PublicKey};
use mmogit_store::{Store, StoreError};

/// Errors about the home directory as a whole.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// No identity in the home: run `mmogit init`.
    #[error("no identity in {}: run `mmogit init`", .0.display())]
    NotInitialized(PathBuf),
    /// Neither --home, MMOGIT_HOME nor HOME is set.
    #[error("cannot find a home directory: pass --home or set MMOGIT_HOME")]
    NoHomeDir,
    /// The key file.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The memory repository.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or creating the directory.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No author key starts with this prefix.
    #[error("`{prefix}` matches no known public key")]
    UnknownKey {
        /// The prefix.
        prefix: String,
    },
    /// Several author keys start with this prefix.
    #[error("`{prefix}` is ambiguous; it matches: {}", candidates.join(", "))]
    AmbiguousKey {
        /// The prefix.
        prefix: String,
        /// The keys it matches.
        candidates: Vec<String>,
    },
    /// Neither a key nor a prefix of 8 or more hex.
    #[error("`{0}` is not a public key: give 64 hex characters or a unique prefix of at least 8")]
    BadKey(String),
}

/// An mmogit home directory.
///
/// Layout: `identity.json` (the key file, mode 0600), `memories.git/` (a
/// bare git repository with one `users/<pubkey>` branch per author),
/// `peers.json` (peer store).
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `explicit` if given, else `MMOGIT_HOME`, else `~/.mmogit`.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home, HomeError> {
        if let Some(p) = explicit {
            return Ok(Home::new(p));
        }
        if let Some(p) = std::env::var_os("MMOGIT_HOME").filter(|p| !p.is_empty()) {
            return Ok(Home::new(PathBuf::from(p)));
        }
        let home = std::env::var_os("HOME")
            .filter(|p| !p.is_empty())
            .ok_or(HomeError::NoHomeDir)?;
        Ok(Home::new(PathBuf::from(home).join(".mmogit")))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key file.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// The memory repository (bare git).
    pub fn repo_path(&self) -> PathBuf {
        self.root.join("memories.git")
    }

    /// The peer store file.
    pub fn peers_path(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// Where a running `mmogit serve` publishes its sessions.
    pub fn status_path(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// Whether an identity exists here.
    pub fn is_initialized(&self) -> bool {
        self.key_path().exists()
    }

    /// Creates the directory (mode 0700) if missing.
    pub fn create_dir(&self) -> Result<(), HomeError> {
        let io = |source| HomeError::Io {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&self.root).map_err(io)?;
            if meta.permissions().mode() & 0o077 != 0
                && std::fs::read_dir(&self.root).map_err(io)?.next().is_none()
            {
                std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    /// Loads the identity, with a hint to run `mmogit init` when there is none.
    pub fn load_identity(&self) -> Result<Identity, HomeError> {
        match Identity::load(&self.key_path()) {
            Ok(id) => Ok(id),
            Err(IdentityError::KeyFileMissing(_)) => {
                Err(HomeError::NotInitialized(self.root.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the memory repository, with a hint when there is none.
    pub fn open_store(&self) -> Result<Store, HomeError> {
        match Store::open(&self.repo_path()) {
            Ok(s) => Ok(s),
            Err(StoreError::NoRepository(_)) => Err(HomeError::NotInitialized(self.root.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the memory repository if there is none and points its HEAD
    /// at `owner`'s branch (what `mmogit init` does once the key is saved).
    pub fn init_repo(&self, owner: &PublicKey) -> Result<Store, HomeError> {
        let store = Store::open_or_init(&self.repo_path())?;
        store.set_head_to(owner)?;
        Ok(store)
    }

    /// Resolves `me`, a full key, or a unique prefix (≥ 8 hex) of an author
    /// with a branch in the repository.
    pub fn resolve_author(&self, s: &str, me: Option<&PublicKey>) -> Result<PublicKey, HomeError> {
        if s == "me" {
            return match me {
                Some(pk) => Ok(*pk),
                None => Err(HomeError::NotInitialized(self.root.clone())),
            };
        }
        let s_lower = s.to_ascii_lowercase();
        if s_lower.len() == 64 {
            return s_lower
                .parse()
                .map_err(|_| HomeError::BadKey(s.to_string()));
        }
        if s_lower.len() < 8
            || s_lower.len() > 64
            || !s_lower.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(HomeError::BadKey(s.to_string()));
        }
        let store = self.open_store()?;
        let mut keys: Vec<PublicKey> = store.branches()?.into_iter().map(|(pk, _)| pk).collect();
        if let Some(me) = me {
            if !keys.contains(me) {
                keys.push(*me);
            }
        }
        resolve_prefix(&s_lower, &keys)
    }
}

/// Finds the one key in `keys` whose hex starts with `prefix`.
pub fn resolve_prefix(prefix: &str, keys: &[PublicKey]) -> Result<PublicKey, HomeError> {
    let matches: Vec<&PublicKey> = keys
        .iter()
        .filter(|k| k.to_hex().starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(**one),
        [] => Err(HomeError::UnknownKey {
            prefix: prefix.to_string(),
        }),
        many => Err(HomeError::AmbiguousKey {
            prefix: prefix.to_string(),
            candidates: many.iter().map(|k| k.to_hex()).collect(),
        }),
    }
}
