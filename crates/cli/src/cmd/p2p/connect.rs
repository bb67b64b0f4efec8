//! `mmogit p2p connect`: handshake with a peer, show who it is, say Bye.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mmogit::api::connect_to_peer;
use mmogit_identity::PublicKey;
use serde::Serialize;

use super::{parse_pubkey, resolve_target, runtime};
use crate::output::print_json;
use crate::Ctx;

/// Connect to a peer: authenticated handshake, print its public key and the round trip time, then Bye.
///
/// Example: `mmogit p2p connect 192.0.2.10:7420 --pubkey <64 hex>` or `mmogit p2p connect bob`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ip:port, or a known peer (name or key prefix)
    pub target: String,
    /// Refuse unless the peer proves this key
    #[arg(long, value_parser = parse_pubkey, value_name = "HEX")]
    pub pubkey: Option<PublicKey>,
    /// Give up after this long (connect, handshake)
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print {"pubkey", "addr", "agent", "protocol", "channel", "handshake_ms"} as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    pubkey: String,
    addr: String,
    agent: String,
    /// Negotiated protocol version.
    protocol: u32,
    /// The Noise protocol of the encrypted channel.
    channel: &'static str,
    handshake_ms: f64,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let identity = Arc::new(ctx.home.load_identity()?);
    let (addr, expected) = resolve_target(ctx, &args.target, args.pubkey)?;
    let out = runtime()?.block_on(async {
        let conn = connect_to_peer(&addr, identity, expected, args.timeout).await?;
        let out = Out {
            pubkey: conn.peer_pubkey().to_hex(),
            addr: conn.peer_addr().to_string(),
            agent: conn.peer().agent.clone(),
            protocol: conn.peer().version,
            channel: conn.channel(),
            handshake_ms: conn.handshake_rtt().as_secs_f64() * 1000.0,
        };
        conn.close("bye").await?;
        Ok::<_, anyhow::Error>(out)
    })?;
    if args.json {
        print_json(&out)?;
    } else {
        println!(
            "connected to {} at {} ({}), protocol {} over {}, authenticated in {:.2} ms",
            out.pubkey, out.addr, out.agent, out.protocol, out.channel, out.handshake_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
