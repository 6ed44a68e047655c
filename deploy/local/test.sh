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

# stack.sh up installs what is missing (cached) before starting.
"$root/deploy/local/stack.sh" up --no-broker
trap '"$root/deploy/local/stack.sh" down' EXIT
. "$root/deploy/local/env.sh"
# The Avro interop test's independent peer (installed by stack.sh up).
export TALLY_PYTHON="$PYTHON_ENV/bin/python"
# The prometheus test needs both (installed by stack.sh up); say so here
# rather than deep in a test's output.
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run deploy/local/install.sh prometheus"; exit 1; }
done

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
log "cargo test: unit, property and doc tests"
cargo test --workspace --exclude tally-e2e --locked --no-fail-fast "$@"
# End-to-end and fault-injection runs against real brokers: one at a time
# (each starts its own broker and metering processes; 2 cores), printing
# each run's figures (inputs, lost, doubled, conflicting, gaps, dead letters).
log "cargo test: end-to-end and fault injection"
cargo test -p tally-e2e --locked --no-fail-fast "$@" -- --test-threads=1 --nocapture
