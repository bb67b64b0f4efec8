//! The examples of crates/cli/examples, run (not only compiled).

#[allow(dead_code)]
#[path = "../examples/two_agents.rs"]
mod two_agents;

#[allow(dead_code)]
#[path = "../examples/react.rs"]
mod react;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_two_agents_share_memories_over_p2p() {
    let dir = tempfile::tempdir().unwrap();
    let out = two_agents::run(dir.path()).await.unwrap();
    assert_eq!(out.bob_received, 1, "{out:?}");
    assert_eq!(
        out.bob_sees,
        vec!["Alice: the staging database restarts at 02:00"]
    );
    assert_eq!(
        out.alice_sees,
        vec!["Bob: the API rate limit is 100 requests per minute"]
    );
    assert_eq!(
        out.alice_events, out.alice_sees,
        "the event stream named the memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_agent_reacts_to_memories_as_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let answers = react::run(dir.path()).await.unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].starts_with("Answer to "), "{answers:?}");
}
