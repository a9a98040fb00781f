#!/usr/bin/env bash
# The Debian package on a fresh Debian 12: `make deb`, then dpkg -i into a
# scratch overlay of the cached bookworm root (scripts/rootfs; the cache stays
# clean), where systemd does not run. Inside it checks what issue 13 asks:
#  - the canopy user and group exist, the unit is enabled but not started;
#  - canopy validate passes on /etc/canopy/canopy.yaml;
#  - the unit's ExecStart, with its Environment and RuntimeDirectory, runs as
#    canopy (runuser), listens on /run/canopy/canopy.sock mode 0660 group
#    canopy, and serves canopy-loadgen running as an app user in that group;
#    a user outside the group cannot reach the socket;
#  - reinstalling (an upgrade) keeps an edited config and the spool;
#  - remove keeps the user, config and data; purge deletes them; a reinstall
#    after purge starts afresh.
#
#   tests/package/package_test.sh SOURCE_DIR BUILD_DIR
# Exits 77 (skipped) when not root or without mount namespaces.
set -euo pipefail

if [[ $# -ne 2 || "$1" == "--help" ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  [[ "${1:-}" == "--help" ]] && exit 0 || exit 2
fi
src=$(realpath "$1")
build=$(realpath "$2")
started=$(date +%s)

if [[ $(id -u) -ne 0 ]] || ! unshare --mount true 2>/dev/null; then
  echo "package_test: SKIP: needs root and mount namespaces (chroot, overlay)"
  exit 77
fi

step() { echo "package_test [$(($(date +%s) - started)) s]: $*"; }

step "make deb"
make -C "$src" --no-print-directory deb BUILD="$build" >"$build/package_test-deb.log" 2>&1 || {
  tail -30 "$build/package_test-deb.log"
  exit 1
}
deb=$(ls "$build"/canopy_*_amd64.deb | tail -1)

# The root carries the package's own Depends (dpkg-shlibdeps' list), so dpkg -i
# needs no network; the list is the cache key, so a new library builds a new root.
depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g' | sort -u | tr '\n' ' ')
step "bookworm root with: $depends"
# shellcheck disable=SC2086
root=$("$src/scripts/rootfs" bookworm $depends)

scratch=$(mktemp -d /tmp/canopy-package-test.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cp "$deb" "$scratch/canopy.deb"
cp "$(dirname "$0")/inside_root.sh" "$scratch/inside_root.sh"

# Private mount, pid and network namespaces: the overlay and the mounts vanish
# with them whatever happens inside, /proc shows only the test's processes, and
# the admin API's 127.0.0.1:8888 cannot collide with a collector on the host.
step "overlay on $root; running the checks inside"
unshare --mount --pid --net --fork --propagation private bash -euo pipefail -c '
  root=$1 scratch=$2
  mkdir -p "$scratch/upper" "$scratch/work" "$scratch/merged"
  mount -t overlay overlay -o "lowerdir=$root,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/merged"
  m=$scratch/merged
  ip link set lo up
  mount -t proc proc "$m/proc"
  mount --rbind /dev "$m/dev"
  mount -t tmpfs tmpfs "$m/run"
  mount -t tmpfs tmpfs "$m/tmp"
  cp "$scratch/canopy.deb" "$scratch/inside_root.sh" "$m/tmp/"
  chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin bash /tmp/inside_root.sh /tmp/canopy.deb
' _ "$root" "$scratch"
step "passed"
