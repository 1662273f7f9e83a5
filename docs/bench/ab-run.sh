#!/usr/bin/env bash
# One ingest run of a traild build, for A/B comparisons (docs/BENCHMARKS.md):
#
#   docs/bench/ab-run.sh TRAILD TRAILCTL [traild flags...]
#
# Starts TRAILD on a fresh data directory (free ports 17500/17501), runs
# `bench ingest` of $COUNT (1,000,000) generated events at 64 x $BATCH (20) in flight,
# and prints throughput, ack latency, the node's CPU per event over a steady 10 s
# window, the node's CPU over the whole run and the events keyspaces' bytes.
# Alternate the builds run by run: this machine's speed drifts by 10% within an hour.
set -euo pipefail
traild=$1; trailctl=$2; shift 2
data=$(mktemp -d /tmp/ab-run.XXXXXX)
"$traild" --data-dir "$data" --grpc-addr 127.0.0.1:17500 --http-addr 127.0.0.1:17501 "$@" \
  > "$data.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data" "$data.log" "$data.bench"' EXIT
sleep 1
# Builds with API keys write the node's admin token there (older ones ignore both).
export TRAIL_TOKEN_FILE="$data/admin.token"
auth() { [ -f "$data/admin.token" ] && echo "Authorization: Bearer $(cat "$data/admin.token")" || echo "X-No-Auth: 1"; }
"$trailctl" --endpoint http://127.0.0.1:17500 bench ingest --count "${COUNT:-1000000}" \
  --concurrency 64 --batch-size "${BATCH:-20}" --fsync-dir /tmp -q > "$data.bench" 2>&1 &
bench=$!
events() { curl -s -H "$(auth)" http://127.0.0.1:17501/metrics | awk '/^trail_events_total/ {s+=$2} END {print s+0}'; }
ticks() { awk '{ print $14 + $15 }' "/proc/$node/stat"; }
for _ in $(seq 1 100); do [ "$(events)" -gt 20000 ] && break; sleep 0.1; done
sleep 2; e0=$(events); c0=$(ticks); sleep 10; e1=$(events); c1=$(ticks)
wait $bench
total=$(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$node/stat")
event_bytes=$(curl -s -H "$(auth)" http://127.0.0.1:17501/metrics \
  | awk '/^trail_storage_disk_bytes/ && /keyspace="events"/ {s+=$2} END {print s+0}')
result=$(grep -E "through|latency" "$data.bench" | sed 's/(per.*//' | tr '\n' ' ')
per_event=$(echo "($c1 - $c0) * 10000 / ($e1 - $e0)" | bc -l | cut -c1-5)
echo "$result| cpu/event $per_event us (steady 10 s), node cpu $total s, events keyspaces $event_bytes bytes"
