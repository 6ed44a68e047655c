# Shared settings for the local stack scripts. Sourced, not run.
# Everything lives outside the clone so a fresh clone (and CI) reuses the
# 12-15 minute Tansu build and the ClickHouse package.
TALLY_CACHE="${TALLY_CACHE:-$HOME/.cache/tally}"
TANSU_VERSION="0.6.0"
TANSU_ROOT="$TALLY_CACHE/tansu-$TANSU_VERSION"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
# Python with fastavro, for the Avro interop test.
FASTAVRO_VERSION="1.13.1"
# chdb embeds current ClickHouse (26.x) for the schema and query test.
CHDB_VERSION="4.4.0"
PYTHON_ENV="$TALLY_CACHE/python"
# Runtime state (data, logs, pids) lives in the clone, in an ignored folder.
STACK_DIR="${TALLY_STACK_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.stack}"
KAFKA_PORT="${TALLY_KAFKA_PORT:-9092}"
CLICKHOUSE_HTTP_PORT="${TALLY_CLICKHOUSE_HTTP_PORT:-8123}"
CLICKHOUSE_TCP_PORT="${TALLY_CLICKHOUSE_TCP_PORT:-9000}"
