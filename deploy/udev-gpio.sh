# shellcheck shell=bash
# udev_apply install|remove USER: re-read the udev rules and re-apply them to the GPIO chips and
# /dev/gpiomem* now, without a reboot. Used by scripts/install and by the Debian package's
# maintainer scripts (scripts/build-deb pastes it into them).
#
# A rule that no longer matches leaves a node's owner as it was (udev only sets what a rule
# names), so after the gatekeeper's rule is gone a chip still owned by USER (or by a user or
# group that no longer exists) is given back to root:gpio 0660 (root:root 0600 where there is
# no gpio group); a distro rule that sets its own owner and mode (Raspberry Pi OS: root:gpio
# 0660) has already done so. PI_MQTT_INSTALL_UDEVADM and PI_MQTT_INSTALL_DEV are for the tests.
udev_apply() {  # udev_apply install|remove USER
  local udevadm_cmd="${PI_MQTT_INSTALL_UDEVADM:-udevadm}" devdir="${PI_MQTT_INSTALL_DEV:-/dev}"
  command -v "$udevadm_cmd" >/dev/null 2>&1 || return 0
  "$udevadm_cmd" control --reload 2>/dev/null || true
  "$udevadm_cmd" trigger --subsystem-match=gpio --action=change 2>/dev/null || true
  "$udevadm_cmd" trigger --sysname-match='gpiomem*' --action=change 2>/dev/null || true
  "$udevadm_cmd" settle --timeout=10 2>/dev/null || true
  [ "$1" = remove ] || return 0
  local uid gid owner group mode chip fixed=0
  uid="$(id -u "$2" 2>/dev/null || echo none)"
  gid="$(getent group "$2" | cut -d: -f3 || true)"
  group=root
  mode=0600
  if getent group gpio >/dev/null; then group=gpio; mode=0660; fi
  for chip in "$devdir"/gpiochip*; do
    [ -e "$chip" ] || continue
    owner="$(stat -c '%u:%g' "$chip")"
    # Still the gatekeeper's (or a user that no longer exists): give it back.
    if [ "${owner%%:*}" = "$uid" ] || [ "${owner#*:}" = "${gid:-none}" ] ||
       ! getent passwd "${owner%%:*}" >/dev/null || ! getent group "${owner#*:}" >/dev/null; then
      chown "root:$group" "$chip" && chmod "$mode" "$chip" && fixed=1
    fi
  done
  [ "$fixed" = 0 ] || echo "gave the GPIO chips back to root:$group (mode $mode)"
  return 0
}
