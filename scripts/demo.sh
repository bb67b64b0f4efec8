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

# ---- peer to peer: two agents serving, live replication, sync both ways ----
carol="$work/carol"; dave="$work/dave"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# Starts `serve` on 127.0.0.1 port 0 in the background; prints its address
# (read from the first stdout line: `listening on <addr> as <pubkey>`).
serve() {
  local home=$1 out="$1.serve.out"
  "$M" --home "$home" serve --listen 127.0.0.1:0 > "$out" 2> "$home.serve.log" &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$out" 2>/dev/null; then
      sed -n 's/^listening on \([^ ]*\) as .*/\1/p' "$out"; return
    fi
    sleep 0.1
  done
  echo "serve did not start" >&2; exit 1
}

step "carol and dave create identities and serve on 127.0.0.1 (port 0)"
"$M" --home "$carol" init --json > /dev/null
"$M" --home "$dave" init --json > /dev/null
pc=$("$M" --home "$carol" whoami); pd=$("$M" --home "$dave" whoami)
addr_c=$(serve "$carol"); addr_d=$(serve "$dave")
echo "carol serves on $addr_c, dave on $addr_d"

step "they trust each other (p2p add <addr> --pubkey)"
"$M" --home "$carol" p2p add "$addr_d" --pubkey "$pd" --name dave
"$M" --home "$dave" p2p add "$addr_c" --pubkey "$pc" --name carol

step "every session is encrypted (protocol 2, Noise) and authenticated"
"$M" --home "$carol" p2p connect dave

step "carol remembers; the memory shows up at dave live (announce, pull, verify)"
id=$("$M" --home "$carol" remember --tag p2p "Live replication reached dave")
for i in $(seq 100); do
  if "$M" --home "$dave" recall --json | grep -q "$id"; then echo "dave has $id after ~$((i * 100)) ms of polling"; break; fi
  sleep 0.1
  [ "$i" = 100 ] && { echo "memory did not arrive"; exit 1; }
done
"$M" --home "$dave" recall --author "$pc"

step "dave remembers; mmogit sync both ways over P2P (report per peer)"
"$M" --home "$dave" remember --tag p2p "Dave's reply, sent by mmogit sync"
"$M" --home "$dave" sync
"$M" --home "$carol" sync --json
"$M" --home "$carol" verify
