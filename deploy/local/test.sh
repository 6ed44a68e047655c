#!/usr/bin/env bash
# Runs every check and test of tally on a fresh machine.
#
# Installs what is missing (cached under ~/.cache/tally: the Tansu build
# takes 12-15 minutes once on 2 cores), starts ClickHouse from the local
# stack, runs format and lint checks and every test, and stops the stack
# again. Tests start their own Tansu brokers on free loopback ports.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[test] %s\n' "$*" >&2; }

"$root/deploy/local/install.sh"
"$root/deploy/local/stack.sh" up --no-broker
trap '"$root/deploy/local/stack.sh" down' EXIT

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
log "cargo test"
cargo test --workspace --locked --no-fail-fast "$@"
