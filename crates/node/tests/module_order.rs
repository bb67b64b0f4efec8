//! The module order listed in the crate's doc comment (`src/lib.rs`, "Module
//! order") is the real one: every module of `src` is listed once, and every
//! `crate::module` path outside a `#[cfg(test)] mod tests` points to a
//! module on an earlier line. So the modules cannot use each other in a
//! circle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level module name → its files (a folder module has several).
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
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
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut mods: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let first = f.strip_prefix(&root).unwrap().components().next().unwrap();
        let name = first.as_os_str().to_str().unwrap();
        let name = name.strip_suffix(".rs").unwrap_or(name).to_string();
        if name != "lib" {
            mods.entry(name).or_default().push(f);
        }
    }
    mods
}

/// The source without its inline test module (which may use anything).
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Modules named by `crate::name` and `crate::{a, b::c}` paths.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for word in group.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                out.insert(word.to_string());
            }
        } else {
            out.insert(ident(rest).to_string());
        }
    }
    out
}

/// The "Module order" list of the crate's doc comment: module → line number.
fn documented_layers() -> BTreeMap<String, usize> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    let mut in_section = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if doc.starts_with('#') {
            in_section = doc == "# Module order";
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((number, rest)) = doc.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        // The names are the backquoted words before the colon.
        let names = rest.split(':').next().unwrap();
        for name in names.split('`').skip(1).step_by(2) {
            assert!(
                layers.insert(name.to_string(), layer).is_none(),
                "`{name}` is listed twice in the module order"
            );
        }
    }
    assert!(!layers.is_empty(), "no module order in src/lib.rs");
    layers
}

#[test]
fn modules_use_only_modules_listed_before_them() {
    let mods = modules();
    let layers = documented_layers();
    let listed: BTreeSet<&String> = layers.keys().collect();
    let found: BTreeSet<&String> = mods.keys().collect();
    assert_eq!(
        listed, found,
        "the module order in src/lib.rs must list every module of src once"
    );
    let mut wrong = Vec::new();
    for (m, files) in &mods {
        for f in files {
            let text = fs::read_to_string(f).unwrap();
            for used in uses(without_tests(&text)) {
                if used == *m || !mods.contains_key(&used) {
                    continue;
                }
                if layers[&used] >= layers[m] {
                    wrong.push(format!(
                        "{m} (layer {}) uses {used} (layer {}) in {}",
                        layers[m],
                        layers[&used],
                        f.display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules using modules not listed before them:\n{}",
        wrong.join("\n")
    );
}
