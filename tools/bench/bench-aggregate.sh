#!/usr/bin/env bash
# The cost of the live exporter's per-task call trees and the
# time to render a 100k-snapshot task; prints a Markdown table.
#   tools/bench/bench-aggregate.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
bench="$build/bin/canopy-aggregate-bench"
if [[ ! -x "$bench" ]]; then
  echo "canopy-aggregate-bench is not built ($bench); it is built with the tests (CANOPY_TESTS=ON)"
  exit 0
fi
"$bench" --rounds 3
