//! `mmogit serve`: accept authenticated sessions from trusted peers.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mmogit_node::replicate::{Replicator, ReplicatorConfig};
use mmogit_node::{Node, NodeConfig, NodeEvent, PeerStoreTrust};
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
    /// On the local network, announce a daily tag that only peers knowing your key recognise, instead of the key
    #[arg(long)]
    pub mdns_private: bool,
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
    #[arg(long, default_value_t = mmogit_node::DEFAULT_MAX_PENDING, value_name = "N")]
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
    let identity = Arc::new(ctx.home.load_identity()?);
    // The repository must exist: peers come to us for memories.
    ctx.home.open_store()?;
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
        // Keep sessions open to trusted peers with known addresses, reconnect
        // with backoff, drop peers that are removed or blocked.
        dial_trusted: !args.no_dial,
        peers_path: Some(ctx.home.peers_path()),
        status_path: Some(ctx.home.status_path()),
        ..NodeConfig::default()
    };
    let policy =
        Arc::new(PeerStoreTrust::new(ctx.home.peers_path()).with_max_pending(args.max_pending));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Memory exchange: queries, pulls, live announces (replicate.rs).
        let (inbox_tx, inbox_rx) = tokio::sync::mpsc::channel(64);
        let mut rcfg = ReplicatorConfig::new(ctx.home.repo_path(), identity.public_key());
        rcfg.serve_own_only = args.serve_own_only;
        rcfg.max_transfer = args.max_transfer;
        rcfg.max_rate = args.max_rate;
        rcfg.quota_bytes = args.quota_bytes;
        rcfg.quota_memories = args.quota_memories;
        if let Some(c) = args.chunk_size {
            rcfg.chunk_size = usize::try_from(c).unwrap_or(usize::MAX);
        }
        let mut node = Node::new(identity.clone(), config, policy);
        // A node listening on loopback cannot be reached from the LAN: announcing it there is pointless.
        let loopback = args.listen.ip().is_loopback();
        if loopback && !args.no_mdns {
            info!("listening on loopback only: mDNS off");
        }
        if let Some(d) = lan_discovery(args.no_mdns || loopback) {
            node = node.with_discovery(d, args.mdns_private);
        }
        let node = node
            .with_inbox(inbox_tx)
            .start()
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = node.local_addr();
        let replicator = tokio::spawn(Replicator::new(rcfg).run(inbox_rx, node.sender()));
        let maintenance = (!args.gc_interval.is_zero()).then(|| {
            tokio::spawn(maintenance(
                ctx.home.repo_path(),
                args.gc_interval,
                args.gc_min_packs,
                args.gc_min_loose,
                args.gc_grace,
            ))
        });
        // The one line on stdout: scripts read the bound port from it.
        println!("listening on {addr} as {}", identity.public_key());
        info!(%addr, pubkey = %identity.public_key().short(12), "serving");
        let mut events = node.subscribe();
        let logger = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::PeerConnected { pubkey, addr }) => {
                        info!(peer = %pubkey.short(12), %addr, "peer authenticated")
                    }
                    Ok(NodeEvent::PeerDisconnected {
                        pubkey,
                        addr,
                        reason,
                    }) => info!(peer = %pubkey.short(12), %addr, %reason, "peer disconnected"),
                    Ok(NodeEvent::Refused {
                        addr,
                        pubkey,
                        reason,
                    }) => {
                        let peer = pubkey.map(|p| p.short(12)).unwrap_or_else(|| "-".into());
                        warn!(%peer, %addr, %reason, "refused")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "event log fell behind")
                    }
                    Err(_) => break,
                }
            }
        });
        wait_for_signal().await;
        info!("shutting down: saying Bye to every peer");
        node.shutdown().await;
        replicator.abort();
        logger.abort();
        // A maintenance run in progress finishes (the runtime waits for it).
        if let Some(m) = maintenance {
            m.abort();
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Every `interval`, repository maintenance (`mmogit gc`) when the
/// repository has more than `packs` packs or `loose` loose objects. It takes
/// the repository write lock, so ingests and local writers wait for it.
async fn maintenance(
    repo: std::path::PathBuf,
    interval: Duration,
    packs: usize,
    loose: usize,
    grace: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let repo = repo.clone();
        let res = tokio::task::spawn_blocking(move || {
            let store = mmogit_store::Store::open(&repo)?;
            if !store.needs_gc(packs, loose) {
                return Ok(None);
            }
            store.gc(grace, mmogit_store::DEFAULT_GC_TIMEOUT).map(Some)
        })
        .await;
        match res {
            Ok(Ok(Some(r))) => info!(
                packs_before = r.before.packs,
                loose_before = r.before.loose,
                packs_after = r.after.packs,
                loose_after = r.after.loose,
                elapsed_ms = r.elapsed.as_millis() as u64,
                live_quarantines = r.live_quarantines,
                "repository maintenance done"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "repository maintenance failed"),
            Err(e) => warn!(error = %e, "repository maintenance task failed"),
        }
    }
}

/// mDNS discovery unless turned off; serve goes on without it when it cannot start.
fn lan_discovery(off: bool) -> Option<Arc<dyn mmogit_node::Discovery>> {
    if off {
        info!("mDNS off: not announcing this node nor looking for peers on the local network");
        return None;
    }
    match mmogit_node::MdnsDiscovery::new() {
        Ok(d) => Some(Arc::new(d)),
        Err(e) => {
            warn!(error = %e, "mDNS unavailable; serving without local network discovery");
            None
        }
    }
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
