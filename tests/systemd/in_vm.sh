#!/bin/bash
# Runs inside the systemd VM (vm/systemd/run.sh) as root, after multi-user.target: installs
# the gatekeeper's Debian package, then scripts/install, as a user would, and checks the running
# service, its removal and purge. The host's
# checkout is at /mnt/host (read-only) with the package and a wheelhouse for scripts/install
# under dist/vm/ (made by scripts/systemd-stage). One line per check:
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

step "systemd-analyze security $unit"
score=$(systemd-analyze security $unit --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "exposure score: ${score:-none}"
check "systemd-analyze security: ${score:-none} <= 2.0" awk -v s="${score:-99}" 'BEGIN {exit !(s <= 2.0)}'

step "pi-mqtt-gatekeeper passwd + systemctl reload, then a login"
venv=/opt/pi-mqtt-gatekeeper/venv
login() {  # login USER PASSWORD: MQTT CONNECT to 127.0.0.1:1883, exit 0 when accepted
  "$venv/bin/python" - "$1" "$2" <<'PY'
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.username_pw_set(sys.argv[1], sys.argv[2])
try:
    c.connect("127.0.0.1", 1883, 10)
except Exception as exc:
    print("connect:", exc); sys.exit(2)
res = {}
c.on_connect = lambda cl, ud, fl, rc, pr: (res.setdefault("rc", rc), cl.disconnect())
c.loop_forever(timeout=10)
print("CONNACK:", res.get("rc")); sys.exit(0 if res.get("rc") == 0 else 1)
PY
}
refused() { ! login "$@"; }
check "alice cannot log in before passwd" refused alice s3cret-Pass
check "pi-mqtt-gatekeeper passwd (--password-stdin)" sh -c \
  "printf '%s\n' s3cret-Pass | pi-mqtt-gatekeeper passwd /etc/pi-mqtt-gatekeeper/users alice --role operator --password-stdin"
ls -l /etc/pi-mqtt-gatekeeper/users
check "systemctl reload" systemctl reload $unit
sleep 1
check "alice logs in" login alice s3cret-Pass
check "a wrong password is refused" refused alice wrong-Pass
check "still the same main process after reload" test "$(systemctl show -p MainPID --value $unit)" = "$pid"

step "an output on, then systemctl stop"
check "pi-mqtt-gpio call porch_light on" env PI_MQTT_PASSWORD=s3cret-Pass pi-mqtt-gpio --user alice --node living-room call porch_light on
sleep 0.5
v=$(cat "$sim/sim_gpio17/value")
check "gpio-sim line 17 is high ($v)" test "$v" = 1
check "systemctl stop" systemctl stop $unit
v=$(cat "$sim/sim_gpio17/value")
check "after stop line 17 is low ($v; driven off, or released to gpio-sim's pull-down)" test "$v" = 0
gpioinfo $chip | grep -E 'line +(17|27):'
check "after stop the lines are free" sh -c "! gpioinfo $chip | grep -q gatekeeper:"
journalctl -u $unit -o cat --no-pager | tail -5

step "apt remove, then apt purge: the chips back to the gpio group without a reboot"
useradd -m -G gpio pi
check "apt remove" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q pi-mqtt-gatekeeper
ls -l /dev/$chip
check "after remove /dev/$chip is root:gpio 0660" test "$(stat -c %U:%G:%a /dev/$chip)" = root:gpio:660
check "a member of gpio reads line 17 (gpioget as pi)" runuser -u pi -- gpioget $chip 17
check "apt purge" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pi-mqtt-gatekeeper
ls -l /dev/$chip
check "after purge /dev/$chip is root:gpio 0660" test "$(stat -c %U:%G:%a /dev/$chip)" = root:gpio:660
check "after purge the user gatekeeper is gone" sh -c "! getent passwd gatekeeper"
check "after purge /etc/pi-mqtt-gatekeeper is gone" test ! -e /etc/pi-mqtt-gatekeeper
check "a member of gpio drives line 17 (gpioset as pi)" runuser -u pi -- gpioset $chip 17=1

step "scripts/install from the checkout (pip offline, from the stage's wheelhouse)"
mkdir -p /root/src
tar -C /mnt/host --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
  --exclude=./node_modules --exclude='*/__pycache__' -cf - . | tar -C /root/src -xf -
check "scripts/install" env PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/host/dist/vm/wheelhouse /root/src/scripts/install
check "systemctl start" systemctl start $unit
for _ in $(seq 60); do
  systemctl -q is-active $unit || break
  gpioinfo $chip | grep -q gatekeeper:porch_light && break; sleep 0.3
done
pid=$(systemctl show -p MainPID --value $unit)
user=$(ps -o user= -p "$pid" | xargs)
check "main process $pid runs as ${user:-?}" test "$user" = gatekeeper
check "gpioinfo: line 17 held by gatekeeper:porch_light" sh -c "gpioinfo $chip | grep -E 'line +17:' | grep -q 'gatekeeper:porch_light'"
check "/dev/$chip belongs to gatekeeper" test "$(stat -c %U:%a /dev/$chip)" = gatekeeper:600
check "scripts/install --uninstall" /root/src/scripts/install --uninstall
check "after --uninstall the service is gone" sh -c "! systemctl -q is-active $unit"
ls -l /dev/$chip
check "after --uninstall /dev/$chip is root:gpio 0660" test "$(stat -c %U:%G:%a /dev/$chip)" = root:gpio:660
check "a member of gpio reads line 17" runuser -u pi -- gpioget $chip 17
check "scripts/install --purge" /root/src/scripts/install --purge
ls -l /dev/$chip
check "after --purge /dev/$chip is root:gpio 0660" test "$(stat -c %U:%G:%a /dev/$chip)" = root:gpio:660
check "after --purge the user gatekeeper is gone" sh -c "! getent passwd gatekeeper"
check "a member of gpio drives line 17" runuser -u pi -- gpioset $chip 17=1

echo
echo "FINAL: $fails failures"
exit "$fails"
