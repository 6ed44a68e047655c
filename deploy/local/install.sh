#!/usr/bin/env bash
# Installs what the local stack needs, once. Safe to run again: it only
# checks when everything is already there (a second run takes well under a second).
#   - Tansu (Kafka-compatible broker), built with `cargo install --locked`
#     into ~/.cache/tally, with memory (dynostore) and SQLite (libsql) storage.
#   - ClickHouse server from Debian's package.
#   - A Python virtualenv with fastavro, the independent Avro peer of the
#     wire-format interop test (tests/tests/avro_interop.rs), and chdb
#     (current ClickHouse embedded), on which tests/tests/clickhouse_current.rs
#     runs every migration and named query.
#   - Prometheus and promtool from Debian's package, for the rule checks and
#     the scrape test of deploy/prometheus (tests/tests/prometheus.rs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
. "$here/env.sh"

log() { printf '[install] %s\n' "$*" >&2; }

install_tansu() {
  if [ -x "$TANSU_BIN" ]; then
    log "tansu $TANSU_VERSION already built at $TANSU_BIN"
    return
  fi
  log "building tansu $TANSU_VERSION into $TANSU_ROOT (once; about 12-15 minutes on 2 cores)"
  mkdir -p "$TANSU_ROOT"
  # A separate target dir keeps this build out of the workspace's target/.
  CARGO_TARGET_DIR="$TALLY_CACHE/tansu-build" \
    cargo install tansu --locked --version "$TANSU_VERSION" \
      --features dynostore,libsql --root "$TANSU_ROOT"
  rm -rf "$TALLY_CACHE/tansu-build"
  [ -x "$TANSU_BIN" ] || { log "tansu build finished but $TANSU_BIN is missing"; exit 1; }
}

install_clickhouse() {
  if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/bin/clickhouse ]; then
    log "clickhouse already installed"
    return
  fi
  log "installing clickhouse-server from Debian's packages"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # The package's postinst would start a system service on the default ports;
  # policy-rc.d 101 stops it: the stack starts its own server on loopback.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
  command -v clickhouse-server >/dev/null || { log "clickhouse-server did not install"; exit 1; }
}

install_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    log "prometheus and promtool already installed"
    return
  fi
  log "installing prometheus (with promtool) from Debian's packages"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # As for ClickHouse: keep the package from starting a system Prometheus on
  # :9090; tests start their own on free ports. No recommends: node_exporter
  # is only needed where reconcile's textfile is served.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
  command -v promtool >/dev/null || { log "prometheus did not install promtool"; exit 1; }
}

install_python() {
  if [ -x "$PYTHON_ENV/bin/python" ] && "$PYTHON_ENV/bin/python" -c "import fastavro, chdb" 2>/dev/null; then
    log "python with fastavro and chdb already at $PYTHON_ENV"
    return
  fi
  command -v python3 >/dev/null || { log "python3 is missing (the Avro interop test needs it)"; exit 1; }
  log "creating $PYTHON_ENV with fastavro $FASTAVRO_VERSION and chdb $CHDB_VERSION"
  rm -rf "$PYTHON_ENV"
  python3 -m venv "$PYTHON_ENV" || { log "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
  "$PYTHON_ENV/bin/pip" install --quiet --disable-pip-version-check "fastavro==$FASTAVRO_VERSION" "chdb==$CHDB_VERSION"
  "$PYTHON_ENV/bin/python" -c "import fastavro, chdb" || { log "fastavro or chdb did not install"; exit 1; }
}

case "${1:-all}" in
  tansu) install_tansu ;;
  clickhouse) install_clickhouse ;;
  python) install_python ;;
  prometheus) install_prometheus ;;
  all) install_clickhouse; install_prometheus; install_python; install_tansu ;;
  *) echo "usage: $0 [all|tansu|clickhouse|prometheus|python]" >&2; exit 2 ;;
esac
