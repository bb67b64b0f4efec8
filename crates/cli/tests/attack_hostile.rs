//! A trusted peer turns hostile. The victim is a real `mmogit serve` on
//! 127.0.0.1; the hostile peer is an in-process client holding a key the
//! victim trusts (`mmogit_node::connect`), speaking the protocol correctly
//! but sending forged memories, a rewritten history, a branch in someone
//! else's name, oversized bundles and endless Pings. Each is refused and
//! logged, nothing bad reaches the victim's repository, and an honest peer
//! is still served (`p2p ping` RTT) throughout.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{forge, git, Serve, TestHome};
use mmogit_node::{connect, ClientConfig, Connection, PeerSource, PeerStore};
use mmogit_proto::{BranchTip, GitBundle, IngestSummary, MemoryResponse, Message, TransferInfo};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn trust(home: &TestHome, other: &TestHome) {
    let mut s = PeerStore::load(&home.home.join("peers.json")).unwrap();
    s.add(
        other.pubkey().parse().unwrap(),
        None,
        Vec::new(),
        PeerSource::Manual,
    );
    s.save().unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d");
    std::fs::write(&f, data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&f)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// `git bundle` of `refs/heads/users/<author>` in `repo`, and its SHA-256.
fn bundle(repo: &std::path::Path, author: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.bundle");
    git(
        repo,
        &[
            "bundle",
            "create",
            f.to_str().unwrap(),
            &format!("refs/heads/users/{author}"),
        ],
    );
    let data = std::fs::read(&f).unwrap();
    let hash = sha256_hex(&data);
    (data, hash)
}

/// Announces `tip` of `author`'s branch, waits for the victim's pull request
/// and answers it with `transfer` and then `chunks`. Returns the victim's
/// ingest summary, if it sends one within `wait`.
async fn push(
    c: &mut Connection,
    author: &str,
    tip: &str,
    transfer: impl FnOnce(u64) -> TransferInfo,
    chunks: Vec<GitBundle>,
    wait: Duration,
) -> Option<IngestSummary> {
    c.send(Message::MemoryResponse(MemoryResponse {
        tips: Some(vec![BranchTip {
            author: author.into(),
            tip: tip.into(),
        }]),
        ..Default::default()
    }))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        assert!(Instant::now() < deadline, "the victim never pulled");
        match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
            Ok(Ok(Message::MemoryRequest(r))) if r.sync.is_some() => break r.id,
            Ok(Ok(_)) => continue,
            other => panic!("waiting for the pull: {other:?}"),
        }
    };
    c.send(Message::MemoryResponse(MemoryResponse {
        id: Some(id),
        transfer: Some(transfer(id)),
        ..Default::default()
    }))
    .await
    .unwrap();
    for mut ch in chunks {
        ch.transfer_id = id.to_string();
        c.send(Message::GitBundle(ch)).await.unwrap();
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), c.recv()).await {
            Ok(Ok(Message::MemoryResponse(r))) if r.ingested.is_some() => return r.ingested,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("the victim closed on a hostile peer: {e}"),
            Err(_) => break,
        }
    }
    None
}

/// Sends a whole bundle as one chunk, honestly described.
async fn push_bundle(
    c: &mut Connection,
    author: &str,
    tip: &str,
    (data, sha): (Vec<u8>, String),
) -> IngestSummary {
    let total = data.len() as u64;
    let sha2 = sha.clone();
    push(
        c,
        author,
        tip,
        move |id| TransferInfo {
            transfer_id: id.to_string(),
            total_size: total,
            sha256: sha2,
            chunks: 1,
            commits: 1,
        },
        vec![GitBundle {
            transfer_id: String::new(), // set by push
            index: 0,
            total_size: total,
            sha256: sha,
            data,
        }],
        Duration::from_secs(15),
    )
    .await
    .expect("an ingest summary")
}

fn honest_rtts_ms(honest: &TestHome, addr: &str) -> Vec<f64> {
    let v = honest
        .run(&[
            "p2p",
            "ping",
            addr,
            "--count",
            "5",
            "--interval",
            "20ms",
            "--json",
        ])
        .json();
    v["rtt_ms"]
        .as_array()
        .unwrap_or_else(|| panic!("honest peer not served: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn hostile_trusted_peer_is_refused_and_others_still_served() {
    let (victim, honest, hostile) = (TestHome::init(), TestHome::init(), TestHome::init());
    let (hpk, xpk) = (honest.pubkey(), hostile.pubkey());
    trust(&victim, &honest);
    trust(&victim, &hostile);
    let serve = Serve::start(&victim, &["--no-dial"]);
    let xid =
        Arc::new(mmogit_identity::Identity::load(&hostile.home.join("identity.json")).unwrap());
    let vrepo = victim.repo();
    let xrepo = hostile.repo();
    let branch = |pk: &str| format!("users/{pk}");
    let tip_of = |repo: &std::path::Path, pk: &str| {
        git(repo, &["rev-parse", &format!("refs/heads/users/{pk}")])
    };
    let rt = rt();
    let mut c = rt
        .block_on(connect(&serve.addr, xid, None, &ClientConfig::default()))
        .expect("the hostile key is trusted");
    // Honest memories first: accepted (the peer was fine until now).
    hostile.remember(&["honest 1"]);
    hostile.remember(&["honest 2"]);
    let good_tip = tip_of(&xrepo, &xpk);
    let s = rt.block_on(push_bundle(&mut c, &xpk, &good_tip, bundle(&xrepo, &xpk)));
    assert!(s.refused.is_empty(), "{s:?}");
    assert_eq!(s.memories, 2);
    assert_eq!(tip_of(&vrepo, &xpk), good_tip);

    // 1. A forged memory: a stored record whose content was changed after
    // signing, with its id recomputed so that only the signature is wrong.
    let path = git(&xrepo, &["ls-tree", "-r", "--name-only", &good_tip])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let blob = git(&xrepo, &["show", &format!("{good_tip}:{path}")]);
    let mut m = mmogit_store::UnverifiedMemory::from_json(blob.as_bytes()).unwrap();
    m.content = "changed after signing".into();
    m.id = sha256_hex(&m.signing_bytes());
    forge(
        &xrepo,
        &branch(&xpk),
        &format!("memories/{}/{}.json", &m.id[..2], m.id),
        Some(serde_json::to_vec(&m).unwrap().as_slice()),
    );
    let forged_tip = tip_of(&xrepo, &xpk);
    let s = rt.block_on(push_bundle(&mut c, &xpk, &forged_tip, bundle(&xrepo, &xpk)));
    assert!(
        s.refused.iter().any(|r| r.contains("signature")),
        "forged memory refused: {s:?}"
    );
    assert_eq!(tip_of(&vrepo, &xpk), good_tip, "branch did not move");

    // 2. A rewritten history: back to "honest 1", then a different commit.
    git(
        &xrepo,
        &[
            "update-ref",
            &format!("refs/heads/{}", branch(&xpk)),
            &format!("{good_tip}~1"),
        ],
    );
    hostile.remember(&["history rewritten"]);
    let rewritten = tip_of(&xrepo, &xpk);
    let s = rt.block_on(push_bundle(&mut c, &xpk, &rewritten, bundle(&xrepo, &xpk)));
    assert!(
        s.refused.iter().any(|r| r.contains("rewritten")),
        "rewritten history refused: {s:?}"
    );
    assert_eq!(tip_of(&vrepo, &xpk), good_tip);
    let evidence = git(&vrepo, &["for-each-ref", "refs/mmogit/evidence/"]);
    assert!(
        evidence.contains(&rewritten),
        "the rewritten tip is kept as evidence: {evidence:?}"
    );

    // 3. Memories in someone else's name: the hostile peer's own commits
    // offered as the honest peer's branch.
    git(
        &xrepo,
        &["update-ref", &format!("refs/heads/users/{hpk}"), &rewritten],
    );
    let s = rt.block_on(push_bundle(&mut c, &hpk, &rewritten, bundle(&xrepo, &hpk)));
    assert!(
        !s.refused.is_empty(),
        "branch in another's name refused: {s:?}"
    );
    assert!(
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&vrepo)
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/users/{hpk}")
            ])
            .output()
            .unwrap()
            .stdout
            .is_empty(),
        "no branch for the honest key was created"
    );
    assert!(honest_rtts_ms(&honest, &serve.addr)
        .iter()
        .all(|r| *r < 50.0));

    // 4. Oversized bundles: a transfer declared at 1 TiB is refused before
    // anything is written; one declared at 100 bytes that sends 7 MiB is
    // cut off at the declared size.
    let zero = "0".repeat(64);
    let z2 = zero.clone();
    let s = rt.block_on(push(
        &mut c,
        &xpk,
        &"1".repeat(40),
        move |id| TransferInfo {
            transfer_id: id.to_string(),
            total_size: 1 << 40,
            sha256: z2,
            chunks: 150_000,
            commits: 1,
        },
        Vec::new(),
        Duration::from_secs(1),
    ));
    assert!(s.is_none(), "{s:?}");
    let (z3, z4) = (zero.clone(), zero.clone());
    let s = rt.block_on(push(
        &mut c,
        &xpk,
        &"2".repeat(40),
        move |id| TransferInfo {
            transfer_id: id.to_string(),
            total_size: 100,
            sha256: z3,
            chunks: 1,
            commits: 1,
        },
        vec![GitBundle {
            transfer_id: String::new(),
            index: 0,
            total_size: 100,
            sha256: z4,
            data: vec![b'x'; mmogit_proto::MAX_BUNDLE_CHUNK],
        }],
        Duration::from_secs(10),
    ));
    let s = s.expect("a summary for the oversized chunk");
    assert!(!s.refused.is_empty(), "{s:?}");

    // 5. Endless Pings for 3 s: the honest peer is still served promptly.
    let flood = rt.spawn(async move {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(3) {
            c.ping_pipelined(256, 64).await.expect("pings answered");
            n += 256;
        }
        (c, n)
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = honest_rtts_ms(&honest, &serve.addr);
    let (c, pings) = rt.block_on(flood).unwrap();
    eprintln!("ping flood: {pings} pings in 3 s; honest RTTs meanwhile {during:?} ms");
    assert!(during.iter().all(|r| *r < 50.0), "{during:?}");
    rt.block_on(c.close("done")).ok();

    // Nothing bad in the victim's repository; the refusals are logged.
    let v = victim.run(&["verify", "--json"]).json();
    assert_eq!(v["ok"], true, "{v}");
    let ids = victim.recall_ids(&[]);
    assert_eq!(ids.len(), 2, "only the honest memories: {ids:?}");
    let log = serve.log();
    for l in log.lines().filter(|l| l.contains("WARN")) {
        eprintln!("victim: {l}");
    }
    assert!(log.contains("refused incoming memories"), "{log}");
    assert!(log.contains("transfer refused"), "{log}");
    assert!(log.contains("transfer failed"), "{log}");
    assert!(
        log.contains(&xpk[..12]),
        "refusals name the hostile peer: {log}"
    );
}
