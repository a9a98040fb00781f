#!/usr/bin/env bash
# The spool's cost: collector throughput with the spool off, with fsync never,
# interval and always, in one run (tools/bench/spool_bench.py). $1: build dir.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/../.." && pwd)
exec /usr/bin/python3 "$root/tools/bench/spool_bench.py" --bin "$build/bin" "${@:2}"
