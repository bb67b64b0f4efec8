//! The command goes through the library: the files of the `mmogit` binary
//! (`src/main.rs`, `src/exit.rs`, `src/output.rs` and every command under
//! `src/cmd/`) use the facade (`mmogit::api`, `mmogit::Home`...), never the
//! node or store crates directly, nor through the `mmogit::node` and
//! `mmogit::store` re-exports. What the CLI does is then what an embedder
//! can do with the same calls (issue 16). A command that needs something
//! the facade lacks gets it added to the facade, or, as a last resort, an
//! entry in [`ALLOWED`] saying why.

use std::fs;
use std::path::{Path, PathBuf};

/// Files (relative to `src/`) that may still name the node or store
/// crates, each with the reason. `serve`, `p2p add`, `sync`, `recall` and
/// `remember` must never be here: they are the library's `P2PServer`,
/// `Peering`, `Agent::sync`/`sync_status`, `Agent::recall`/`search` and
/// `Agent::remember` plus printing.
const ALLOWED: &[(&str, &str)] = &[
    // None today.
];

/// Never allowed, whatever `ALLOWED` says.
const THROUGH_THE_LIBRARY: &[&str] = &[
    "cmd/serve.rs",
    "cmd/p2p/add.rs",
    "cmd/sync.rs",
    "cmd/recall.rs",
    "cmd/remember.rs",
];

/// How the lower crates can be named.
const FORBIDDEN: &[&str] = &[
    "mmogit_node",
    "mmogit_store",
    "mmogit::node",
    "mmogit::store",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The binary's files, relative to `src/`, with `/` separators.
fn binary_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = src();
    let mut files = vec![
        root.join("main.rs"),
        root.join("exit.rs"),
        root.join("output.rs"),
    ];
    walk(&root.join("cmd"), &mut files);
    let mut out: Vec<String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&root).unwrap();
            rel.components()
                .map(|c| c.as_os_str().to_str().unwrap())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    out.sort();
    out
}

/// The lines that name a lower crate (comments left out), as `line: text`.
fn offending_lines(text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let code = line.split("//").next().unwrap_or("");
            FORBIDDEN
                .iter()
                .any(|f| code.contains(f))
                .then(|| format!("{}: {}", i + 1, line.trim()))
        })
        .collect()
}

#[test]
fn commands_use_only_the_library_facade() {
    let files = binary_files();
    assert!(
        files.iter().any(|f| f == "cmd/serve.rs") && files.len() > 20,
        "the scan found too few files: {files:?}"
    );
    let mut bad = Vec::new();
    for f in &files {
        let text = fs::read_to_string(src().join(f)).unwrap();
        let lines = offending_lines(&text);
        let allowed = ALLOWED.iter().any(|(a, _)| a == f);
        if !lines.is_empty() && !allowed {
            bad.push(format!("{f}:\n    {}", lines.join("\n    ")));
        }
    }
    assert!(
        bad.is_empty(),
        "these files use the node or store crate directly; go through `mmogit::api` \
         (add what is missing there):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_allowlist_is_short_and_current() {
    let files = binary_files();
    for (f, why) in ALLOWED {
        assert!(!why.trim().is_empty(), "{f} is allowed without a reason");
        assert!(
            !THROUGH_THE_LIBRARY.contains(f),
            "{f} must go through the library: it may not be allowed"
        );
        assert!(
            files.iter().any(|x| x == f),
            "{f} is allowed but does not exist"
        );
        let text = fs::read_to_string(src().join(f)).unwrap();
        assert!(
            !offending_lines(&text).is_empty(),
            "{f} no longer uses the node or store crate: remove it from ALLOWED"
        );
    }
    for f in THROUGH_THE_LIBRARY {
        assert!(
            files.iter().any(|x| x == f),
            "{f} was moved: update this test"
        );
    }
}

#[test]
fn the_scan_sees_every_spelling() {
    let hits = offending_lines(
        "use mmogit_node::PeerStore;\n\
         // mmogit_store in a comment is fine\n\
         let s = mmogit::store::Filter::default();\n\
         use mmogit::api::Filter;\n",
    );
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits[0].starts_with("1:") && hits[1].starts_with("3:"));
}
