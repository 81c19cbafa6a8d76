#!/bin/bash
# vm/systemd/build.sh - the systemd VM image for scripts/systemd-stage: a Debian 12 root file
# system booted with systemd as PID 1 (debootstrap minbase + systemd-sysv, udev, dbus), on the
# kernel and the gpio-sim module of the VM harness (vm/build.sh, built first when missing).
# Built once into $GPIOSIM_CACHE/systemd (rootfs.img, initramfs.cpio.gz); rebuilt when the
# files under vm/systemd change (their hash is kept in $GPIOSIM_CACHE/systemd/stamp).
# Needs root, debootstrap, busybox-static, cpio, mkfs.ext4.
set -euo pipefail
CACHE=${GPIOSIM_CACHE:-/var/cache/pi-mqtt-gpio-vm}
SD=$CACHE/systemd
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${GPIOSIM_MIRROR:-http://deb.debian.org/debian}
PKGS=systemd-sysv,udev,dbus,python3,python3-venv,gpiod,kmod,procps,util-linux,adduser,ca-certificates,sudo,git
log() { printf '[systemd-vm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE"
exec 9>"$CACHE/.systemd-build.lock"   # one build at a time
flock 9

KVER=$(cat "$CACHE/KVER" 2>/dev/null || true)
MODTREE=$CACHE/build/modtree/lib/modules/$KVER
if [ -z "$KVER" ] || [ ! -f "$MODTREE/modules.dep" ] || [ ! -f "$CACHE/initramfs.cpio.gz" ]; then
  log "the VM harness's kernel is not built yet: running vm/build.sh"
  bash "$HERE/../build.sh" >&2
  KVER=$(cat "$CACHE/KVER"); MODTREE=$CACHE/build/modtree/lib/modules/$KVER
fi

stamp=$( (cd "$HERE" && find init rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "$PKGS $KVER") | sha256sum | cut -c1-16)
if [ -f "$SD/rootfs.img" ] && [ -f "$SD/initramfs.cpio.gz" ] && [ "$(cat "$SD/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$SD"

# initramfs: the harness's (busybox, modules) with an init that switch_roots to systemd.
log "initramfs"
IR=$SD/initramfs; rm -rf "$IR"; cp -a "$CACHE/build/initramfs" "$IR"
ln -sf busybox "$IR/bin/switch_root"
cp "$HERE/init" "$IR/init"; chmod 755 "$IR/init"
(cd "$IR" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$SD/initramfs.cpio.gz.tmp"
mv "$SD/initramfs.cpio.gz.tmp" "$SD/initramfs.cpio.gz"

RF=$SD/rootfs
if [ ! -x "$RF/lib/systemd/systemd" ] || [ ! -x "$RF/usr/bin/gpioinfo" ]; then
  log "debootstrap bookworm (minbase + $PKGS), a few minutes"
  rm -rf "$RF"
  debootstrap --variant=minbase --include="$PKGS" bookworm "$RF" "$MIRROR" > "$SD/debootstrap.log" 2>&1 \
    || { tail -20 "$SD/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$RF/var/cache/apt/archives/"*.deb
fi
missing=$(for p in ${PKGS//,/ }; do chroot "$RF" dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done | xargs)
if [ -n "$missing" ]; then   # packages added to PKGS since the debootstrap
  log "apt-get install $missing"
  chroot "$RF" apt-get update -qq >&2
  chroot "$RF" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
  chroot "$RF" apt-get clean
fi
log "configuring the root file system"
rm -rf "$RF/lib/modules"; mkdir -p "$RF/lib/modules"
cp -a "$MODTREE" "$RF/lib/modules/"
chroot "$RF" depmod -a "$KVER"
cp -a "$HERE/rootfs/." "$RF/"
mkdir -p "$RF/mnt/ctl" "$RF/mnt/host"
echo systemd-vm > "$RF/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 systemd-vm\n' > "$RF/etc/hosts"
: > "$RF/etc/machine-id"
# A quiet, quick boot: no login prompts, no network waits, nothing periodic.
chroot "$RF" systemctl enable vm-gpiosim-chip.service vm-test.service >/dev/null 2>&1
chroot "$RF" systemctl mask serial-getty@ttyS0.service getty@tty1.service console-getty.service \
  systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer systemd-timesyncd.service >/dev/null 2>&1
chroot "$RF" passwd -d root >/dev/null
SZ=$(( $(du -sm "$RF" | cut -f1) * 13 / 10 + 300 ))
log "mkfs.ext4 -d (${SZ} MiB, sparse)"
rm -f "$SD/rootfs.img.tmp"
mkfs.ext4 -q -F -L systemd-root -O ^has_journal -d "$RF" "$SD/rootfs.img.tmp" "${SZ}M"
mv "$SD/rootfs.img.tmp" "$SD/rootfs.img"
echo "$stamp" > "$SD/stamp"
log "ready: $SD/rootfs.img"
