//! Replication decisions (being moved here from replicate.rs).
