#!/bin/bash
# Runs inside the systemd VM (vm/systemd/run.sh) as root, after multi-user.target, on each of
# the VM's two boots. It runs every command of docs/install.md as printed, in the page's order
# (tests/systemd/doc_commands.py extracts them; the few it must replace say why there), first
# the Debian package's way, then scripts/install's, and checks what each step did:
#   package: the previous commit's package installed, configured (an output with restore:
#     true), started; then the upgrade to this commit's package (config, users and state kept,
#     restarted on the new version, the output restored); a newer package whose unpack fails
#     (the old one stays installed and running); systemctl stop (the kernel's gpio trace shows
#     the outputs written to their safe state before the lines are released); systemctl
#     reboot (the service back, the output restored); the rollback; remove and purge (the
#     chips back to the gpio group without a reboot).
#   scripts/install: install, start, an upgrade to a newer commit (config and users kept,
#     restarted), the rollback to the previous venv, --uninstall, --purge.
# VM_PART (package | installer | all, default all) picks the ways this VM runs: the stage boots
# two VMs side by side, one per way, each from the same fresh image.
# The host's checkout is at /mnt/host (read-only) with, under dist/vm/ (scripts/systemd-stage),
# this commit's package, the previous commit's (prev/), one that fails (broken/) and a
# wheelhouse for scripts/install. One line per check: "PASS: ..." or "FAIL: ..."; the exit
# status is the number of failures.
set -u
part=${VM_PART:-all}
case "$part" in package|installer|all) ;; *) echo "FAIL: VM_PART=$part"; exit 1 ;; esac
stage=/var/lib/vm-stage   # on the VM's disk: kept across its reboot
mkdir -p $stage
fails=$(cat $stage/fails 2>/dev/null || echo 0)
boot=$(( $(cat $stage/boots 2>/dev/null || echo 0) + 1 )); echo $boot > $stage/boots
if [ "$boot" -gt 2 ]; then echo "FAIL: an unexpected boot ($boot)"; exit $((fails + 1)); fi
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); echo $fails > $stage/fails; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
step() { echo; echo "=== $* (boot $boot, uptime $(cut -d' ' -f1 /proc/uptime) s)"; }
unit=pi-mqtt-gatekeeper
etc=/etc/pi-mqtt-gatekeeper
opt=/opt/pi-mqtt-gatekeeper
dist=/mnt/host/dist/vm
export DEBIAN_FRONTEND=noninteractive DOC_PW=s3cret-Pass
chip=$(gpiodetect | awk '/\[pinctrl-rp1\]/ {print $1}')
sim=/sys/devices/platform/$(cat /sys/kernel/config/gpio-sim/header/dev_name)/$chip
line() { cat "$sim/sim_gpio$1/value"; }
main_pid() { systemctl show -p MainPID --value $unit; }
version() { dpkg-query -W -f '${Version} ${Status}' $unit 2>/dev/null; }
py() { "$opt/venv/bin/python" "$@"; }
login() {  # login USER PASSWORD: MQTT CONNECT to 127.0.0.1:1883, exit 0 when accepted
  py - "$1" "$2" <<'PY'
import sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.username_pw_set(sys.argv[1], sys.argv[2])
res = {}
c.on_connect = lambda cl, ud, fl, rc, pr: res.setdefault("rc", rc)
try:
    c.connect("127.0.0.1", 1883, 60)
except Exception as exc:
    print("connect:", exc); sys.exit(2)
end = time.monotonic() + 60   # (no loop_forever: it would reconnect after a refusal)
while "rc" not in res and time.monotonic() < end and c.loop(0.5) == mqtt.MQTT_ERR_SUCCESS:
    pass
print("CONNACK:", res.get("rc", "none")); sys.exit(0 if res.get("rc") == 0 else 1)
PY
}
refused() { ! login "$@"; }
retained() {  # retained TOPIC: the retained message on TOPIC (as alice)
  py - "$1" <<'PY'
import sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.username_pw_set("alice", "s3cret-Pass")
got = []
c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(sys.argv[1], 1)
c.on_message = lambda cl, ud, msg: got.append(msg.payload.decode())
c.connect("127.0.0.1", 1883, 60)
end = time.monotonic() + 60
while not got and time.monotonic() < end and c.loop(0.5) == mqtt.MQTT_ERR_SUCCESS:
    pass
print(got[0] if got else "none")
PY
}
call() { PI_MQTT_PASSWORD=$DOC_PW pi-mqtt-gpio --timeout 60 --user alice --node living-room call "$@"; }
wait_up() {  # wait_up [OLD_PID]: until a main process other than OLD_PID has logged " up: "
  local p
  for _ in $(seq 100); do
    p=$(main_pid)
    if [ "$p" != 0 ] && [ "$p" != "${1:-}" ] &&
       journalctl -u $unit -o cat _PID="$p" 2>/dev/null | grep -q " up: "; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}
chip_is() { test "$(stat -c %U:%G:%a /dev/$chip)" = "$1"; }
held() { gpioinfo $chip | grep -E "line +$1:" | grep -q "gatekeeper:$2"; }
state_has_heater() {
  for _ in $(seq 50); do grep -q '"heater"' /var/lib/$unit/state.json 2>/dev/null && return 0; sleep 0.2; done
  return 1
}
service_checks() {  # the running service: its user, its chip, its lines, its log
  local pid; pid=$(main_pid)
  check "main process $pid runs as $(ps -o user= -p "$pid" | xargs), not root" \
    test "$(ps -o user= -p "$pid" | xargs)" = gatekeeper
  check "/dev/$chip belongs to gatekeeper (udev rule)" test "$(stat -c %U:%a /dev/$chip)" = gatekeeper:600
  gpioinfo $chip | grep -E 'line +(17|22|27):'
  check "gpioinfo: lines 17, 22, 27 held by gatekeeper:porch_light, heater, doorbell" \
    eval "held 17 porch_light && held 22 heater && held 27 doorbell"
}
chips_back() {  # after a removal: the chip is the gpio group's again, no reboot
  getent passwd pi >/dev/null || useradd -m -G gpio pi   # (a member of gpio)
  ls -l /dev/$chip
  check "after $1 /dev/$chip is root:gpio 0660" chip_is root:gpio:660
  check "a member of gpio drives line 17 (gpioset as pi)" runuser -u pi -- gpioset $chip 17=1
}

# --- the commands of docs/install.md ----------------------------------------------------------
# The VM has no network: the clone is of this checkout (a bare copy whose main branch the test
# moves: the previous commit, then this one); build-deb is replaced by a copy of the package the
# stage built on the host for the commit checked out.
export DOC_REPO=/root/repo.git SUDO_EDITOR=/root/edit-config
head_commit=$(cat $dist/head-commit)
prev_commit=$(cat $dist/prev/commit 2>/dev/null || true)
vm_build_deb() {
  local c deb; c=$(git rev-parse HEAD)
  if [ "$c" = "$head_commit" ]; then deb=$(ls $dist/pi-mqtt-gatekeeper_*.deb)
  elif [ "$c" = "$prev_commit" ]; then deb=$(ls $dist/prev/pi-mqtt-gatekeeper_*.deb)
  else echo "vm_build_deb: no package for $c" >&2; return 1; fi
  mkdir -p dist && cp "$deb" dist/ && echo "$PWD/dist/$(basename "$deb")"
}
doc_run() {  # doc_run PASS N ORIGINAL COMMAND TYPED (from doc_commands.py)
  local p=$1 n=$2 original=$3 cmd=$4 typed=$5 rc
  [ "$n" -le "$(cat $stage/doc_$p 2>/dev/null || echo 0)" ] && return 0   # done before the reboot
  before_doc "$p" "$original"
  echo "\$ $original    [uptime $(cut -d' ' -f1 /proc/uptime) s]"
  [ "$cmd" != "${original%%  #*}" ] && [ "$cmd" != "${original%% #*}" ] && echo "  (run as: $cmd)"
  if [ -n "$typed" ]; then
    eval "$cmd" < <(eval "printf '%s\n' $typed"); rc=$?
  else
    eval "$cmd" < /dev/null; rc=$?
  fi
  check "docs ($p): $original" test $rc = 0
  echo "$n" > $stage/doc_$p; pwd > $stage/pwd_$p
  after_doc "$p" "$original"
}
cat > /root/edit-config <<'EOF'
#!/bin/sh
# sudoedit's editor here: one more output, with restore: true (state.json keeps its value);
# and a longer login time limit than 5 s: under emulation on a loaded machine the password
# hash of one login alone can take longer (the broker then closes the socket before CONNACK)
sed -i -e '/^  porch_light:/a\  heater:      {type: OutputDevice, pin: 22, restore: true}' \
  -e '/^broker:/a\  limits: {connect_timeout_s: 60}' "$1"
EOF
chmod 755 /root/edit-config

before_doc() {
  case "$1:$2" in
  package:"sudo pi-mqtt-gatekeeper passwd /etc/pi-mqtt-gatekeeper/users bob"*)
    check "bob cannot log in before passwd" refused bob "$DOC_PW" ;;
  package:"cd ~/pi-mqtt-gatekeeper && git pull")
    step "the upgrade: from the previous commit's package to this one's"
    check "pi-mqtt-gpio call heater on" call heater on
    check "the state file holds the heater" state_has_heater
    git -C $DOC_REPO update-ref refs/heads/main "$head_commit"
    old_pid=$(main_pid) ;;
  package:"sudo apt remove"*)
    step "removal" ;;
  installer:"cd ~/pi-mqtt-gatekeeper && git pull && sudo ./scripts/install")
    # (a failed build changing nothing is tests/deploy/test_install.py's, on the host: a
    # third venv build here would cost a minute or more of every run)
    echo "# a newer commit" >> /root/newer/src/pi_mqtt_gpio/__init__.py
    git -C /root/newer -c user.name=t -c user.email=t@localhost commit -qam "a newer commit"
    git -C /root/newer push -q origin HEAD:main
    old_pid=$(main_pid); DOC_PREV_VENV=$(readlink $opt/venv | sed 's/^venv-//')
    step "the upgrade to the newer commit" ;;
  installer:"sudo apt-get update"*)
    step "scripts/install, the commands of docs/install.md"
    git -C $DOC_REPO update-ref refs/heads/main "$head_commit"
    git clone -q $DOC_REPO /root/newer ;;
  esac
}

after_doc() {
  case "$1:$2" in
  *:"sudo apt install ./dist/pi-mqtt-gatekeeper_"*)
    check "dpkg: $unit $prev_version installed" test "$(version)" = "$prev_version install ok installed"
    check "the unit is enabled" systemctl -q is-enabled $unit
    check "not started before it is configured" sh -c "! systemctl -q is-active $unit" ;;
  *:"sudoedit "*)
    check "sudoedit changed the config (heater, restore: true)" grep -q "^  heater: .*restore: true" $etc/config.yaml ;;
  *:"sudo systemctl start pi-mqtt-gatekeeper")
    check "up" wait_up
    service_checks ;;
  *:"ps -o user=,pid=,args= -p"*)
    check "the main process runs as gatekeeper" test "$(ps -o user= -p "$(main_pid)" | xargs)" = gatekeeper ;;
  *:"systemd-analyze security pi-mqtt-gatekeeper"*)
    score=$(systemd-analyze security $unit --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    check "systemd-analyze security: ${score:-none} <= 2.0" awk -v s="${score:-99}" 'BEGIN {exit !(s <= 2.0)}' ;;
  *:"journalctl -u pi-mqtt-gatekeeper --since today")
    check "journalctl -u $unit shows the service's log" sh -c "journalctl -u $unit -o cat _PID=$(main_pid) | grep -q ' up: '" ;;
  *:"sudo systemctl reload pi-mqtt-gatekeeper"*)
    pid=$(main_pid)
    for _ in $(seq 50); do login bob "$DOC_PW" >/dev/null && break; sleep 0.2; done
    check "bob logs in after the reload" login bob "$DOC_PW"
    check "a wrong password is refused" refused bob wrong-Pass
    check "still the same main process after reload" test "$(main_pid)" = "$pid" ;;
  package:'sudo apt install "$(./scripts/build-deb)"')
    check "dpkg: $unit $cur_version installed" test "$(version)" = "$cur_version install ok installed"
    check "the files on disk are the new package's (dpkg --verify)" sh -c "! dpkg --verify $unit | grep -v ' c /etc/'"
    check "the config's change kept" grep -q "^  heater: .*restore: true" $etc/config.yaml
    check "no config file left aside (.dpkg-*)" sh -c "! ls $etc | grep -q dpkg"
    check "the users file kept" grep -q "^alice:" $etc/users
    check "restarted on the new version (main process $old_pid -> $(main_pid))" wait_up "$old_pid"
    check "pi-mqtt-gatekeeper --version: the new program's ($py_version)" \
      sh -c "pi-mqtt-gatekeeper --version | grep -qF '$py_version'"
    check "alice still logs in" login alice "$DOC_PW"
    check "the heater restored (restore: true): line 22 high ($(line 22))" test "$(line 22)" = 1
    service_checks
    failed_deb_upgrade
    safe_stop
    step "systemctl reboot (the service stopped, enabled)"
    echo $fails > $stage/fails; touch /run/vm-test-reboot; sync
    exit 0 ;;   # vm-test reboots the VM; this script goes on after the reboot
  package:"sudo apt install --allow-downgrades"*)
    check "dpkg: $unit $prev_version installed again" test "$(version)" = "$prev_version install ok installed"
    check "the config's change kept" grep -q "^  heater: .*restore: true" $etc/config.yaml
    check "restarted on it" wait_up "$pid"
    check "alice logs in" login alice "$DOC_PW"
    check "the heater restored: line 22 high ($(line 22))" test "$(line 22)" = 1 ;;
  package:"sudo apt remove"*)
    check "the service stopped" sh -c "! systemctl -q is-active $unit"
    chips_back "apt remove" ;;
  package:"sudo apt purge"*)
    chips_back "apt purge"
    check "after purge the user gatekeeper is gone" sh -c "! getent passwd gatekeeper"
    check "after purge /etc/pi-mqtt-gatekeeper is gone" test ! -e $etc ;;
  installer:"sudo ./scripts/install")
    check "$opt/venv links to venv-<hash>" test -L $opt/venv
    check "the venv was built with Debian's pip wheel, not a pip of its own" \
      eval "test ! -e $opt/venv/bin/pip && ! ls -d $opt/venv/lib/python3*/site-packages/setuptools 2>/dev/null"
    # (configured and started as the package was, by the same page's commands above)
    /root/edit-config $etc/config.yaml
    check "pi-mqtt-gatekeeper passwd" sh -c "echo \"\$DOC_PW\" | pi-mqtt-gatekeeper passwd $etc/users alice --role operator"
    check "systemctl start" systemctl start $unit
    check "up" wait_up
    service_checks ;;
  installer:"cd ~/pi-mqtt-gatekeeper && git pull && sudo ./scripts/install")
    check "the venv link switched (venv-$DOC_PREV_VENV -> $(readlink $opt/venv)), the previous kept" \
      eval "test \"\$(readlink $opt/venv)\" != venv-$DOC_PREV_VENV && test -d $opt/venv-$DOC_PREV_VENV"
    check "restarted on the new venv (main process $old_pid -> $(main_pid))" wait_up "$old_pid"
    check "the config and the users kept" eval "grep -q '^  heater:' $etc/config.yaml && grep -q '^alice:' $etc/users"
    check "alice logs in" login alice "$DOC_PW"
    pid=$(main_pid) ;;
  installer:"sudo systemctl restart pi-mqtt-gatekeeper")
    check "rolled back: venv -> venv-$DOC_PREV_VENV" test "$(readlink $opt/venv)" = "venv-$DOC_PREV_VENV"
    check "restarted on it" wait_up "$pid"
    check "alice logs in" login alice "$DOC_PW" ;;
  installer:"sudo ./scripts/install --uninstall"*)
    check "the service is gone" sh -c "! systemctl -q is-active $unit"
    chips_back "--uninstall" ;;
  installer:"sudo ./scripts/install --purge"*)
    chips_back "--purge"
    check "after --purge the user gatekeeper is gone" sh -c "! getent passwd gatekeeper" ;;
  esac
}

failed_deb_upgrade() {
  step "a failed upgrade: a newer package whose unpack fails at its last file"
  local broken pid rc; broken=$(ls $dist/broken/*.deb | head -1); pid=$(main_pid)
  apt-get install -y -q "$broken" > /root/broken.log 2>&1; rc=$?
  grep -E "^(dpkg|E):" /root/broken.log
  check "apt install fails (exit $rc)" test "$rc" != 0
  check "the error says why (trying to overwrite '/usr/bin/gpioinfo')" grep -q "trying to overwrite '/usr/bin/gpioinfo'" /root/broken.log
  check "dpkg: still $cur_version, installed" test "$(version)" = "$cur_version install ok installed"
  check "the program's files are the installed version's (dpkg --verify)" sh -c "! dpkg --verify $unit | grep -v ' c /etc/'"
  check "the same main process still runs ($pid)" test "$(main_pid)" = "$pid"
  check "alice logs in" login alice "$DOC_PW"
  check "pi-mqtt-gpio call porch_light on (after the failed upgrade)" call porch_light on
  check "gpio-sim line 17 is high ($(line 17))" test "$(line 17)" = 1
}

safe_stop() {
  step "systemctl stop drives the outputs to their safe state before releasing them"
  # A line only released would read low too (gpio-sim's pull-down), and gpiozero's close
  # makes it an input without writing it: the kernel's gpio trace events show the daemon
  # writing 0 to the lines while it stops.
  local tr=/sys/kernel/tracing base
  [ -d $tr/events/gpio ] || mount -t tracefs tracefs $tr
  [ -e /sys/kernel/debug/gpio ] || mount -t debugfs debugfs /sys/kernel/debug
  base=$(sed -n "s/^$chip: GPIOs \([0-9]*\)-.*/\1/p" /sys/kernel/debug/gpio)
  echo 0 > $tr/tracing_on; : > $tr/trace; echo 1 > $tr/events/gpio/enable; echo 1 > $tr/tracing_on
  check "systemctl stop" systemctl stop $unit
  echo 0 > $tr/tracing_on
  grep -E "gpio_value: .* set|gpio_direction: ($((base + 17))|$((base + 22))) " $tr/trace | tail -6
  # written 0, and before the line was made an input (gpiozero's close) and released; with
  # safe_state: "on" the same trace shows "set 1" then "in", and after kill -9 nothing at all
  written_0_first() {  # written_0_first GPIO
    awk -v g="$1" '$0 ~ "gpio_value: " g " set 0" && !s {s = NR}
                   $0 ~ "gpio_direction: " g " +in" && !i {i = NR}
                   END {exit !(s && (!i || s < i))}' $tr/trace
  }
  check "trace: line 17 (GPIO $((base + 17))) written 0 during the stop, before it was made an input" written_0_first $((base + 17))
  check "trace: line 22 (the heater) written 0 during the stop, before it was made an input" written_0_first $((base + 22))
  check "after stop lines 17 and 22 are low ($(line 17) $(line 22))" test "$(line 17)$(line 22)" = 00
  check "after stop the lines are free" sh -c "! gpioinfo $chip | grep -q gatekeeper:"
  check "the state file still has the heater on" grep -q '"heater"' /var/lib/$unit/state.json
}

cur_version=$(dpkg-deb -f $dist/pi-mqtt-gatekeeper_*.deb Version)
prev_version=$(dpkg-deb -f $dist/prev/pi-mqtt-gatekeeper_*.deb Version 2>/dev/null)
py_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' /mnt/host/pyproject.toml)
DOC_PREV_VERSION=$prev_version
pid=0 old_pid=0

if [ "$boot" = 1 ]; then
  step "boot"
  check "systemd is PID 1 ($(cat /proc/1/comm))" test "$(cat /proc/1/comm)" = systemd
  # (is-system-running says "starting" while this oneshot runs: the target and failures instead)
  check "multi-user.target reached" systemctl -q is-active multi-user.target
  failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)
  check "no failed units${failed:+ ($failed)}" test -z "$failed"
  check "gpio-sim chip made at boot: ${chip:-none}" test -n "$chip"
  if [ -z "$prev_commit" ] && [ "$part" != installer ]; then
    echo "FAIL: no previous commit's package under $dist/prev (a checkout with one commit?)"
    exit $((fails + 1))
  fi
  # The VM is not a Raspberry Pi: gpiozero takes the board from /proc/cpuinfo's Revision line,
  # so the service sees one with a Pi 5's (made by vm-gpiosim-chip). Only this drop-in is the test's.
  mkdir -p /etc/systemd/system/$unit.service.d
  printf '[Service]\nBindReadOnlyPaths=/run/vm-cpuinfo:/proc/cpuinfo\n' > /etc/systemd/system/$unit.service.d/vm-board.conf
  git clone -q --bare /mnt/host $DOC_REPO
  git -C $DOC_REPO update-ref refs/heads/main "$prev_commit"
  git -C $DOC_REPO symbolic-ref HEAD refs/heads/main
  [ "$part" != installer ] && step "the Debian package, the commands of docs/install.md (previous commit ${prev_commit:0:9}, $prev_version)"
else
  step "after the reboot"
  check "the service is active after the boot" wait_up
  service_checks
  check "the heater restored: line 22 high ($(line 22))" test "$(line 22)" = 1
  heater=$(retained gatekeeper/living-room/device/heater/state)
  echo "retained heater state: $heater"
  check "its retained state is on" sh -c "echo '$heater' | grep -q '\"is_active\": *true'"
  check "porch_light (no restore) back in its safe state: line 17 low" test "$(line 17)" = 0
  pid=$(main_pid)
  cd "$(cat $stage/pwd_package)" || exit 1
fi

if [ "$part" != installer ]; then
  python3 /mnt/host/tests/systemd/doc_commands.py /mnt/host/docs/install.md package > /root/doc-package.sh \
    || { echo "FAIL: doc_commands.py"; exit $((fails + 1)); }
  cd ~ 2>/dev/null; [ "$boot" = 2 ] && cd "$(cat $stage/pwd_package)"
  # shellcheck disable=SC1091
  source /root/doc-package.sh
fi
if [ "$part" = package ]; then
  echo; echo "FINAL: $fails failures"; exit "$fails"
fi

# pip without network (sudo keeps no PIP_* variable): the stage's wheelhouse
printf '[global]\nno-index = true\nfind-links = %s\n' $dist/wheelhouse > /etc/pip.conf
export HOME=/root/installer
mkdir -p $HOME && cd $HOME
python3 /mnt/host/tests/systemd/doc_commands.py /mnt/host/docs/install.md installer > /root/doc-installer.sh \
  || { echo "FAIL: doc_commands.py"; exit $((fails + 1)); }
# shellcheck disable=SC1091
source /root/doc-installer.sh

echo
echo "FINAL: $fails failures"
exit "$fails"
