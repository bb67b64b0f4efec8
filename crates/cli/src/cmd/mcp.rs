//! `mmogit mcp`: the Model Context Protocol over stdio, for MCP-capable agents.
//!
//! Tools: `remember`, `recall` (with full-text `query`), `sync`, `peers`
//! (list, pending, accept) and `status`, each built on the library API
//! ([`mmogit::Agent`]) like the commands of the same names. A bad argument
//! or a failing call is a tool error (`isError: true` with the reason), never
//! a crash. stdout is the protocol; logs go to stderr.
//!
//! Memories from peers reach the same agent that holds these tools, so a
//! memory's content can try to talk it into trusting a key. Trust changes
//! (`peers` accept) are therefore off unless `--allow-trust-changes`, and
//! then name the peer by its full 64-hex key: never a name or a prefix, which
//! an attacker can grind out.

use std::borrow::Cow;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mmogit::api::{
    Agent, Filter, MemoryType, NewMemory, SyncOptions, SyncTarget, TrustState, Warning,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cmd::p2p::add::PeerJson;
use crate::output::MemoryJson;
use crate::Ctx;

/// Serve the Model Context Protocol on stdin/stdout for an MCP-capable agent.
///
/// Tools: remember, recall (filters and full-text query), sync, peers (list,
/// pending; accept with --allow-trust-changes), status. Uses the home and
/// identity of the other commands and may run beside `mmogit serve`. Logs go
/// to stderr.
///
/// Example agent configuration: `{"mcpServers": {"mmogit": {"command": "mmogit", "args": ["mcp"]}}}`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Most memories a recall returns when the caller gives no limit
    #[arg(long, default_value_t = 50)]
    pub default_limit: usize,
    /// Let the `peers` tool change trust (accept), given a peer's full 64-hex key only. Off by default: memory content from peers reaches the agent that holds the tool
    #[arg(long)]
    pub allow_trust_changes: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    // Fail now, with the usual message, when there is no identity.
    let agent = Agent::open(ctx.home.clone())?;
    agent.store()?;
    tracing::info!(home = %ctx.home.root().display(), "serving MCP on stdio");
    let server = McpServer {
        agent,
        default_limit: args.default_limit.max(1),
        allow_trust_changes: args.allow_trust_changes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("MCP initialization failed: {e}"))?;
        let reason = running.waiting().await;
        tracing::info!(?reason, "MCP client gone");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The MCP server: one agent, tools over it.
#[derive(Clone)]
pub struct McpServer {
    agent: Agent,
    default_limit: usize,
    /// `--allow-trust-changes`: the `peers` tool may accept a peer.
    allow_trust_changes: bool,
}

/// A tool failure shown to the caller.
struct ToolError(String);

impl From<mmogit::Error> for ToolError {
    fn from(e: mmogit::Error) -> Self {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            let t = c.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = c.source();
        }
        ToolError(s)
    }
}

type ToolResult = Result<Value, ToolError>;

fn bad(msg: impl Into<String>) -> ToolError {
    ToolError(msg.into())
}

/// Parses the arguments of a tool; unknown fields and wrong types are errors.
fn args<T: for<'de> Deserialize<'de>>(
    tool: &str,
    a: Option<rmcp::model::JsonObject>,
) -> Result<T, ToolError> {
    let v = Value::Object(a.unwrap_or_default());
    serde_json::from_value(v).map_err(|e| bad(format!("bad arguments for {tool}: {e}")))
}

fn schema(v: Value) -> Arc<rmcp::model::JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => unreachable!("schemas are objects"),
    }
}

fn type_names() -> Vec<&'static str> {
    MemoryType::ALL.iter().map(|t| t.as_str()).collect()
}

/// The key a trust-changing `peers` action names (every such action asks
/// here before it reads or writes anything): refused unless trust changes are
/// allowed, and then only a full 64-hex key (a prefix or a name could match a
/// key an attacker ground out).
fn trust_change_key(allowed: bool, action: &str, peer: Option<&str>) -> Result<String, ToolError> {
    if !allowed {
        return Err(bad(format!(
            "`{action}` changes trust and is off: start the server with `mmogit mcp --allow-trust-changes` to allow it (or run `mmogit p2p {action}` yourself)"
        )));
    }
    let peer =
        peer.ok_or_else(|| bad(format!("{action} needs `peer`: the peer's full 64-hex key")))?;
    if peer.len() != 64 || !peer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "{action} needs the peer's full 64-hex key, not a name or a prefix: got {:?}",
            peer.chars().take(80).collect::<String>()
        )));
    }
    let pk: mmogit_identity::PublicKey = peer
        .parse()
        .map_err(|e| bad(format!("{action}: {peer} is not a valid public key: {e}")))?;
    Ok(pk.to_hex())
}

/// The tools and their input schemas (`peers` offers accept only when trust
/// changes are allowed).
pub fn tools(allow_trust_changes: bool) -> Vec<Tool> {
    let types = type_names();
    let (peer_actions, peers_help): (&[&str], &str) = if allow_trust_changes {
        (
            &["list", "pending", "accept"],
            "Peers: `list` every known peer with its trust state, `pending` those that asked to connect, `accept` one (trust it) by its full 64-hex key.",
        )
    } else {
        (
            &["list", "pending"],
            "Peers: `list` every known peer with its trust state, `pending` those that asked to connect. Trust changes are off (`mmogit mcp --allow-trust-changes` enables accept).",
        )
    };
    vec![
        Tool::new(
            "remember",
            "Remember something: sign a memory with this agent's key and store it on its branch. Returns the stored memory.",
            schema(json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "minLength": 1, "description": "What to remember (UTF-8 text, at most 256 KiB)"},
                    "type": {"type": "string", "enum": types, "default": "observation", "description": "Kind of memory"},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags (lowercase letters, digits, - _ . / :)"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1, "description": "How sure, from 0 to 1"},
                    "private": {"type": "boolean", "default": false, "description": "Encrypt the content so that only this agent can read it (still signed and replicable)"}
                },
                "required": ["content"],
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "recall",
            "Recall verified memories from every branch (this agent's and replicated ones): newest first, or ranked by relevance with `query`. Each memory carries its author, its branch and `verified: true` (memories that do not verify are never returned; they are listed under `warnings`).",
            schema(json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Full-text search: words and \"quoted phrases\"; best matches first, with score and snippet"},
                    "types": {"type": "array", "items": {"type": "string", "enum": types}, "description": "Only these kinds (any of them)"},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "Only memories with all of these tags"},
                    "authors": {"type": "array", "items": {"type": "string"}, "description": "Only these authors: `me`, a public key, or a unique prefix of at least 8 hex"},
                    "since": {"type": "string", "description": "Created since an RFC 3339 time (2026-11-25T10:00:00Z) or a duration ago (30m, 2h, 3d)"},
                    "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "limit": {"type": "integer", "minimum": 1, "description": "At most this many (default 50)"}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "sync",
            "Exchange memories with trusted peers (directly over P2P, or through git remotes): fetch, verify, accept what verifies, send ours. Returns one result per peer; forged memories are refused and listed.",
            schema(json!({
                "type": "object",
                "properties": {
                    "peer": {"type": "string", "description": "Only this peer: its name, a key prefix (at least 8 hex) or its key; default every trusted peer"},
                    "timeout_secs": {"type": "number", "exclusiveMinimum": 0, "default": 60, "description": "Time limit of each step with a peer"}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "peers",
            peers_help,
            schema(json!({
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": peer_actions, "default": "list"},
                    "peer": {"type": "string", "description": "For accept: the peer's full 64-hex key (no name, no prefix)"},
                    "name": {"type": "string", "description": "For accept: a name for the peer"}
                },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "status",
            "This agent: public key, home, authors and memories held, peers by trust state, whether `mmogit serve` is running, last syncs.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberArgs {
    content: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    confidence: Option<f64>,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecallArgs {
    query: Option<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    authors: Vec<String>,
    since: Option<String>,
    min_confidence: Option<f64>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncArgs {
    peer: Option<String>,
    timeout_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersArgs {
    action: Option<String>,
    peer: Option<String>,
    name: Option<String>,
}

fn parse_kind(s: &str) -> Result<MemoryType, ToolError> {
    s.parse::<MemoryType>().map_err(|_| {
        bad(format!(
            "unknown type `{s}`: one of {}",
            type_names().join(", ")
        ))
    })
}

impl McpServer {
    fn remember(&self, a: RememberArgs) -> ToolResult {
        let kind = match &a.kind {
            Some(k) => parse_kind(k)?,
            None => MemoryType::Observation,
        };
        if let Some(c) = a.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(bad(format!("confidence {c} is outside 0..1")));
            }
        }
        let m = self.agent.remember(NewMemory {
            kind,
            content: a.content,
            tags: a.tags,
            confidence: a.confidence,
            private: a.private,
        })?;
        let me = self.agent.reader();
        Ok(json!({ "memory": MemoryJson::new(&m, me) }))
    }

    fn recall(&self, a: RecallArgs) -> ToolResult {
        let kinds = a
            .types
            .iter()
            .map(|t| parse_kind(t))
            .collect::<Result<Vec<_>, _>>()?;
        let since = match &a.since {
            Some(s) => Some(crate::cmd::recall::parse_since(s).map_err(bad)?),
            None => None,
        };
        if let Some(c) = a.min_confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(bad(format!("min_confidence {c} is outside 0..1")));
            }
        }
        if a.limit == Some(0) {
            return Err(bad("limit must be at least 1"));
        }
        let mut authors = Vec::new();
        for s in &a.authors {
            authors.push(self.agent.resolve_author(s)?);
        }
        let filter = Filter {
            kinds,
            tags: a.tags,
            authors,
            since,
            min_confidence: a.min_confidence,
            limit: Some(a.limit.unwrap_or(self.default_limit)),
            ..Filter::default()
        };
        let me = self.agent.reader();
        let warn = |w: &Warning| json!({"path": w.path, "reason": w.reason});
        match a.query {
            Some(q) => {
                let r = self.agent.search(q, filter)?;
                let memories: Vec<Value> = r
                    .hits
                    .iter()
                    .map(|h| {
                        let mut v = serde_json::to_value(MemoryJson::new(&h.memory, me))
                            .unwrap_or(Value::Null);
                        if let Value::Object(o) = &mut v {
                            o.insert("score".into(), json!(h.score));
                            o.insert("snippet".into(), json!(h.snippet));
                        }
                        v
                    })
                    .collect();
                Ok(json!({
                    "count": memories.len(),
                    "memories": memories,
                    "warnings": r.warnings.iter().map(warn).collect::<Vec<_>>(),
                }))
            }
            None => {
                let r = self.agent.recall(&filter)?;
                let memories: Vec<MemoryJson> =
                    r.memories.iter().map(|m| MemoryJson::new(m, me)).collect();
                Ok(json!({
                    "count": memories.len(),
                    "memories": memories,
                    "warnings": r.warnings.iter().map(warn).collect::<Vec<_>>(),
                }))
            }
        }
    }

    async fn sync(&self, a: SyncArgs) -> ToolResult {
        let mut opts = SyncOptions::default();
        if let Some(t) = a.timeout_secs {
            if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
                return Err(bad(format!(
                    "timeout_secs {t} must be more than 0 (at most a day)"
                )));
            }
            opts.timeout = Duration::from_secs_f64(t);
        }
        let target = match a.peer {
            Some(p) => SyncTarget::Peer(p),
            None => SyncTarget::All,
        };
        let results = self.agent.sync(target, opts).await?;
        let refused: usize = results.iter().map(|r| r.refused.len()).sum();
        let failed = results.iter().filter(|r| r.error.is_some()).count();
        Ok(json!({
            "peers": results,
            "received": results.iter().map(|r| r.received).sum::<usize>(),
            "refused": refused,
            "failed": failed,
            "note": results.is_empty().then_some("no trusted peer to sync with: add one with `mmogit p2p add <git url | ip:port>`"),
        }))
    }

    fn peers(&self, a: PeersArgs) -> ToolResult {
        match a.action.as_deref().unwrap_or("list") {
            "list" => {
                if a.peer.is_some() || a.name.is_some() {
                    return Err(bad("`peer` and `name` are for action accept"));
                }
                let store = self.agent.peers()?;
                let list: Vec<PeerJson> = store.list().into_iter().map(PeerJson::new).collect();
                Ok(json!({ "peers": list }))
            }
            "pending" => {
                let pending = self.agent.pending_peers()?;
                let list: Vec<PeerJson> = pending.iter().map(PeerJson::new).collect();
                Ok(json!({ "peers": list }))
            }
            "accept" => {
                let peer = trust_change_key(self.allow_trust_changes, "accept", a.peer.as_deref())?;
                let rec = self.agent.accept_peer(&peer, a.name)?;
                Ok(json!({ "accepted": PeerJson::new(&rec) }))
            }
            other => Err(bad(format!(
                "unknown action `{other}`: one of list, pending, accept"
            ))),
        }
    }

    fn status(&self) -> ToolResult {
        let home = self.agent.home();
        let me = self.agent.public_key();
        let store = self.agent.store()?;
        let branches = store.branches().map_err(mmogit::Error::from)?;
        let all = store
            .recall(&Filter::default())
            .map_err(mmogit::Error::from)?;
        let mine = all
            .memories
            .iter()
            .filter(|m| Some(*m.author()) == me)
            .count();
        let peers = self.agent.peers()?;
        let count = |t: TrustState| peers.list().iter().filter(|r| r.trust == t).count();
        let serve = match self.agent.serve_status() {
            Ok(s) => json!({
                "running": s.is_live(),
                "listen_addr": s.listen_addr,
                "sessions": s.peers.iter().filter(|p| p.connected).count(),
            }),
            Err(_) => json!({ "running": false }),
        };
        let state = mmogit::api::sync::SyncState::load(&self.agent.sync_state_path());
        let last_syncs: Vec<Value> = state
            .peers
            .iter()
            .map(|(k, s)| {
                json!({
                    "peer": k,
                    "last_sync": crate::cmd::p2p::when(Some(s.last_sync)),
                    "via": s.via,
                    "outcome": s.outcome,
                    "received": s.received,
                    "error": s.error,
                })
            })
            .collect();
        Ok(json!({
            "pubkey": me.map(|k| k.to_hex()),
            "home": home.root().display().to_string(),
            "authors": branches.len(),
            "memories": all.memories.len(),
            "own_memories": mine,
            "unverifiable_files": all.warnings.len(),
            "peers": {
                "trusted": count(TrustState::Trusted),
                "pending": count(TrustState::Pending),
                "blocked": count(TrustState::Blocked),
            },
            "serve": serve,
            "last_syncs": last_syncs,
        }))
    }

    async fn dispatch(&self, name: &str, a: Option<rmcp::model::JsonObject>) -> ToolResult {
        let blocking = |f: Box<dyn FnOnce(&McpServer) -> ToolResult + Send>| {
            let me = self.clone();
            async move {
                tokio::task::spawn_blocking(move || f(&me))
                    .await
                    .unwrap_or_else(|e| Err(bad(format!("the call failed: {e}"))))
            }
        };
        match name {
            "remember" => {
                let a: RememberArgs = args(name, a)?;
                blocking(Box::new(move |s| s.remember(a))).await
            }
            "recall" => {
                let a: RecallArgs = args(name, a)?;
                blocking(Box::new(move |s| s.recall(a))).await
            }
            "sync" => {
                let a: SyncArgs = args(name, a)?;
                self.sync(a).await
            }
            "peers" => {
                let a: PeersArgs = args(name, a)?;
                blocking(Box::new(move |s| s.peers(a))).await
            }
            "status" => {
                let _: StatusArgs = args(name, a)?;
                blocking(Box::new(|s| s.status())).await
            }
            other => Err(bad(format!("unknown tool `{other}`"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusArgs {}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mmogit", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sovereign, verifiable memory: remember signs and stores a memory; recall returns \
                 verified memories (filters, or full-text `query`); sync exchanges memories with \
                 trusted peers; peers lists and accepts them; status describes this agent.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools(
            self.allow_trust_changes,
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name: Cow<'static, str> = request.name;
        let started = std::time::Instant::now();
        let out = self.dispatch(&name, request.arguments).await;
        tracing::info!(tool = %name, ok = out.is_ok(), ms = started.elapsed().as_millis() as u64, "tool call");
        Ok(match out {
            Ok(v) => CallToolResult::structured(v),
            Err(ToolError(msg)) => {
                CallToolResult::error(vec![ContentBlock::text(format!("error: {msg}"))])
            }
        }
        .into())
    }
}
