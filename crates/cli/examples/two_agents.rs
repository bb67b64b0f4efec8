//! Two agents in one process share memories over P2P on 127.0.0.1.
//!
//! Alice serves (port 0: any free port); Bob adds her as a peer, which she
//! sees as a pending key and accepts; then each remembers something and Bob
//! syncs: he receives Alice's memory and she receives his, both verified.
//!
//! Run: `cargo run -p mmogit --example two_agents`

use std::path::Path;
use std::time::Duration;

use mmogit::store::{Filter, MemoryType, NewMemory};
use mmogit::{Agent, Event, Home, P2PServer, Peering, SyncOptions, SyncTarget};

/// What the run showed, for the test that runs this example.
#[derive(Debug)]
pub struct Outcome {
    /// Memories Bob received in his sync.
    pub bob_received: usize,
    /// What Bob recalls of Alice's memories.
    pub bob_sees: Vec<String>,
    /// What Alice recalls of Bob's memories.
    pub alice_sees: Vec<String>,
    /// Memories Alice's event stream reported as received from Bob.
    pub alice_events: Vec<String>,
}

fn note(content: &str) -> NewMemory {
    NewMemory {
        kind: MemoryType::Learning,
        content: content.into(),
        tags: vec!["shared".into()],
        confidence: Some(0.8),
        private: false,
    }
}

/// The whole scenario, in `dir` (two homes are made inside it).
pub async fn run(dir: &Path) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let (alice, _) = Agent::init(Home::new(dir.join("alice")))?;
    let (bob, _) = Agent::init(Home::new(dir.join("bob")))?;
    let alice_pk = alice.public_key().expect("alice has an identity");
    let bob_pk = bob.public_key().expect("bob has an identity");

    // Alice's node, on any free port of the loopback interface.
    let server = P2PServer::new("127.0.0.1:0".parse()?, alice.identity()?.clone())
        .home(alice.home().clone())
        .start()
        .await?;
    let addr = server.local_addr().to_string();
    let mut events = server.events();
    println!("alice {} listening on {addr}", alice_pk.short(12));

    // Bob trusts Alice by address, expecting her key. She does not know him
    // yet: her node records his key as pending, and she accepts it.
    let added = Peering::new(bob.home().clone(), bob.identity()?.clone())
        .name("alice")
        .add_peer(&addr, Some(alice_pk))
        .await?;
    if let Some(n) = &added.note {
        println!("bob: {n}");
    }
    let pending = alice.pending_peers()?;
    assert!(pending.iter().any(|p| p.pubkey == bob_pk), "bob is pending");
    alice.accept_peer(&bob_pk.to_hex(), Some("bob".into()))?;
    println!("alice accepted bob {}", bob_pk.short(12));

    alice.remember(note("Alice: the staging database restarts at 02:00"))?;
    bob.remember(note("Bob: the API rate limit is 100 requests per minute"))?;

    // One sync: Bob pulls what is new at Alice, then she pulls his.
    let results = bob
        .sync(SyncTarget::Peer("alice".into()), SyncOptions::default())
        .await?;
    let r = &results[0];
    println!(
        "bob synced with alice via {}: received {}, sent {}",
        r.via, r.received, r.sent
    );
    if let Some(e) = &r.error {
        return Err(format!("sync failed: {e}").into());
    }

    // Alice's node reports what arrived (bounded wait).
    let mut alice_events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alice_events.is_empty() {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::MemoriesReceived { from, memories, .. })) => {
                for m in memories {
                    println!("alice received from {}: {}", from.short(12), m.id());
                    alice_events.push(m.readable_content(None).unwrap_or_default());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }

    let of = |pk| Filter {
        authors: vec![pk],
        ..Filter::default()
    };
    let content = |a: &Agent, f: Filter| -> Result<Vec<String>, mmogit::Error> {
        Ok(a.recall(&f)?
            .memories
            .iter()
            .filter_map(|m| m.readable_content(a.reader()))
            .collect())
    };
    let outcome = Outcome {
        bob_received: r.received,
        bob_sees: content(&bob, of(alice_pk))?,
        alice_sees: content(&alice, of(bob_pk))?,
        alice_events,
    };
    server.shutdown().await;
    Ok(outcome)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let out = run(dir.path()).await?;
    println!("bob recalls from alice: {:?}", out.bob_sees);
    println!("alice recalls from bob: {:?}", out.alice_sees);
    Ok(())
}
