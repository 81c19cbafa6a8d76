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

step "apt install ./pi-mqtt-gatekeeper_*.deb"
deb=$(ls /mnt/host/dist/vm/pi-mqtt-gatekeeper_*.deb | head -1)
cp "$deb" /root/ && deb=/root/$(basename "$deb")
# The VM is not a Raspberry Pi: gpiozero takes the board from /proc/cpuinfo's Revision line,
# so the service sees one with a Pi 5's (made by vm-gpiosim-chip). Only this drop-in is the test's.
mkdir -p /etc/systemd/system/$unit.service.d
printf '[Service]\nBindReadOnlyPaths=/run/vm-cpuinfo:/proc/cpuinfo\n' > /etc/systemd/system/$unit.service.d/vm-board.conf
check "apt install $(basename "$deb")" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb"
check "the unit is enabled" systemctl -q is-enabled $unit
ls -l /dev/$chip

step "systemctl start $unit"
check "systemctl start" systemctl start $unit
for _ in $(seq 60); do
  systemctl -q is-active $unit || break
  journalctl -u $unit -o cat | grep -qi "ready\|listening" && break; sleep 0.3
done
check "active" systemctl -q is-active $unit
pid=$(systemctl show -p MainPID --value $unit)
user=$(ps -o user= -p "$pid" | xargs)
check "main process $pid runs as ${user:-?}, not root" test "$user" = gatekeeper
ls -l /dev/$chip
check "/dev/$chip belongs to gatekeeper (udev rule)" test "$(stat -c %U:%a /dev/$chip)" = gatekeeper:600
gpioinfo $chip | grep -E 'line +(17|27):'
check "gpioinfo: line 17 held by gatekeeper:porch_light" sh -c "gpioinfo $chip | grep -E 'line +17:' | grep -q 'gatekeeper:porch_light'"
check "gpioinfo: line 27 held by gatekeeper:doorbell" sh -c "gpioinfo $chip | grep -E 'line +27:' | grep -q 'gatekeeper:doorbell'"
journalctl -u $unit --no-pager -o short-monotonic | tail -8
check "journalctl -u $unit shows its log" sh -c "journalctl -u $unit -o cat _PID=$pid | grep -q ."

echo
echo "FINAL: $fails failures"
exit "$fails"
