#!/bin/bash
# run.sh GUEST_SCRIPT [HOST_DIR|- [ARGS...]]
#
# Boots the cached Debian kernel + rootfs (see build.sh) under qemu/KVM,
# creates a gpio-sim chip (default 28 lines named GPIO0..GPIO27), mounts
# HOST_DIR at /host (read-only unless GPIOSIM_HOST_RW=1; cwd is /host), and
# runs GUEST_SCRIPT (copied in; *.py -> python3, #! -> executed, else bash)
# with ARGS.  Guest output streams to stdout; exit status is the script's.
#
# Special exit codes: 124 timeout, 125 VM ended without a result,
# 120/121 gpio-sim setup failed in the guest.
#
# Env knobs: GPIOSIM_CACHE (/var/cache/pi-mqtt-gpio-vm), GPIOSIM_LINES (28),
#   GPIOSIM_NAMES (comma list; default GPIO0..GPIO<n-1>; "" = unnamed),
#   GPIOSIM_LABEL (gpio-sim bank label, default "gpio-sim"),
#   GPIOSIM_PAD_CHIPS (0; number of 1-line dummy chips created first, so the
#   main chip becomes gpiochip<PAD>), GPIOSIM_TIMEOUT (300 s), GPIOSIM_MEM
#   (1024 MiB), GPIOSIM_SMP (2), GPIOSIM_HOST_RW (0), GPIOSIM_VERBOSE (0),
#   GPIOSIM_KEEP (0: keep the per-run control dir with dmesg.txt),
#   GPIOSIM_ENV (extra "K=V K2=V2" exported in the guest),
#   GPIOSIM_PI_REVISION (e.g. d04170: bind-mounts a /proc/cpuinfo with that
#   "Revision" so gpiozero's Pi board detection works unmodified),
#   GPIOSIM_ACCEL (auto|kvm|tcg), GPIOSIM_APPEND (extra kernel cmdline).
set -euo pipefail

CACHE=${GPIOSIM_CACHE:-/var/cache/pi-mqtt-gpio-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s.%N)

[ $# -ge 1 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
SCRIPT=$1; shift
HOST_DIR=${1:--}; [ $# -ge 1 ] && shift
[ -f "$SCRIPT" ] || { echo "run.sh: no such guest script: $SCRIPT" >&2; exit 2; }
for f in vmlinuz initramfs.cpio.gz rootfs.img; do
  [ -f "$CACHE/$f" ] || { echo "run.sh: $CACHE/$f missing - run build.sh first" >&2; exit 2; }
done
# Accelerator: KVM needs hardware virtualisation visible in this machine
# (vmx/svm).  Some nested hosts expose a /dev/kvm that cannot run a stock
# kernel (e.g. Firecracker guests with kvm-pvm, which only boots PVM-built
# guest kernels: a Debian kernel hangs right after "Probing EDD"), so
# "auto" falls back to TCG (software emulation, several times slower).
ACCEL=${GPIOSIM_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case "$ACCEL" in
  kvm) ACCEL_ARGS=(-accel kvm -cpu "${GPIOSIM_CPU:-host}") ;;
  tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu "${GPIOSIM_CPU:-max}") ;;
  *) echo "run.sh: GPIOSIM_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
esac

LINES=${GPIOSIM_LINES:-28}
if [ -z "${GPIOSIM_NAMES+x}" ]; then
  NAMES=$(seq -s, -f 'GPIO%g' 0 $((LINES - 1)))
else
  NAMES=$GPIOSIM_NAMES
fi

RUNDIR=$(mktemp -d /tmp/gpiosim-vm.XXXXXX)
CTL=$RUNDIR/ctl          # shared with the guest as 9p tag "ctl"
mkdir "$CTL"
cleanup() {
  local pid
  pid=$(cat "$RUNDIR/qemu.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qs gpiosim-vm "/proc/$pid/cmdline"; then kill "$pid" 2>/dev/null || true; fi
  if [ "${GPIOSIM_KEEP:-0}" = 1 ]; then echo "[gpiosim-vm] run dir kept: $RUNDIR" >&2; else rm -rf "$RUNDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CTL/lib"
cp "$HERE/guest/stage2.sh" "$CTL/stage2.sh"
cp "$HERE/guest/gpiosim_vm.py" "$CTL/lib/"
cp "$SCRIPT" "$CTL/guest_script"; chmod 755 "$CTL/guest_script"
{
  printf 'GPIOSIM_LINES=%q\nGPIOSIM_NAMES=%q\nGPIOSIM_LABEL=%q\nGPIOSIM_PAD_CHIPS=%q\n' \
    "$LINES" "$NAMES" "${GPIOSIM_LABEL:-gpio-sim}" "${GPIOSIM_PAD_CHIPS:-0}"
  printf 'GPIOSIM_VERBOSE=%q\nGUEST_SCRIPT_NAME=%q\nGPIOSIM_PI_REVISION=%q\n' \
    "${GPIOSIM_VERBOSE:-0}" "$(basename "$SCRIPT")" "${GPIOSIM_PI_REVISION:-}"
  printf 'GUEST_ARGS=('; for a in "$@"; do printf '%q ' "$a"; done; printf ')\n'
  for kv in ${GPIOSIM_ENV:-}; do printf 'export %q\n' "$kv"; done
} > "$CTL/config.sh"

SHARES=(-virtfs "local,path=$CTL,mount_tag=ctl,security_model=none,id=ctl")
if [ "$HOST_DIR" != - ]; then
  [ -d "$HOST_DIR" ] || { echo "run.sh: HOST_DIR $HOST_DIR is not a directory" >&2; exit 2; }
  HOST_DIR=$(cd "$HOST_DIR" && pwd)
  if [ "${GPIOSIM_HOST_RW:-0}" = 1 ]; then
    SHARES+=(-virtfs "local,path=$HOST_DIR,mount_tag=host,security_model=none,id=host")
  else
    SHARES+=(-virtfs "local,path=$HOST_DIR,mount_tag=hostro,security_model=none,readonly=on,id=hostro")
  fi
fi

KERNEL=${GPIOSIM_KERNEL:-}
if [ -z "$KERNEL" ]; then [ -f "$CACHE/vmlinux" ] && KERNEL=vmlinux || KERNEL=vmlinuz; fi
BIOS=()
[ -f /usr/share/qemu/qboot.rom ] && [ "${GPIOSIM_SEABIOS:-0}" != 1 ] && BIOS=(-bios /usr/share/qemu/qboot.rom)

set +e
# Pipeline runs in the background so that a TERM/INT to run.sh is handled at
# once (cleanup() kills qemu through its pidfile).
( timeout -k 5 "${GPIOSIM_TIMEOUT:-300}" \
  qemu-system-x86_64 -name gpiosim-vm -pidfile "$RUNDIR/qemu.pid" -machine q35 "${ACCEL_ARGS[@]}" \
    -m "${GPIOSIM_MEM:-1024}" -smp "${GPIOSIM_SMP:-2}" \
    -nodefaults -no-user-config -display none -no-reboot "${BIOS[@]}" \
    -kernel "$CACHE/$KERNEL" -initrd "$CACHE/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init mitigations=off ${GPIOSIM_APPEND:-}" \
    -drive "file=$CACHE/rootfs.img,if=virtio,format=raw,snapshot=on,cache=unsafe" \
    "${SHARES[@]}" \
    -serial stdio < /dev/null
  { echo $? > "$RUNDIR/qemu_rc"; } 2>/dev/null ) | sed -u -e 's/\r$//' -e '/^\[ *[0-9.]*\] reboot: /d' &
wait $!
QRC=$(cat "$RUNDIR/qemu_rc" 2>/dev/null || echo 255)
set -e
T1=$(date +%s.%N)

if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  echo "[gpiosim-vm] TIMEOUT after ${GPIOSIM_TIMEOUT:-300}s" >&2; RC=124
elif [ -s "$CTL/exit_code" ]; then
  RC=$(cat "$CTL/exit_code")
else
  echo "[gpiosim-vm] VM ended without a result (qemu rc=$QRC)" >&2; RC=125
  [ -s "$CTL/dmesg.txt" ] && tail -20 "$CTL/dmesg.txt" >&2
fi
if [ "${GPIOSIM_VERBOSE:-0}" = 1 ] || [ "$RC" != 0 ]; then
  printf '[gpiosim-vm] accel=%s exit=%s wall=%.2fs guest-uptime: stage2=%ss test-start=%ss test-end=%ss\n' "$ACCEL" "$RC" \
    "$(awk "BEGIN{print $T1 - $T0}")" "$(cat "$CTL/uptime_stage2" 2>/dev/null)" \
    "$(cat "$CTL/uptime_test_start" 2>/dev/null)" "$(cat "$CTL/uptime_test_end" 2>/dev/null)" >&2
fi
exit "$RC"
