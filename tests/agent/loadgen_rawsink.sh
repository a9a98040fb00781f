#!/bin/sh
# canopy-loadgen against canopy-rawsink: every batch acked, the contract's
# last line, and the sink's count agree. Usage: loadgen_rawsink.sh BINDIR
set -eu
bin=$1
url="ipc:///tmp/cn-loadgen-smoke-$$.sock"
out=$(mktemp)
sink=$(mktemp)
trap 'kill $pid 2>/dev/null || true; rm -f "$out" "$sink" "$out.bin"' EXIT

"$bin/canopy-rawsink" --url "$url" --contexts 8 >"$sink" 2>/dev/null &
pid=$!
sleep 0.3
"$bin/canopy-loadgen" --url "$url" --agents 3 --batches 5 --batch-size 64 --depth 12 --tasks 2 \
    --quiet --timeout 30 >"$out"
last=$(tail -n 1 "$out")
echo "$last"
echo "$last" | grep -Eq '^sent=15 acked=15 snapshots=960 seconds=[0-9.]+ rate=[0-9.]+$'
kill -TERM $pid
wait $pid
cat "$sink"
grep -Eq '^messages=15 bytes=[1-9][0-9]* errors=0 ' "$sink"

"$bin/canopy-loadgen" --dump-batch "$out.bin" --batch-size 4 --depth 3 --quiet
test -s "$out.bin"
"$bin/canopy-loadgen" --help | grep -q -- '--batch-size'
