//! The facade's peering calls as an embedder uses them: probe a peer, show
//! its key, trust it; the undecidable cases as typed errors; the status of
//! a peer added by git URL.

use std::time::Duration;

use mmogit::api::{MemoryType, NewMemory, SyncTarget};
use mmogit::{Agent, Error, Home, P2PServer, Peering};

fn note(content: &str) -> NewMemory {
    NewMemory {
        kind: MemoryType::Observation,
        content: content.into(),
        tags: Vec::new(),
        confidence: None,
        private: false,
    }
}

fn peering(agent: &Agent) -> Peering {
    Peering::new(agent.home().clone(), agent.identity().unwrap().clone())
        .timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_the_key_and_trust_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = Agent::init(Home::new(dir.path().join("alice"))).unwrap();
    let (bob, _) = Agent::init(Home::new(dir.path().join("bob"))).unwrap();
    let alice_pk = alice.public_key().unwrap();
    let server = P2PServer::new(
        "127.0.0.1:0".parse().unwrap(),
        alice.identity().unwrap().clone(),
    )
    .home(alice.home().clone())
    .start()
    .await
    .unwrap();
    let addr = server.local_addr().to_string();

    // Without a key: the one the peer proves, not trusted yet.
    let probe = peering(&bob)
        .name("alice")
        .probe(&addr, None)
        .await
        .unwrap();
    assert_eq!(probe.pubkey, alice_pk);
    assert!(!probe.is_git());
    assert!(
        probe
            .note
            .as_deref()
            .unwrap()
            .contains("does not trust you yet"),
        "{probe:?}"
    );
    assert!(
        bob.peers().unwrap().get_key(&alice_pk).is_none(),
        "probing trusts nothing"
    );

    let added = peering(&bob).name("alice").trust(&probe).unwrap();
    assert_eq!(added.record.pubkey, alice_pk);
    assert_eq!(added.record.addresses, vec![addr.clone()]);
    assert_eq!(added.note, probe.note);
    let rec = bob.peers().unwrap().get("alice").unwrap().clone();
    assert_eq!(rec.trust, mmogit::api::TrustState::Trusted);

    // An agent cannot trust itself.
    match peering(&alice).probe(&addr, None).await {
        Err(e @ Error::OwnKey { git: false, .. }) => assert!(e.is_usage()),
        other => panic!("expected OwnKey, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn git_probe_decides_the_key_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = Agent::init(Home::new(dir.path().join("alice"))).unwrap();
    let (bob, _) = Agent::init(Home::new(dir.path().join("bob"))).unwrap();
    let bob_repo = bob.home().repo_path().display().to_string();

    // No users/<key> branch yet: the key must be given.
    match peering(&alice).probe(&bob_repo, None).await {
        Err(e @ Error::KeyNeeded { .. }) => {
            assert!(e.is_usage());
            let Error::KeyNeeded { found, .. } = e else {
                unreachable!()
            };
            assert!(found.is_empty());
        }
        other => panic!("expected KeyNeeded, got {other:?}"),
    }

    bob.remember(note("bob's first memory")).unwrap();
    let probe = peering(&alice).probe(&bob_repo, None).await.unwrap();
    assert!(probe.is_git());
    assert_eq!(probe.pubkey, bob.public_key().unwrap());
    assert_eq!(probe.note, None);
    let added = peering(&alice).trust(&probe).unwrap();
    let remote = format!("peer_{}", probe.pubkey.short(8));
    assert_eq!(added.record.git_remote.as_deref(), Some(remote.as_str()));
    assert_eq!(added.record.git_url.as_deref(), Some(bob_repo.as_str()));

    // Bob's own repository is his own branch.
    match peering(&bob).probe(&bob_repo, None).await {
        Err(Error::OwnKey { git: true, .. }) => {}
        other => panic!("expected OwnKey, got {other:?}"),
    }

    // Alice has not synced: Bob holds commits she lacks.
    let status = alice
        .sync_status(&SyncTarget::All, Duration::from_secs(30))
        .unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].via, "git");
    assert_eq!(status[0].behind, "yes");
    assert_eq!(status[0].incoming, Some(true));
    assert_eq!(status[0].last_sync, None);
}
