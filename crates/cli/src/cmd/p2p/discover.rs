//! `mmogit p2p discover`: mmogit nodes on the local network (mDNS).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use mmogit::api::{discover_lan, Announced, TrustState};
use mmogit_identity::PublicKey;
use serde::Serialize;

use super::{load_peers, runtime};
use crate::exit::{code, Exit};
use crate::output::print_json;
use crate::Ctx;

/// List mmogit nodes announcing themselves on the local network (mDNS).
///
/// A node found here is only a candidate: nothing is exchanged with it
/// until you trust it (`mmogit p2p add <ip:port> --pubkey <key>`, or
/// `mmogit p2p accept` when it connected to you first). Nodes announcing a
/// private tag (`serve --mdns-private`) show as "private" unless the tag
/// belongs to a peer you know.
///
/// Example: `mmogit p2p discover --timeout 3s --json`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long to listen for announcements
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print a JSON array of {"pubkey", "private", "tag", "state", "addresses", "versions", "instances"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    /// Full key, or null for an unrecognised private tag.
    pubkey: Option<String>,
    private: bool,
    tag: Option<String>,
    /// trusted, pending, blocked, new, or private (unrecognised tag).
    state: &'static str,
    addresses: Vec<String>,
    versions: Vec<u32>,
    instances: Vec<String>,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if std::env::var_os("MMOGIT_NO_MDNS").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(Exit::new(
            code::FAILURE,
            "mDNS is turned off (MMOGIT_NO_MDNS is set in the environment)",
        )
        .into());
    }
    // Our own key (to leave ourselves out) when this home has one.
    let ours: Option<PublicKey> = ctx.home.load_identity().ok().map(|i| i.public_key());
    let store = load_peers(ctx)?;
    let found = runtime()?.block_on(discover_lan(args.timeout, ours))?;

    let known: Vec<PublicKey> = store.list().iter().map(|r| r.pubkey).collect();
    let now = SystemTime::now();
    // Merge by key: a tag recognised as a known key joins that key's entry.
    let mut by_key: HashMap<String, Out> = HashMap::new();
    let mut out: Vec<Out> = vec![];
    for c in found {
        let (private, tag) = match c.announced {
            Announced::Key(_) => (false, None),
            Announced::Tag(t) => (true, Some(hex::encode(t))),
        };
        let key = c.announced.resolve(known.iter(), now);
        if key.is_some_and(|k| Some(k) == ours) {
            continue;
        }
        let state = match key.and_then(|k| store.get_key(&k)) {
            Some(r) => match r.trust {
                TrustState::Trusted => "trusted",
                TrustState::Pending => "pending",
                TrustState::Blocked => "blocked",
            },
            None if key.is_some() => "new",
            None => "private",
        };
        let addresses: Vec<String> = c.addrs.iter().map(|a| a.to_string()).collect();
        let Some(k) = key else {
            out.push(Out {
                pubkey: None,
                private,
                tag,
                state,
                addresses,
                versions: c.versions,
                instances: c.instances,
            });
            continue;
        };
        let e = by_key.entry(k.to_hex()).or_insert_with(|| Out {
            pubkey: Some(k.to_hex()),
            private,
            tag,
            state,
            addresses: vec![],
            versions: c.versions.clone(),
            instances: vec![],
        });
        for a in addresses {
            if !e.addresses.contains(&a) {
                e.addresses.push(a);
            }
        }
        e.instances.extend(c.instances);
    }
    let mut keyed: Vec<Out> = by_key.into_values().collect();
    keyed.sort_by(|a, b| a.pubkey.cmp(&b.pubkey));
    keyed.append(&mut out);
    let out = keyed;

    if args.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        if !ctx.quiet {
            eprintln!(
                "no mmogit node found on the local network within {}",
                humantime::format_duration(args.timeout)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<8}  {:<8}  ADDRESSES",
        "KEY", "STATE", "VERSIONS"
    );
    for o in &out {
        let key = match &o.pubkey {
            Some(k) => k[..12].to_string(),
            None => "private".into(),
        };
        let versions = o
            .versions
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{key:<12}  {:<8}  {versions:<8}  {}",
            o.state,
            o.addresses.join(" ")
        );
    }
    if !ctx.quiet && out.iter().any(|o| o.state == "new") {
        eprintln!(
            "a node found here is not trusted: to trust one, `mmogit p2p add <ip:port> --pubkey <full key>` (see --json for full keys)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
