#!/usr/bin/env bash
# `systemd-analyze verify` on canopy.service as `make install` writes it: the
# tree is installed with DESTDIR into a scratch root, next to the host's
# targets the unit refers to (multi-user.target, network-online.target), and
# verified there, so ExecStart's /usr/bin/canopy is checked to exist.
#
#   tests/package/unit_verify.sh SOURCE_DIR BUILD_DIR
# Exits 77 (skipped) without systemd-analyze.
set -euo pipefail
if [[ $# -ne 2 || "$1" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  [[ "${1:-}" == "--help" ]] && exit 0 || exit 2
fi
src=$(realpath "$1")
build=$(realpath "$2")
if ! command -v systemd-analyze >/dev/null; then
  echo "unit_verify: SKIP: no systemd-analyze"
  exit 77
fi
root=$(mktemp -d /tmp/canopy-unit-verify.XXXXXX)
trap 'rm -rf "$root"' EXIT
DESTDIR=$root cmake --install "$build" --prefix /usr >/dev/null
units=$root/usr/lib/systemd/system
cp /lib/systemd/system/*.target "$units/"
# ExecReload's /bin/kill (the package depends on procps for it).
mkdir -p "$root/bin"
cp /bin/kill "$root/bin/kill"
# verify prints nothing and exits 0 when the unit is clean; warnings count as failures.
out=$(systemd-analyze verify --man=no --root="$root" canopy.service 2>&1) || { echo "$out"; exit 1; }
if [[ -n "$out" ]]; then
  echo "$out"
  exit 1
fi
grep -q '^ExecStart=/usr/bin/canopy run -c /etc/canopy/canopy.yaml$' "$units/canopy.service"
test -f "$root/etc/canopy/canopy.yaml"
echo "unit_verify: canopy.service is clean"
