#!/usr/bin/env bash
# The local stack: a Tansu broker and a ClickHouse server on loopback.
#
#   stack.sh up [--storage memory|sqlite] [--no-broker]
#                                           install (cached; also prometheus/promtool for the
#                                           rule tests) and start both, wait until they answer
#   stack.sh down                           stop both cleanly
#   stack.sh status                         say what runs
#
# Data, logs and pids live in .stack/ of the clone (ignored by git); the
# binaries are cached under ~/.cache/tally. Starting what already runs is a
# no-op, so a second `up` takes about a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Waits until a TCP port on loopback accepts connections.
wait_port() { # name port seconds
  local name=$1 port=$2 deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

running() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() { # name pidfile
  local name=$1 pidfile=$2
  if running "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

start_tansu() { # storage
  local storage=$1 pidfile="$STACK_DIR/tansu.pid" url
  if running "$pidfile"; then log "tansu already running (pid $(cat "$pidfile"))"; return; fi
  [ -x "$TANSU_BIN" ] || die "tansu is not installed at $TANSU_BIN: run deploy/local/install.sh"
  mkdir -p "$STACK_DIR/tansu"
  case "$storage" in
    memory) url="memory://tansu/" ;;
    # Tansu reads the path relative to its working directory.
    sqlite) url="sqlite://tansu.db" ;;
    *) die "unknown storage $storage (memory or sqlite)" ;;
  esac
  log "starting tansu ($storage storage) on 127.0.0.1:$KAFKA_PORT"
  cd "$STACK_DIR/tansu"
  nohup "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "$url" \
    >"$STACK_DIR/tansu/broker.log" 2>&1 &
  echo $! >"$pidfile"
  cd - >/dev/null
  wait_port tansu "$KAFKA_PORT" 30 || die "tansu did not listen on $KAFKA_PORT within 30 s; see $STACK_DIR/tansu/broker.log"
  log "tansu is up"
}

# Creates tally's topics (4 partitions each; an existing topic is kept).
# The services create missing topics too; this makes a fresh stack ready
# for any client. The snapshot topic is compacted: metering keeps only the
# newest snapshot per key there (see docs/DESIGN.md).
create_topics() {
  local broker="tcp://127.0.0.1:$KAFKA_PORT" spec topic config existing
  existing=$("$TANSU_BIN" topic list --broker "$broker" 2>/dev/null || true)
  for spec in tally.inputs tally.ledger tally.alerts tally.dead-letters \
              tally.snapshots:cleanup.policy=compact; do
    topic=${spec%%:*} config=${spec#"$topic"}
    config=${config#:}
    if printf '%s' "$existing" | grep -qF "\"name\":\"$topic\""; then continue; fi
    if "$TANSU_BIN" topic create "$topic" --partitions "${TALLY_PARTITIONS:-4}" \
         ${config:+--config "$config"} --broker "$broker" >/dev/null 2>&1; then
      log "created topic $topic${config:+ ($config)}"
    else
      log "could not create topic $topic (the services will create it)"
    fi
  done
}

start_clickhouse() {
  local pidfile="$STACK_DIR/clickhouse.pid" dir="$STACK_DIR/clickhouse"
  if running "$pidfile"; then log "clickhouse already running (pid $(cat "$pidfile"))"; return; fi
  command -v clickhouse-server >/dev/null || die "clickhouse-server is not installed: run deploy/local/install.sh"
  mkdir -p "$dir/log" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/etc"
  sed -e "s#@STACK@#$STACK_DIR#g" -e "s#@HTTP_PORT@#$CLICKHOUSE_HTTP_PORT#g" \
      -e "s#@TCP_PORT@#$CLICKHOUSE_TCP_PORT#g" "$here/clickhouse/config.xml.in" >"$dir/etc/config.xml"
  cp "$here/clickhouse/users.xml" "$dir/etc/users.xml"
  log "starting clickhouse on 127.0.0.1:$CLICKHOUSE_HTTP_PORT (http)"
  nohup clickhouse-server --config-file="$dir/etc/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 60))
  until [ "$(curl -s "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; do
    running "$pidfile" || die "clickhouse exited; see $dir/log/server.err.log"
    [ $SECONDS -lt $deadline ] || die "clickhouse did not answer within 60 s; see $dir/log/server.err.log"
    sleep 0.3
  done
  log "clickhouse is up"
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    storage=memory broker=1
    while [ $# -gt 0 ]; do
      case "$1" in
        --storage) storage=$2; shift 2 ;;
        --no-broker) broker=0; shift ;;
        *) die "unknown option $1" ;;
      esac
    done
    "$here/install.sh"
    mkdir -p "$STACK_DIR"
    start_clickhouse
    if [ "$broker" = 1 ]; then
      start_tansu "$storage"
      create_topics
    fi
    ;;
  down)
    stop_pid tansu "$STACK_DIR/tansu.pid"
    stop_pid clickhouse "$STACK_DIR/clickhouse.pid"
    ;;
  status)
    running "$STACK_DIR/tansu.pid" && echo "tansu: running (pid $(cat "$STACK_DIR/tansu.pid"))" || echo "tansu: stopped"
    running "$STACK_DIR/clickhouse.pid" && echo "clickhouse: running (pid $(cat "$STACK_DIR/clickhouse.pid"))" || echo "clickhouse: stopped"
    ;;
  *) echo "usage: $0 up [--storage memory|sqlite] [--no-broker] | down | status" >&2; exit 2 ;;
esac
