//! An agent that reacts to memories as they arrive.
//!
//! The "helper" agent runs its node and watches the event stream: for every
//! `question` memory received from a peer it remembers an answer (a
//! `message` tagged `answer`). A "asker" agent syncs a question to it, syncs
//! again a moment later and finds the answer, signed by the helper.
//!
//! Run: `cargo run -p mmogit --example react`

use std::path::Path;
use std::time::Duration;

use mmogit::store::{Filter, MemoryType, NewMemory};
use mmogit::{Agent, Event, Home, P2PServer, Peering, SyncOptions, SyncTarget};

/// Reacts to the events of `events` until `stop` answers were made.
async fn answer_questions(helper: Agent, mut events: mmogit::Events, stop: usize) -> usize {
    let mut answered = 0;
    while let Some(ev) = events.next().await {
        let Event::MemoriesReceived { from, memories, .. } = ev else {
            continue;
        };
        for q in memories.iter().filter(|m| m.kind() == MemoryType::Question) {
            let text = q.readable_content(None).unwrap_or_default();
            println!("helper: question from {}: {text}", from.short(12));
            let answer = NewMemory {
                kind: MemoryType::Message,
                content: format!("Answer to {}: try `mmogit recall --query`", &q.id()[..12]),
                tags: vec!["answer".into()],
                confidence: Some(0.7),
                private: false,
            };
            // The Agent API is blocking (git); keep it off the async workers.
            let h = helper.clone();
            match tokio::task::spawn_blocking(move || h.remember(answer)).await {
                Ok(Ok(m)) => println!("helper: answered with {}", m.id()),
                Ok(Err(e)) => eprintln!("helper: cannot answer: {e}"),
                Err(e) => eprintln!("helper: {e}"),
            }
            answered += 1;
        }
        if answered >= stop {
            break;
        }
    }
    answered
}

/// The whole scenario in `dir`; returns the answers the asker received.
pub async fn run(dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let (helper, _) = Agent::init(Home::new(dir.join("helper")))?;
    let (asker, _) = Agent::init(Home::new(dir.join("asker")))?;
    let helper_pk = helper.public_key().expect("identity");
    let asker_pk = asker.public_key().expect("identity");
    // They know each other's keys beforehand (e.g. exchanged out of band).
    helper.update_peers(|peers| {
        peers.add(
            asker_pk,
            Some("asker".into()),
            Vec::new(),
            mmogit::node::PeerSource::Manual,
        );
        Ok(())
    })?;

    let server = P2PServer::new("127.0.0.1:0".parse()?, helper.identity()?.clone())
        .home(helper.home().clone())
        .start()
        .await?;
    let reactor = tokio::spawn(answer_questions(helper.clone(), server.events(), 1));

    Peering::new(asker.home().clone(), asker.identity()?.clone())
        .name("helper")
        .add_peer(&server.local_addr().to_string(), Some(helper_pk))
        .await?;
    asker.remember(NewMemory {
        kind: MemoryType::Question,
        content: "How do I find old memories about rate limits?".into(),
        tags: vec!["help".into()],
        confidence: None,
        private: false,
    })?;
    let target = SyncTarget::Peer("helper".into());
    asker.sync(target.clone(), SyncOptions::default()).await?;

    // The helper answers as soon as the question arrives.
    let answered = tokio::time::timeout(Duration::from_secs(10), reactor).await??;
    println!("helper answered {answered} question(s)");
    asker.sync(target, SyncOptions::default()).await?;

    let answers: Vec<String> = asker
        .recall(&Filter {
            tags: vec!["answer".into()],
            authors: vec![helper_pk],
            ..Filter::default()
        })?
        .memories
        .iter()
        .filter_map(|m| m.readable_content(None))
        .collect();
    server.shutdown().await;
    Ok(answers)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    for a in run(dir.path()).await? {
        println!("asker received: {a}");
    }
    Ok(())
}
