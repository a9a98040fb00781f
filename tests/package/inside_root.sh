#!/usr/bin/env bash
# Runs inside the scratch Debian 12 root (chroot, no systemd) for
# package_test.sh: installs canopy's .deb and checks the install, the service
# as its unit would run it, an upgrade, remove, purge and reinstall.
#
#   inside_root.sh CANOPY_DEB
set -euo pipefail
deb=$1
unit=/usr/lib/systemd/system/canopy.service
wants=/etc/systemd/system/multi-user.target.wants/canopy.service
sock=/run/canopy/canopy.sock

fail() { echo "package_test: FAIL: $*" >&2; exit 1; }
check() { local what=$1; shift; "$@" || fail "$what"; echo "  ok: $what"; }

install_deb() { dpkg -i "$deb" </dev/null >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i"; }; }

# What systemd would do for the unit: RuntimeDirectory, StateDirectory, then
# ExecStart as User= with the unit's Environment= and UMask=. %t and %S are
# /run and /var/lib for a system unit.
collector_pid=
start_as_unit() {
  install -d -o canopy -g canopy -m 0750 /run/canopy /var/lib/canopy
  local env=() line
  while IFS= read -r line; do
    line=${line#Environment=}
    line=${line//%t/\/run}
    env+=("${line//%S/\/var\/lib}")
  done < <(grep '^Environment=' "$unit")
  local exec
  exec=$(sed -n 's/^ExecStart=//p' "$unit")
  # shellcheck disable=SC2086
  (umask 0007; exec runuser -u canopy -- env "${env[@]}" $exec) >/tmp/canopy.log 2>&1 &
  collector_pid=$!
  for _ in $(seq 100); do
    [[ -S $sock ]] && grep -q '\[canopy\] ready' /tmp/canopy.log && return 0
    kill -0 "$collector_pid" 2>/dev/null || { cat /tmp/canopy.log; fail "the collector exited at start"; }
    sleep 0.1
  done
  cat /tmp/canopy.log
  fail "no $sock after 10 s"
}

# runuser stays the parent; the pid namespace (package_test.sh) shows only our processes.
canopy_pid() {
  local p
  for p in /proc/[0-9]*; do
    [[ $(cat "$p/comm" 2>/dev/null) == canopy ]] && echo "${p#/proc/}"
  done
  return 0
}

stop_collector() {
  kill -TERM "$(canopy_pid)"
  wait "$collector_pid" || fail "the collector exited non-zero on SIGTERM: $(tail -5 /tmp/canopy.log)"
}

echo "install"
install_deb
check "user canopy is a system user in group canopy" \
  bash -c '[[ $(id -gn canopy) == canopy && $(id -u canopy) -lt 1000 ]]'
check "the unit is enabled ($wants)" test -L "$wants"
check "the unit was not started (no systemd here)" test -z "$(canopy_pid)"
check "canopy validate -c /etc/canopy/canopy.yaml" canopy validate -c /etc/canopy/canopy.yaml
check "canopy(1) is installed" test -s /usr/share/man/man1/canopy.1.gz

echo "the service as its unit runs it"
start_as_unit
check "the collector runs as canopy" \
  bash -c "[[ \$(awk '/^Uid:/{print \$2}' /proc/$(canopy_pid)/status) == \$(id -u canopy) ]]"
check "$sock is mode 0660 group canopy" bash -c "[[ \$(stat -c '%a %G' $sock) == '660 canopy' ]]"
useradd --create-home --groups canopy app
useradd --create-home outsider
check "an app user in group canopy sends 40 acked batches" bash -c \
  "runuser -u app -- timeout 60 canopy-loadgen --url ipc://$sock --agents 2 --batches 20 --batch-size 10 --depth 8 --tasks 2 \
     | tail -1 | tee /dev/stderr | grep -q 'sent=40 acked=40'"
check "a user outside group canopy cannot reach the socket" bash -c "! runuser -u outsider -- test -r /run/canopy/."
check "the spool is under /var/lib/canopy" test -d /var/lib/canopy/spool/file
stop_collector

echo "upgrade (reinstall over itself)"
echo "# edited by the admin" >>/etc/canopy/canopy.yaml
echo marker >/var/lib/canopy/spool/marker
install_deb
check "the edited config is kept" grep -q "edited by the admin" /etc/canopy/canopy.yaml
check "the spool is kept" test -f /var/lib/canopy/spool/marker
check "the unit is still enabled" test -L "$wants"

echo "remove"
dpkg -r canopy >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -r"; }
check "remove keeps the user" getent passwd canopy
check "remove keeps the data" test -f /var/lib/canopy/spool/marker
check "remove keeps the config" test -f /etc/canopy/canopy.yaml

echo "purge"
dpkg -P canopy >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -P"; }
check "purge deletes the user" bash -c '! getent passwd canopy'
check "purge deletes the group" bash -c '! getent group canopy'
check "purge deletes the data" test ! -e /var/lib/canopy
check "purge deletes the config" test ! -e /etc/canopy/canopy.yaml
check "purge deletes the enable link" test ! -L "$wants"

echo "reinstall after purge"
install_deb
check "the user is back" getent passwd canopy
check "the unit is enabled again" test -L "$wants"
check "the fresh config validates" canopy validate -c /etc/canopy/canopy.yaml
check "the fresh config has no admin edit" bash -c '! grep -q "edited by the admin" /etc/canopy/canopy.yaml'
