//! One module per subcommand.

pub mod gc;
pub mod import;
pub mod init;
pub mod mcp;
pub mod p2p;
pub mod post;
pub mod recall;
pub mod reindex;
pub mod remember;
pub mod serve;
pub mod show;
pub mod sync;
pub mod verify;
pub mod whoami;
