#!/usr/bin/env bash
# One ingest run on a fresh single node, with its index lag sampled from /metrics.
#
#   docs/bench/ingest-lag.sh BINDIR LABEL PORT COUNT [traild flags...]
#
# Starts BINDIR/traild on a fresh data directory (/tmp/trail-bench-LABEL) with gRPC on
# 127.0.0.1:PORT and HTTP on PORT+1, runs `trailctl bench ingest --count COUNT
# --concurrency 64 --batch-size ${BATCH:-100}`, samples the largest `trail_index_lag_ms` of the
# node's shards every 0.5 s, and appends to ./bench-results.txt: the lag samples (max,
# how many over 1 s and 2 s), `trail_ingest_index_held_ms_total` at the end, and the
# bench's throughput, ack latency, peak RSS and the node's CPU seconds (in all and by
# thread name). Removes the data directory after.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,13p' "$0"
  exit 2
fi
BIN=$1; LABEL=$2; PORT=$3; COUNT=$4; shift 4
HTTP=127.0.0.1:$((PORT + 1))
DATA=/tmp/trail-bench-$LABEL
LAG=$(mktemp)
rm -rf "$DATA"
"$BIN/traild" --data-dir "$DATA" --grpc-addr "127.0.0.1:$PORT" --http-addr "$HTTP" "$@" \
  > "/tmp/trail-bench-$LABEL.log" 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null || true; rm -rf "$DATA" "$LAG"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://$HTTP/health" > /dev/null && break
  sleep 0.1
done
(
  while kill -0 $NODE 2> /dev/null; do
    curl -s "http://$HTTP/metrics" | awk '
      /^trail_index_lag_ms/ { if ($2 > lag) lag = $2 }
      /^trail_ingest_index_held_ms_total/ { held += $2 }
      END { print lag + 0, held + 0 }' >> "$LAG" || true
    sleep 0.5
  done
) &
OUT=$("$BIN/trailctl" --endpoint "http://127.0.0.1:$PORT" bench ingest --count "$COUNT" \
  --concurrency 64 --batch-size "${BATCH:-100}" --fsync-dir /tmp 2>&1 | tail -8)
# The node's CPU seconds so far (all threads, live or ended), and by thread name for
# those still alive (tantivy's indexing threads end at each commit: their time is in the
# total only).
TICK=$(getconf CLK_TCK)
CPU=$(awk -v tick="$TICK" '{ printf "%.1f", ($14 + $15) / tick }' "/proc/$NODE/stat")
THREADS=$(for task in /proc/$NODE/task/*; do
  echo "$(tr ' ' '_' < "$task/comm") $(awk -v tick="$TICK" '{ print ($14 + $15) / tick }' "$task/stat")"
done | awk '{ cpu[$1] += $2 } END { for (name in cpu) if (cpu[name] >= 0.1) printf "%s %.1f, ", name, cpu[name] }')
SUMMARY=$(awk '{ n++; if ($1 > max) max = $1; if ($1 > 1000) s1++; if ($1 > 2000) s2++; held = $2 }
  END { printf "lag samples %d, max %d ms, over 1 s %d, over 2 s %d; held %d ms in all", n, max, s1, s2, held }' "$LAG")
{
  echo "== $LABEL $(date +%T) batch ${BATCH:-100}, traild flags [$*]: $SUMMARY"
  echo "$OUT" | grep -E "throughput|latency|peak"
  echo "node CPU ${CPU} s; live threads: ${THREADS%, }"
} >> bench-results.txt
tail -5 bench-results.txt
