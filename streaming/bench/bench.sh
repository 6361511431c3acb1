#!/usr/bin/env bash
# The streaming benchmark's commands, each printing the harness's JSON line last.
#   produce-ours / produce-python: 2,000 640x480 JPEGs (JSON envelope) into a new
#     topic on the stack's broker; MB/s of message values delivered.
#   sink-ours / sink-row-insert [json|binary]: rows/s from one prefilled topic
#     (5,000 64x48 JPEGs, in the JSON envelope or the binary one) into a new
#     schema; ours batches, the baseline INSERTs row by row.
# Run through `cargo xtask bench streaming` with `cargo xtask stack up postgres` done; it
# starts a broker of its own and names it in CARDET_BENCH_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -f .env ]; then set -a; . ./.env; set +a; fi
# `cargo xtask bench` names a broker of its own; the stack's is the fallback.
BOOTSTRAP="${CARDET_BENCH_BOOTSTRAP:-${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}}"
DATABASE_URL="${DATABASE_URL:-postgres://cardet:cardet@127.0.0.1:5432/cardet}"
HOME_DIR="${CARDET_HOME:-$HOME/.cache/cardet}"
PYTHON="$HOME_DIR/venv/bin/python"
WORK="$HOME_DIR/bench/streaming"
TARGET="${CARGO_TARGET_DIR:-target}"
mkdir -p "$WORK"

cargo build --quiet --release -p produce -p sink --bins --example insert_per_row >&2
PRODUCE="$TARGET/release/produce"
SINK="$TARGET/release/sink"

dataset() { # name n width height
  local dir="$WORK/$1"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    "$PYTHON" streaming/bench/make_dataset.py "$dir" "$2" "$3" "$4" >&2
  fi
  echo "$dir"
}

new_topic() {
  local topic="bench-$1-$(date +%s%N)"
  "$PRODUCE" --bootstrap-servers "$BOOTSTRAP" setup --topic "$topic" --partitions 3 >&2
  echo "$topic"
}

topic_exists() { # topic
  "$PYTHON" -c 'import sys; from confluent_kafka.admin import AdminClient
sys.exit(0 if sys.argv[2] in AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=10).topics else 1)' "$BOOTSTRAP" "$1"
}

# One topic per record format holding the sink benchmark's records, filled once
# (again after a `cargo xtask stack reset kafka`).
sink_topic() { # json|binary
  local format="$1" file="$WORK/sink-topic"
  if [ "$format" != json ]; then file="$WORK/sink-topic-$format"; fi
  if [ ! -f "$file" ] || ! topic_exists "$(cat "$file")"; then
    local data topic
    data=$(dataset small 5000 64 48)
    topic=$(new_topic sink)
    "$PRODUCE" --bootstrap-servers "$BOOTSTRAP" stream "$data" --topic "$topic" --format "$format" --quiet >&2
    echo "$topic" > "$file"
  fi
  cat "$file"
}

# Drops a run's schema, so that autovacuum does not work on old runs during the next.
drop_schema() {
  psql -q "$DATABASE_URL" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $1 CASCADE" >&2
}

value_of() { # summary-json field
  "$PYTHON" -c 'import json,sys; s=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(json.dumps({"value": s[sys.argv[1]], "unit": sys.argv[2], "higher_is_better": True}))' "$1" "$2"
}

case "${1:-}" in
  produce-ours)
    data=$(dataset large 2000 640 480)
    topic=$(new_topic produce)
    "$PRODUCE" --bootstrap-servers "$BOOTSTRAP" stream "$data" --topic "$topic" --json | value_of mb_per_s MB/s
    ;;
  produce-python)
    data=$(dataset large 2000 640 480)
    topic=$(new_topic produce)
    "$PYTHON" streaming/bench/produce_baseline.py "$BOOTSTRAP" "$topic" "$data"
    ;;
  sink-ours)
    topic=$(sink_topic "${2:-json}")
    name="bench_sink_$(date +%s%N)"
    out=$("$SINK" run --bootstrap-servers "$BOOTSTRAP" --database-url "$DATABASE_URL" --topic "$topic" \
      --group "$name" --schema "$name" --until-idle 3 --json)
    drop_schema "$name"
    echo "$out" | value_of records_per_s rows/s
    ;;
  sink-row-insert)
    topic=$(sink_topic "${2:-json}")
    name="bench_row_$(date +%s%N)"
    out=$("$TARGET/release/examples/insert_per_row" "$BOOTSTRAP" "$DATABASE_URL" "$topic" "$name")
    drop_schema "$name"
    echo "$out"
    ;;
  *)
    echo "usage: $0 produce-ours|produce-python|sink-ours [json|binary]|sink-row-insert [json|binary]" >&2
    exit 2
    ;;
esac
