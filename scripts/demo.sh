#!/usr/bin/env bash
# Two agents on this machine, each with its own identity and signed memories.
# Builds mmogit (release), runs everything in temporary homes, cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p mmogit
M="$PWD/target/release/mmogit"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
alice="$work/alice"; bob="$work/bob"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "alice and bob create identities"
"$M" --home "$alice" init --json > "$work/alice.json"
"$M" --home "$bob" init --json > "$work/bob.json"
echo "alice: $("$M" --home "$alice" whoami)"
echo "bob:   $("$M" --home "$bob" whoami)"

step "alice remembers (signed, one git commit each)"
"$M" --home "$alice" remember --type learning --tag rust --confidence 0.9 \
  "Ownership turns data races into compile errors"
"$M" --home "$alice" remember --type task --tag demo "Show bob the memory format"
"$M" --home "$alice" remember --private "Only alice can read this"
"$M" --home "$alice" post "Hello from alice"

step "bob remembers"
"$M" --home "$bob" remember --type observation --tag rust "Cargo workspaces keep crates small"

step "alice recalls (newest first; her private memory is decrypted for her)"
"$M" --home "$alice" recall

step "alice recalls as JSON for scripts: --tag rust --limit 1"
"$M" --home "$alice" recall --tag rust --limit 1 --json

step "bob replicates alice's branch with plain git, then verifies every signature"
git --git-dir="$bob/memories.git" fetch -q "$alice/memories.git" 'refs/heads/users/*:refs/heads/users/*'
"$M" --home "$bob" recall --author "$("$M" --home "$alice" whoami)"
"$M" --home "$bob" verify

step "a forged memory is caught"
pk=$("$M" --home "$alice" whoami)
id=$("$M" --home "$alice" recall --type task --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
path="memories/${id:0:2}/$id.json"
export GIT_DIR="$bob/memories.git" GIT_INDEX_FILE="$work/index"
git read-tree "users/$pk"
blob=$(git show "users/$pk:$path" | sed 's/Show bob/Show eve/' | git hash-object -w --stdin)
git update-index --cacheinfo "100644,$blob,$path"
commit=$(git -c user.name=eve -c user.email=eve@x commit-tree "$(git write-tree)" -p "users/$pk" -m forged)
git update-ref "refs/heads/users/$pk" "$commit"
unset GIT_DIR GIT_INDEX_FILE
if "$M" --home "$bob" verify; then echo "forgery NOT detected"; exit 1; else echo "(verify exited $?: forgery detected)"; fi
