#!/bin/bash
# vm/systemd/run.sh GUEST_SCRIPT [HOST_DIR]
#
# Boots the systemd VM (vm/systemd/build.sh) under QEMU: the harness's kernel, systemd as PID 1
# (init=/lib/systemd/systemd), a gpio-sim chip made at boot by vm-gpiosim-chip.service. Once
# multi-user.target is reached, vm-test.service runs GUEST_SCRIPT (bash) as root; its output
# comes over the serial console, its exit status through the 9p share mounted at /mnt/ctl,
# and the VM powers off. The script may reboot the VM (touch /run/vm-test-reboot and exit): it
# runs again on the next boot, on the same disk (QEMU's snapshot lasts until QEMU exits).
# HOST_DIR (read-only) is mounted at /mnt/host.
# Exit: the script's status; 124 timeout; 125 the VM ended without a result.
# Env: GPIOSIM_CACHE, GPIOSIM_TIMEOUT (600 s), GPIOSIM_MEM (1024), GPIOSIM_SMP (2),
#   GPIOSIM_ACCEL (auto|kvm|tcg), GPIOSIM_CPU (QEMU -cpu), GPIOSIM_KEEP=1 (keep the run dir), SYSTEMD_VM_VERBOSE=1
#   (systemd's boot status on the console).
set -euo pipefail
CACHE=${GPIOSIM_CACHE:-/var/cache/pi-mqtt-gpio-vm}
SD=$CACHE/systemd
T0=$(date +%s.%N)
[ $# -ge 1 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
SCRIPT=$1; HOST_DIR=${2:--}
for f in "$CACHE/vmlinux" "$SD/initramfs.cpio.gz" "$SD/rootfs.img"; do
  [ -f "$f" ] || { echo "systemd-vm: $f missing: run vm/systemd/build.sh" >&2; exit 2; }
done
ACCEL=${GPIOSIM_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case "$ACCEL" in
  kvm) ACCEL_ARGS=(-accel kvm -cpu "${GPIOSIM_CPU:-host}") ;;
  *)   ACCEL_ARGS=(-accel tcg,thread=multi -cpu "${GPIOSIM_CPU:-max}") ;;
esac
RUNDIR=$(mktemp -d /tmp/systemd-vm.XXXXXX)
CTL=$RUNDIR/ctl; mkdir "$CTL"; chmod 0777 "$CTL"
cleanup() {
  local pid; pid=$(cat "$RUNDIR/qemu.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qs systemd-vm "/proc/$pid/cmdline"; then kill "$pid" 2>/dev/null || true; fi
  if [ "${GPIOSIM_KEEP:-0}" = 1 ]; then echo "[systemd-vm] run dir kept: $RUNDIR" >&2; else rm -rf "$RUNDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp "$SCRIPT" "$CTL/guest_script"
SHARES=(-virtfs "local,path=$CTL,mount_tag=ctl,security_model=none,id=ctl")
if [ "$HOST_DIR" != - ]; then
  SHARES+=(-virtfs "local,path=$(cd "$HOST_DIR" && pwd),mount_tag=hostro,security_model=none,readonly=on,id=hostro")
fi
# mitigations=off: the guest kernel's CPU-vulnerability mitigations cost much under TCG
# emulation (the VM runs only the test; a run of this stage took 441 s with it, the guest's
# package steps half as long as without).
STATUS="systemd.show_status=false"
[ "${SYSTEMD_VM_VERBOSE:-0}" = 1 ] && STATUS="systemd.show_status=true"
BIOS=()
[ -f /usr/share/qemu/qboot.rom ] && BIOS=(-bios /usr/share/qemu/qboot.rom)
set +e
( timeout -k 5 "${GPIOSIM_TIMEOUT:-600}" \
  qemu-system-x86_64 -name systemd-vm -pidfile "$RUNDIR/qemu.pid" -machine q35 "${ACCEL_ARGS[@]}" \
    -m "${GPIOSIM_MEM:-1024}" -smp "${GPIOSIM_SMP:-2}" \
    -nodefaults -no-user-config -display none "${BIOS[@]}" \
    -kernel "$CACHE/vmlinux" -initrd "$SD/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init mitigations=off init=/lib/systemd/systemd $STATUS systemd.log_target=console systemd.log_level=warning ${SYSTEMD_VM_APPEND:-}" \
    -drive "file=$SD/rootfs.img,if=virtio,format=raw,snapshot=on,cache=unsafe" \
    "${SHARES[@]}" -serial stdio < /dev/null
  { echo $? > "$RUNDIR/qemu_rc"; } 2>/dev/null ) | sed -u -e 's/\r$//' &
wait $!
QRC=$(cat "$RUNDIR/qemu_rc" 2>/dev/null || echo 255)
set -e
T1=$(date +%s.%N)
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  echo "[systemd-vm] TIMEOUT after ${GPIOSIM_TIMEOUT:-600}s" >&2; RC=124
elif [ -s "$CTL/exit_code" ]; then
  RC=$(cat "$CTL/exit_code")
else
  echo "[systemd-vm] VM ended without a result (qemu rc=$QRC)" >&2; RC=125
fi
printf '[systemd-vm] accel=%s exit=%s wall=%.1fs guest uptime: test start %ss, end %ss\n' "$ACCEL" "$RC" \
  "$(awk "BEGIN{print $T1 - $T0}")" "$(cat "$CTL/uptime_test_start" 2>/dev/null)" "$(cat "$CTL/uptime_test_end" 2>/dev/null)" >&2
exit "$RC"
