//! mmogit: sovereign, verifiable memory for AI agents.
//!
//! This crate is both the `mmogit` command-line tool and the library it is
//! built on. The building blocks are re-exported:
//! - [`identity`]: Ed25519 keys, recovery phrase, key file;
//! - [`store`]: signed memory records in git, recall and verification.
//!
//! [`Home`] ties them to a directory on disk (`--home`, `MMOGIT_HOME` or
//! `~/.mmogit`), the same layout the CLI uses.

pub use mmogit_identity as identity;
pub use mmogit_store as store;

mod home;

pub use home::{Home, HomeError};
