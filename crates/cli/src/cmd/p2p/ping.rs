//! `mmogit p2p ping`: signed Ping/Pong round trips over an authenticated session.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mmogit::api::connect_to_peer;
use mmogit_identity::PublicKey;
use serde::Serialize;

use super::{parse_pubkey, resolve_target, runtime};
use crate::output::print_json;
use crate::Ctx;

/// Ping a peer: authenticated handshake, then signed Ping/Pong round trips.
///
/// Example: `mmogit p2p ping 127.0.0.1:7420 --count 5`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ip:port, or a known peer (name or key prefix)
    pub target: String,
    /// Refuse unless the peer proves this key
    #[arg(long, value_parser = parse_pubkey, value_name = "HEX")]
    pub pubkey: Option<PublicKey>,
    /// How many pings
    #[arg(long, short = 'c', default_value_t = 3)]
    pub count: u32,
    /// Pause between pings
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Give up after this long (connect, handshake, each ping)
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print {"pubkey", "addr", "handshake_ms", "rtt_ms": [...]} as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    pubkey: String,
    addr: String,
    handshake_ms: f64,
    rtt_ms: Vec<f64>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let identity = Arc::new(ctx.home.load_identity()?);
    let (addr, expected) = resolve_target(ctx, &args.target, args.pubkey)?;
    let json = args.json;
    let out = runtime()?.block_on(async {
        let mut conn = connect_to_peer(&addr, identity, expected, args.timeout).await?;
        let mut out = Out {
            pubkey: conn.peer_pubkey().to_hex(),
            addr: conn.peer_addr().to_string(),
            handshake_ms: conn.handshake_rtt().as_secs_f64() * 1000.0,
            rtt_ms: Vec::new(),
        };
        if !json {
            println!(
                "PING {} ({}): authenticated in {:.2} ms",
                out.addr,
                conn.peer_pubkey().short(12),
                out.handshake_ms
            );
        }
        for i in 0..args.count {
            if i > 0 {
                tokio::time::sleep(args.interval).await;
            }
            let rtt = conn.ping().await?.as_secs_f64() * 1000.0;
            if !json {
                println!("pong {}: seq={i} time={rtt:.3} ms", &out.pubkey[..12]);
            }
            out.rtt_ms.push(rtt);
        }
        conn.close("bye").await?;
        Ok::<_, anyhow::Error>(out)
    })?;
    if json {
        print_json(&out)?;
    } else if !out.rtt_ms.is_empty() {
        let n = out.rtt_ms.len() as f64;
        let min = out.rtt_ms.iter().cloned().fold(f64::MAX, f64::min);
        let max = out.rtt_ms.iter().cloned().fold(0.0, f64::max);
        let avg = out.rtt_ms.iter().sum::<f64>() / n;
        println!(
            "{} pings, rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms",
            out.rtt_ms.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
