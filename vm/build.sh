#!/bin/bash
# build.sh - prepare a Debian kernel + gpio-sim module + Debian rootfs for
# run.sh (the project's VM stage; adapted from the team's gpiosim-vm harness: the
# rootfs also carries i2c-tools and alsa-utils, the modules i2c-stub, i2c-dev and
# snd-dummy for the expander and mixer tests).  Idempotent: every step is skipped when its output already exists.
# Everything downloaded or built goes to $GPIOSIM_CACHE (default
# /var/cache/pi-mqtt-gpio-vm), never into git.
#
# Needs (host, root): apt-get, dpkg-deb, debootstrap, busybox (static),
# cpio, gzip, mkfs.ext4 (e2fsprogs >= 1.43 for -d), gcc-12 + make (to build
# the gpio-sim module against Debian's kernel headers), python3 -m pip
# (only to fetch/install the PyPI wheels).
#
# Why a module build: Debian bookworm's kernel has "# CONFIG_GPIO_SIM is not
# set" (and no gpio-mockup either), so gpio-sim.c (plus kernel/irq/irq_sim.c,
# CONFIG_IRQ_SIM is also off) is compiled out-of-tree from linux-source-6.1 of
# exactly the same version as the kernel image.
#
# Env knobs:
#   GPIOSIM_CACHE      cache dir (default /var/cache/pi-mqtt-gpio-vm)
#   GPIOSIM_KVER       kernel ABI, e.g. 6.1.0-56-amd64 (default: what
#                      linux-image-amd64 currently depends on; pinned in
#                      $GPIOSIM_CACHE/KVER after the first build)
#   GPIOSIM_PIP_PKGS   PyPI packages installed into the rootfs
#                      (default "lgpio gpiod gpiozero colorzero")
#   GPIOSIM_DEB_PKGS   extra Debian packages for debootstrap (comma list)
#   GPIOSIM_REBUILD=rootfs|all   force rebuilding the rootfs image / everything
#   GPIOSIM_PRUNE=1    after a successful build delete intermediates
#                      (extracted kernel tree, headers, linux-source .deb:
#                      ~700 MB); later runs of build.sh still skip everything
set -euo pipefail

CACHE=${GPIOSIM_CACHE:-/var/cache/pi-mqtt-gpio-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${GPIOSIM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PIP_PKGS=${GPIOSIM_PIP_PKGS:-lgpio gpiod gpiozero colorzero}
DEB_PKGS="python3,python3-pytest,gpiod,kmod,procps,util-linux,ca-certificates,i2c-tools,alsa-utils,libasound2${GPIOSIM_DEB_PKGS:+,$GPIOSIM_DEB_PKGS}"
# Modules (plus their dependencies) put into initramfs and rootfs.
MODULES="virtio_pci virtio_blk ext4 crc32c_generic crc32c-intel 9p 9pnet_virtio overlay configfs gpio-sim i2c-stub i2c-dev snd-dummy"

log() { printf '[build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mkfs -d with owners)"
for t in apt-get dpkg-deb debootstrap busybox cpio gzip mkfs.ext4 make gcc-12 python3; do
  command -v "$t" >/dev/null || die "missing host tool: $t"
done

mkdir -p "$CACHE"
# One build at a time (the hw stage and the systemd stage may both ask for it at once): a
# second waits for the first, then finds its steps done.
exec 8>"$CACHE/.build.lock"
flock 8
case "${GPIOSIM_REBUILD:-}" in
  all) log "GPIOSIM_REBUILD=all: wiping $CACHE/build and images"
       rm -rf "$CACHE/build" "$CACHE/vmlinuz" "$CACHE/vmlinux" "$CACHE"/config-* "$CACHE/initramfs.cpio.gz" "$CACHE/rootfs.img" "$CACHE/KVER" ;;
  rootfs) rm -rf "$CACHE/build/rootfs" "$CACHE/rootfs.img" ;;
esac

mkdir -p "$CACHE/debs" "$CACHE/build" "$CACHE/wheels"
B=$CACHE/build

# ---------------------------------------------------------------- kernel ABI
if [ -n "${GPIOSIM_KVER:-}" ]; then
  KVER=$GPIOSIM_KVER
elif [ -s "$CACHE/KVER" ]; then
  KVER=$(cat "$CACHE/KVER")
else
  KVER=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | head -1)
  [ -n "$KVER" ] || die "cannot resolve linux-image-amd64 (apt-get update needed?)"
fi
log "kernel ABI: $KVER"

dl() { # dl PKG[=VER] -> path of the .deb in $CACHE/debs (cached per version)
  local name=${1%%=*} ver='*' f
  [[ $1 == *=* ]] && ver=${1#*=}
  f=$(ls "$CACHE/debs/${name}_"$ver"_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    (cd "$CACHE/debs" && apt-get download "$1" 2>&1 | grep -v 'unsandboxed' >&2) || die "apt-get download $1 failed"
    f=$(ls "$CACHE/debs/${name}_"$ver"_"*.deb | head -1)
  fi
  echo "$f"
}

IMG_DEB=$(dl "linux-image-$KVER")
KPKGVER=$(dpkg-deb -f "$IMG_DEB" Version)          # e.g. 6.1.192-2
KSERIES=$(echo "$KVER" | cut -d. -f1,2)           # e.g. 6.1
log "kernel package version: $KPKGVER"

# ---------------------------------------------------- extract kernel image
MODTREE=$B/modtree   # holds lib/modules/$KVER (subset needed in the VM)
if [ ! -f "$CACHE/vmlinuz" ] || [ ! -f "$CACHE/config-$KVER" ] || [ ! -f "$MODTREE/lib/modules/$KVER/modules.dep" ]; then
  if [ ! -d "$B/kernel-x/lib/modules/$KVER" ]; then
    log "extracting $(basename "$IMG_DEB")"
    rm -rf "$B/kernel-x"; mkdir -p "$B/kernel-x"
    dpkg-deb -x "$IMG_DEB" "$B/kernel-x"
  fi
  cp "$B/kernel-x/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
  cp "$B/kernel-x/boot/config-$KVER" "$CACHE/config-$KVER"
fi
# Uncompressed ELF vmlinux, booted through PVH (CONFIG_PVH=y): saves the ~3 s
# the xz decompressor needs under TCG.
if [ ! -f "$CACHE/vmlinux" ] && grep -q '^CONFIG_PVH=y' "$CACHE/config-$KVER"; then
  log "extracting vmlinux (ELF) from vmlinuz"
  python3 - "$CACHE/vmlinuz" "$CACHE/vmlinux.tmp" <<'EOF2'
import lzma, sys
d = open(sys.argv[1], "rb").read()
off = d.find(b"\xfd7zXZ\x00")
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[off:]) if off >= 0 else b""
if out[:4] != b"\x7fELF":
    sys.exit("vmlinux extraction failed (not xz?)")
open(sys.argv[2], "wb").write(out)
EOF2
  mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
fi
if grep -q '^CONFIG_GPIO_SIM=[ym]' "$CACHE/config-$KVER"; then
  HAVE_GPIO_SIM=1; log "kernel has CONFIG_GPIO_SIM, no module build needed"
else
  HAVE_GPIO_SIM=0
fi

# ------------------------------------------- build gpio-sim out of tree
MODKO=$B/mod/gpio-sim.ko
if [ "$HAVE_GPIO_SIM" = 0 ] && [ ! -f "$MODKO" ] && [ ! -f "$MODTREE/lib/modules/$KVER/modules.dep" ]; then
  HDR=$B/hdr
  if [ ! -f "$HDR/usr/src/linux-headers-$KVER/Module.symvers" ]; then
    log "extracting kernel headers"
    rm -rf "$HDR"; mkdir -p "$HDR"
    for p in "linux-headers-$KVER" "linux-headers-${KVER%-*}-common" "linux-kbuild-$KSERIES"; do
      dpkg-deb -x "$(dl "$p=$KPKGVER")" "$HDR"
    done
    # the arch headers Makefile includes the -common one by absolute path
    sed -i "s|^include /usr/src/|include $HDR/usr/src/|" "$HDR/usr/src/linux-headers-$KVER/Makefile"
  fi
  if [ ! -f "$B/src/drivers/gpio/gpio-sim.c" ]; then
    SRC_DEB=$(dl "linux-source-$KSERIES=$KPKGVER")
    log "extracting gpio-sim.c/irq_sim.c from $(basename "$SRC_DEB") (~10 s)"
    rm -rf "$B/src"; mkdir -p "$B/src"
    dpkg-deb --fsys-tarfile "$SRC_DEB" \
      | tar -xO "./usr/src/linux-source-$KSERIES.tar.xz" \
      | tar -xJ -C "$B/src" --strip-components=1 \
          "linux-source-$KSERIES/drivers/gpio/gpio-sim.c" \
          "linux-source-$KSERIES/drivers/gpio/gpiolib.h" \
          "linux-source-$KSERIES/kernel/irq/irq_sim.c"
  fi
  log "building gpio-sim.ko (gpio-sim.c + irq_sim.c) against $KVER headers"
  rm -rf "$B/mod"; mkdir -p "$B/mod"
  cp "$B/src/drivers/gpio/gpio-sim.c" "$B/mod/gpio-sim-core.c"
  cp "$B/src/drivers/gpio/gpiolib.h" "$B/mod/"
  cp "$B/src/kernel/irq/irq_sim.c" "$B/mod/irq_sim.c"
  # irq_to_desc() is not exported to modules in 6.1; generic_handle_irq()
  # ends up in the same handle_simple_irq() set by irq_sim_domain_map().
  sed -i 's|handle_simple_irq(irq_to_desc(irqnum));|generic_handle_irq(irqnum); /* out-of-tree build */|' "$B/mod/irq_sim.c"
  grep -q 'generic_handle_irq(irqnum)' "$B/mod/irq_sim.c" || die "irq_sim.c patch did not apply"
  printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-core.o irq_sim.o\n' > "$B/mod/Kbuild"
  make -s -C "$HDR/usr/src/linux-headers-$KVER" M="$B/mod" modules >&2
  [ -f "$MODKO" ] || die "module build failed"
fi

# ------------------------------------------------ module subset + depmod
if [ ! -f "$MODTREE/lib/modules/$KVER/modules.dep" ]; then
  log "collecting modules: $MODULES"
  FULL=$B/fulldep; rm -rf "$FULL"; mkdir -p "$FULL/lib/modules"
  ln -s "$B/kernel-x/lib/modules/$KVER" "$FULL/lib/modules/$KVER"
  mkdir -p "$B/kernel-x/lib/modules/$KVER/updates"
  [ "$HAVE_GPIO_SIM" = 1 ] || cp "$MODKO" "$B/kernel-x/lib/modules/$KVER/updates/gpio-sim.ko"
  busybox depmod -b "$FULL" "$KVER"
  rm -rf "$MODTREE"; mkdir -p "$MODTREE/lib/modules/$KVER"
  python3 - "$B/kernel-x/lib/modules/$KVER" "$MODTREE/lib/modules/$KVER" $MODULES <<'EOF'
import os, shutil, sys
src, dst, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
dep = {}
for line in open(os.path.join(src, "modules.dep")):
    mod, _, deps = line.partition(":")
    dep[mod] = deps.split()
byname = {os.path.basename(m).split(".ko")[0].replace("-", "_"): m for m in dep}
todo = []
for w in wanted:
    m = byname.get(w.replace("-", "_"))
    if m is None:
        print("module not found (builtin?):", w, file=sys.stderr); continue
    todo.append(m)
seen = set()
while todo:
    m = todo.pop()
    if m in seen: continue
    seen.add(m); todo.extend(dep[m])
for m in sorted(seen):
    os.makedirs(os.path.join(dst, os.path.dirname(m)), exist_ok=True)
    shutil.copy2(os.path.join(src, m), os.path.join(dst, m))
for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
    if os.path.exists(os.path.join(src, f)):
        shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
print(len(seen), "modules", file=sys.stderr)
EOF
  busybox depmod -b "$MODTREE" "$KVER"
fi

# ------------------------------------------------------------- initramfs
if [ ! -f "$CACHE/initramfs.cpio.gz" ]; then
  log "building initramfs"
  IR=$B/initramfs; rm -rf "$IR"; mkdir -p "$IR"/{bin,sbin,dev,proc,sys,newroot,lib}
  cp "$(command -v busybox)" "$IR/bin/busybox"
  file -L "$IR/bin/busybox" 2>/dev/null | grep -q 'statically linked' || \
    ldd "$IR/bin/busybox" 2>&1 | grep -q 'not a dynamic' || die "busybox must be static (busybox-static)"
  for a in sh mount umount mkdir modprobe insmod chroot reboot poweroff cat echo sleep ls mknod ln dmesg sync; do
    ln -s busybox "$IR/bin/$a"; ln -s ../bin/busybox "$IR/sbin/$a"
  done
  cp -a "$MODTREE/lib/modules" "$IR/lib/"
  cp "$HERE/guest/init" "$IR/init"; chmod 755 "$IR/init"
  (cd "$IR" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$CACHE/initramfs.cpio.gz.tmp"
  mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
fi

# ---------------------------------------------------------------- rootfs
if [ ! -f "$CACHE/rootfs.img" ]; then
  RF=$B/rootfs
  if [ ! -x "$RF/usr/bin/python3" ]; then
    log "debootstrap $SUITE (minbase + $DEB_PKGS), ~1 min"
    rm -rf "$RF"
    debootstrap --variant=minbase --include="$DEB_PKGS" "$SUITE" "$RF" "$MIRROR" > "$B/debootstrap.log" 2>&1 \
      || { tail -20 "$B/debootstrap.log" >&2; die "debootstrap failed"; }
  fi
  PYV=$(chroot "$RF" python3 -c 'import sys;print("%d.%d"%sys.version_info[:2])')
  PYT=${PYV/./}
  log "pip wheels for cp$PYT: $PIP_PKGS"
  python3 -m pip download -q -d "$CACHE/wheels" --no-deps --only-binary=:all: \
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux2014_x86_64 --platform any \
      --python-version "$PYV" --implementation cp --abi "cp$PYT" $PIP_PKGS >&2
  python3 -m pip install -q --no-deps --no-index --find-links "$CACHE/wheels" \
      --only-binary=:all: --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux2014_x86_64 --platform any \
      --python-version "$PYV" --implementation cp --abi "cp$PYT" \
      --upgrade --target "$RF/usr/local/lib/python$PYV/dist-packages" $PIP_PKGS >&2
  # Wheels built on the host (no wheel on PyPI), for the guest's Python.
  for w in "$CACHE"/local-wheels/*.whl; do
    [ -e "$w" ] || continue
    python3 -m pip install -q --no-deps --only-binary=:all: --platform linux_x86_64 \
        --python-version "$PYV" --implementation cp --abi "cp$PYT" \
        --upgrade --target "$RF/usr/local/lib/python$PYV/dist-packages" "$w" >&2
  done
  rm -rf "$RF/lib/modules"; mkdir -p "$RF/lib/modules"
  cp -a "$MODTREE/lib/modules/$KVER" "$RF/lib/modules/"
  # kmod's modprobe in the guest wants its own indexes (modules.dep.bin, aliases): busybox's
  # depmod wrote the text modules.dep only.
  chroot "$RF" depmod -a "$KVER"
  mkdir -p "$RF/host" "$RF/run/gpiosim"
  echo gpiosim-vm > "$RF/etc/hostname"
  rm -rf "$RF/var/cache/apt/archives/"*.deb
  SZ=$(( $(du -sm "$RF" | cut -f1) * 13 / 10 + 200 ))
  log "mkfs.ext4 -d rootfs (${SZ} MiB, sparse)"
  rm -f "$CACHE/rootfs.img.tmp"
  mkfs.ext4 -q -F -L gpiosim-root -O ^has_journal -d "$RF" "$CACHE/rootfs.img.tmp" "${SZ}M"
  mv "$CACHE/rootfs.img.tmp" "$CACHE/rootfs.img"
fi

echo "$KVER" > "$CACHE/KVER"
if [ "${GPIOSIM_PRUNE:-0}" = 1 ]; then
  log "GPIOSIM_PRUNE=1: removing intermediate trees and the linux-source .deb"
  rm -rf "$B/kernel-x" "$B/hdr" "$B/src" "$B/fulldep" "$B/initramfs" "$CACHE/debs/linux-source-"*.deb
fi
log "done: $(du -sh --apparent-size "$CACHE/rootfs.img" | cut -f1) rootfs.img (apparent), $(du -sh "$CACHE/rootfs.img" | cut -f1) on disk, $(du -sh "$CACHE/initramfs.cpio.gz" | cut -f1) initramfs, $(du -sh "$CACHE/vmlinuz" | cut -f1) vmlinuz; cache total $(du -sh "$CACHE" | cut -f1)"
