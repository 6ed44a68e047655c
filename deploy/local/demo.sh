#!/usr/bin/env bash
# The main job on a fresh machine: the local stack, simulated AI workers,
# metering, the aggregator into ClickHouse, and a readable summary of
# balances and analytics from ClickHouse's named queries, checked against
# the ledger topic.
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
export TALLY_AGGREGATOR__BROKERS="$TALLY_BROKERS"
export TALLY_CLICKHOUSE_URL="http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
export TALLY_AGGREGATOR__CLICKHOUSE_URL="$TALLY_CLICKHOUSE_URL"
ch() { curl -sS --fail-with-body --data-binary "$1" "$TALLY_CLICKHOUSE_URL/"; }

# A fresh broker means a fresh ledger: start ClickHouse's copy afresh too.
ch "DROP DATABASE IF EXISTS tally" >/dev/null
"$tally" migrate

metrics_port=9464
metering_log="$STACK_DIR/metering.log"
log "starting metering (log: $metering_log, metrics: http://127.0.0.1:$metrics_port/metrics)"
"$tally" metering --config pipelines/metering.toml >"$metering_log" 2>&1 &
metering=$!
aggregator_log="$STACK_DIR/aggregator.log"
log "starting the aggregator (log: $aggregator_log, metrics: http://127.0.0.1:9465/metrics)"
"$tally" aggregator --config pipelines/aggregator.toml >"$aggregator_log" 2>&1 &
aggregator=$!
stop_metering() { kill -TERM "$metering" 2>/dev/null && wait "$metering" 2>/dev/null || true; }
stop_all() {
  stop_metering
  kill -TERM "$aggregator" 2>/dev/null && wait "$aggregator" 2>/dev/null || true
}
trap stop_all EXIT

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
summary=$("$tally" summary)
entries=$(printf '%s\n' "$summary" | sed -n 's/^== tally summary: \([0-9]*\) ledger entries.*/\1/p')
[ -n "$entries" ] || { log "could not read the ledger's entry count from tally summary"; exit 1; }

# The aggregator streams the ledger into ClickHouse; wait until every
# counted entry is there.
deadline=$((SECONDS + 300)) shown=""
while :; do
  kill -0 "$aggregator" 2>/dev/null || { log "the aggregator exited; see $aggregator_log"; tail -20 "$aggregator_log" >&2; exit 1; }
  rows=$(ch "SELECT count() FROM tally.ledger_entries" 2>/dev/null || echo 0)
  if [ -t 2 ]; then printf '\r[demo] aggregator: %s / %s ledger entries in ClickHouse' "$rows" "$entries" >&2
  elif [ "$rows" != "$shown" ]; then printf '[demo] aggregator: %s / %s ledger entries in ClickHouse\n' "$rows" "$entries" >&2; fi
  shown=$rows
  [ "$rows" -ge "$entries" ] && break
  [ $SECONDS -lt $deadline ] || { echo >&2; log "the aggregator did not catch up in 300 s; see $aggregator_log"; exit 1; }
  sleep 0.5
done
[ -t 2 ] && echo >&2
stop_all
trap - EXIT
[ "$rows" -eq "$entries" ] || { log "ClickHouse holds $rows rows for $entries ledger entries"; exit 1; }
log "check: ClickHouse holds exactly the $entries counted ledger entries; every rollup against the raw table:"
"$tally" migrate --check-rollups 2>/dev/null

account=$(ch "SELECT account_id FROM tally.ledger_entries GROUP BY account_id ORDER BY count() DESC, account_id LIMIT 1")
event=$(ch "SELECT photo_event_id FROM tally.event_usage_hourly GROUP BY photo_event_id ORDER BY sum(credits) DESC, photo_event_id LIMIT 1")
first=$(ch "SELECT toString(toDate(min(occurred_at))) FROM tally.ledger_entries")
last=$(ch "SELECT toString(toDate(max(occurred_at))) FROM tally.ledger_entries")
echo
echo "== From ClickHouse (named queries: tally query --list)"
echo
echo "-- usage by service and engine, per month ($first to $last): tally query usage"
"$tally" query usage --param from="$first" --param to="$last" --param bucket=month
echo
echo "-- the busiest account, $account: tally query balance, activity (newest 8), timeline"
"$tally" query balance --param account="$account"
"$tally" query activity --param account="$account" --param limit=8
"$tally" query timeline --param account="$account" --param from="$first" --param to="$last" --param bucket=week
echo
echo "-- photo-booth event $event, credits by engine: tally query event_credits"
"$tally" query event_credits --param event="$event"
echo
booked_first=$(ch "SELECT toString(toDate(min(booked_at))) FROM tally.ledger_entries")
booked_last=$(ch "SELECT toString(toDate(max(booked_at))) FROM tally.ledger_entries")
echo "-- finance, booked days $booked_first to $booked_last (every account must tie out): tally finance daily"
"$tally" finance daily --from "$booked_first" --to "$booked_last" | sed -n '/^== platform totals/,$p'
echo
echo "== From the ledger topic (tally summary), for comparison"
printf '%s\n' "$summary"
log "done. The stack is still up (deploy/local/stack.sh down stops it). To look closer:"
log "  $tally query --list                        # every named query and its parameters"
log "  $tally inspect --reason too_late          # dead letters, with why and where"
log "  $tally inspect tally.ledger --account acct-0003 --limit 20"
