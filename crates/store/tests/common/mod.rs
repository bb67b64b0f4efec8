//! Helpers the store's integration tests share.

use mmogit_identity::Identity;
use mmogit_store::{MemoryType, NewMemory, Store, VerifiedMemory};

/// A public memory with no confidence.
pub fn new(kind: MemoryType, content: &str, tags: &[&str]) -> NewMemory {
    NewMemory {
        kind,
        content: content.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        confidence: None,
        private: false,
    }
}

/// Signs `n` and commits it alone, as `mmogit remember` does.
pub fn remember(store: &Store, id: &Identity, n: NewMemory) -> VerifiedMemory {
    let m = VerifiedMemory::create(id, n).unwrap();
    store
        .append(id, std::slice::from_ref(&m), "remember")
        .unwrap();
    m
}
