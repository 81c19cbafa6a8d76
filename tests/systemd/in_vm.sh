#!/bin/bash
# Runs inside the systemd VM (vm/systemd/run.sh) as root, after multi-user.target: installs
# the gatekeeper's Debian package as a user would and checks the running service. The host's
# checkout is at /mnt/host (read-only) with the package under dist/vm/. One line per check:
# "PASS: ..." or "FAIL: ..."; the exit status is the number of failures.
set -u
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
step() { echo; echo "=== $* (uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
unit=pi-mqtt-gatekeeper

step "boot"
check "systemd is PID 1 ($(cat /proc/1/comm))" test "$(cat /proc/1/comm)" = systemd
# (is-system-running says "starting" while this oneshot runs: the target and failures instead)
check "multi-user.target reached" systemctl -q is-active multi-user.target
failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)
check "no failed units${failed:+ ($failed)}" test -z "$failed"
chip=$(gpiodetect | awk '/\[pinctrl-rp1\]/ {print $1}')
check "gpio-sim chip made at boot: ${chip:-none}" test -n "$chip"
sim=/sys/devices/platform/$(cat /sys/kernel/config/gpio-sim/header/dev_name)/$chip
echo "FINAL: $fails failures"
exit "$fails"
