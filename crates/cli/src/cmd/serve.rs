//! `mmogit serve`: accept authenticated sessions from trusted peers.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mmogit::api::{
    Agent, Event, GcSchedule, NodeConfig, P2PServer, ReplicatorConfig, DEFAULT_MAX_PENDING,
};
use tracing::{info, warn};

use crate::Ctx;

/// Run this agent's node: accept sessions from trusted peers until Ctrl-C or SIGTERM.
///
/// Unknown keys are refused ("not authorized") and recorded as pending
/// (`mmogit p2p pending`). Logs one line per peer event on stderr.
///
/// Example: `mmogit serve --listen 0.0.0.0:7420`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address and port to listen on
    #[arg(long, default_value = "0.0.0.0:7420", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Most inbound connections at once
    #[arg(long, default_value_t = 128)]
    pub max_inbound: usize,
    /// Most inbound connections from one IP address at once
    #[arg(long, default_value_t = 16)]
    pub max_per_ip: usize,
    /// Close a session after this long without data from the peer
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// The handshake must finish within this
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A frame that has started must arrive completely within this
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub frame_timeout: Duration,
    /// Close a session whose peer takes none of our data for this long (it stopped reading)
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,
    /// Most outbound sessions (and dials in flight) at once
    #[arg(long, default_value_t = 64)]
    pub max_outbound: usize,
    /// Do not dial trusted peers; only accept their connections
    #[arg(long)]
    pub no_dial: bool,
    /// Do not announce this node on the local network (mDNS) nor look for peers there
    #[arg(long, env = "MMOGIT_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// On the local network, announce a daily tag that only peers knowing your key recognise, instead of the key (implies --hidden)
    #[arg(long)]
    pub mdns_private: bool,
    /// Answer only peers that already know this node's public key: a first contact without it (`p2p add <ip:port>` with no --pubkey) and scanners get no byte back
    #[arg(long)]
    pub hidden: bool,
    /// Serve only your own branch (default: every users/* branch held, so memories relay through this node)
    #[arg(long)]
    pub serve_own_only: bool,
    /// Largest bundle sent or received in one transfer (e.g. 1G, 500M)
    #[arg(long, default_value = "1G", value_parser = crate::cmd::sync::parse_size)]
    pub max_transfer: u64,
    /// Throttle sending to this many bytes per second (e.g. 10M)
    #[arg(long, value_parser = crate::cmd::sync::parse_size, value_name = "BYTES/S")]
    pub max_rate: Option<u64>,
    /// Bundle bytes taken from one peer per day; a transfer that would go past it is refused (relayed memories count against the peer that sent them)
    #[arg(long, default_value = "1G", value_parser = crate::cmd::sync::parse_size, value_name = "SIZE")]
    pub quota_bytes: u64,
    /// Memories accepted from one peer per day; then that peer is not pulled from until the day is over
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub quota_memories: u64,
    /// Most unknown keys kept as pending (`mmogit p2p pending`); beyond that the least recently seen are dropped
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING, value_name = "N")]
    pub max_pending: usize,
    /// How often to check whether the repository needs maintenance (`mmogit gc`); 0s turns it off
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub gc_interval: Duration,
    /// Maintenance runs when the repository has more than this many packs...
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub gc_min_packs: usize,
    /// ...or more than this many loose objects (an import writes its trees and commits loose)
    #[arg(long, default_value_t = 6700, value_name = "N")]
    pub gc_min_loose: usize,
    /// Maintenance keeps unreachable objects younger than this
    #[arg(long, default_value = "14days", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub gc_grace: Duration,
    /// Bundle bytes per GitBundle chunk (at most 7M; smaller for tests)
    #[arg(long, hide = true, value_parser = crate::cmd::sync::parse_size)]
    pub chunk_size: Option<u64>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let agent = Agent::open(ctx.home.clone())?;
    let identity = agent.identity()?.clone();
    // The repository must exist: peers come to us for memories.
    agent.store()?;
    let config = NodeConfig {
        listen_addr: args.listen,
        max_inbound: args.max_inbound,
        max_per_ip: args.max_per_ip,
        idle_timeout: args.idle_timeout,
        handshake_timeout: args.handshake_timeout,
        frame_timeout: args.frame_timeout,
        send_timeout: args.send_timeout,
        heartbeat_interval: args.idle_timeout,
        max_outbound: args.max_outbound,
        hidden: args.hidden || args.mdns_private,
        ..NodeConfig::default()
    };
    // Memory exchange: queries, pulls, live announces.
    let mut rcfg = ReplicatorConfig::new(ctx.home.repo_path(), identity.public_key());
    rcfg.serve_own_only = args.serve_own_only;
    rcfg.max_transfer = args.max_transfer;
    rcfg.max_rate = args.max_rate;
    rcfg.quota_bytes = args.quota_bytes;
    rcfg.quota_memories = args.quota_memories;
    if let Some(c) = args.chunk_size {
        rcfg.chunk_size = usize::try_from(c).unwrap_or(usize::MAX);
    }
    let mut server = P2PServer::new(args.listen, identity.clone())
        .config(config)
        .home(ctx.home.clone())
        // Keep sessions open to trusted peers with known addresses, reconnect
        // with backoff, drop peers that are removed or blocked.
        .dial_trusted(!args.no_dial)
        .max_pending(args.max_pending)
        .replication(rcfg)
        .gc(GcSchedule {
            interval: args.gc_interval,
            min_packs: args.gc_min_packs,
            min_loose: args.gc_min_loose,
            grace: args.gc_grace,
        });
    if args.no_mdns {
        info!("mDNS off: not announcing this node nor looking for peers on the local network");
    } else {
        server = server.mdns(args.mdns_private);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let server = server
            .start()
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = server.local_addr();
        // The one line on stdout: scripts read the bound port from it.
        println!("listening on {addr} as {}", identity.public_key());
        let mode = if args.hidden || args.mdns_private {
            "hidden: only peers that know this key get an answer"
        } else {
            "introducible: a first contact without the key is answered (--hidden to refuse it)"
        };
        info!(%addr, pubkey = %identity.public_key().short(12), protocol = 2, %mode, "serving");
        let mut events = server.events();
        let logger = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    Event::PeerConnected { pubkey, addr } => {
                        info!(peer = %pubkey.short(12), %addr, "peer authenticated")
                    }
                    Event::PeerDisconnected {
                        pubkey,
                        addr,
                        reason,
                    } => info!(peer = %pubkey.short(12), %addr, %reason, "peer disconnected"),
                    Event::Refused {
                        addr,
                        pubkey,
                        reason,
                    } => {
                        let peer = pubkey.map(|p| p.short(12)).unwrap_or_else(|| "-".into());
                        warn!(%peer, %addr, %reason, "refused")
                    }
                    Event::Lagged(n) => warn!(missed = n, "event log fell behind"),
                    // Received memories and failed pulls: the replicator logs them.
                    _ => {}
                }
            }
        });
        wait_for_signal().await;
        info!("shutting down: saying Bye to every peer");
        // A maintenance run in progress finishes (the runtime waits for it).
        server.shutdown().await;
        logger.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
