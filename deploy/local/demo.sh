#!/usr/bin/env bash
# The main job on a fresh machine: the local stack, simulated AI workers,
# metering, and a readable summary of balances and analytics.
#
#   deploy/local/demo.sh [--events N] [--accounts N] [--seed N]
#
# The first run installs Tansu (a 12-15 minute build, cached under
# ~/.cache/tally) and ClickHouse; later runs start in seconds. Each run starts
# a fresh in-memory broker, so the summary covers this run only.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { printf '[demo] %s\n' "$*" >&2; }

events=20000 accounts=40 seed=42
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --accounts) accounts=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--events N] [--accounts N] [--seed N]" >&2; exit 2 ;;
  esac
done

. deploy/local/env.sh
"$root/deploy/local/stack.sh" down >/dev/null 2>&1 || true
"$root/deploy/local/stack.sh" up
log "building tally (release)"
cargo build --release --locked --quiet -p tally-cli
tally="$root/target/release/tally"
export TALLY_BROKERS="127.0.0.1:$KAFKA_PORT"
export TALLY_METERING__BROKERS="$TALLY_BROKERS"

metrics_port=9464
metering_log="$STACK_DIR/metering.log"
log "starting metering (log: $metering_log, metrics: http://127.0.0.1:$metrics_port/metrics)"
"$tally" metering --config pipelines/metering.toml >"$metering_log" 2>&1 &
metering=$!
stop_metering() { kill -TERM "$metering" 2>/dev/null && wait "$metering" 2>/dev/null || true; }
trap stop_metering EXIT

log "publishing the workload ($events usage events, $accounts accounts, seed $seed)"
sim_out=$("$tally" simulate --events "$events" --accounts "$accounts" --seed "$seed")
printf '%s\n' "$sim_out"
published=$(printf '%s\n' "$sim_out" | sed -n 's/^simulate: \([0-9]*\) messages acknowledged.*/\1/p')
[ -n "$published" ] || { log "could not read how many messages simulate published"; exit 1; }

# Wait until metering has read every published input. A terminal gets one
# progress line rewritten in place; a log gets a line per change.
deadline=$((SECONDS + 300)) shown=""
progress() {
  if [ -t 2 ]; then printf '\r[demo] metering: %s / %s inputs' "$1" "$2" >&2
  elif [ "$1" != "$shown" ]; then printf '[demo] metering: %s / %s inputs\n' "$1" "$2" >&2; fi
  shown=$1
}
while :; do
  kill -0 "$metering" 2>/dev/null || { log "metering exited; see $metering_log"; tail -20 "$metering_log" >&2; exit 1; }
  read_count=$(curl -s "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null \
    | awk '/^tally_metering_inputs_total/ {s += $2} END {print s + 0}')
  progress "$read_count" "$published"
  [ "$read_count" -ge "$published" ] && break
  [ $SECONDS -lt $deadline ] || { echo >&2; log "metering did not catch up in 300 s; see $metering_log"; exit 1; }
  sleep 0.5
done
[ -t 2 ] && echo >&2
stop_metering
trap - EXIT
"$tally" summary
log "done. The stack is still up (deploy/local/stack.sh down stops it). To look closer:"
log "  $tally inspect --reason too_late          # dead letters, with why and where"
log "  $tally inspect tally.ledger --account acct-0003 --limit 20"
