#!/usr/bin/env bash
# Install what `python -m srv6ctl.hostvm` needs to boot a Debian cloud kernel over this
# host's root (srv6ctl/hostvm), only when something is missing: `apt-get update` runs only
# then, so a warm machine does not touch apt at all.
set -euo pipefail

have_cloud_kernel() {
    local image
    for image in /boot/vmlinuz-*-cloud-amd64; do
        [ -e "$image" ] && [ -f "/lib/modules/${image#/boot/vmlinuz-}/modules.dep" ] && return 0
    done
    return 1
}

missing=()
have_cloud_kernel || missing+=(linux-image-cloud-amd64)  # 6.1 on Debian 12: seg6local, VRF, dummy
# qemu-system-common (a dependency) brings /usr/lib/qemu/virtiofsd, the C daemon of qemu 7.2.
{ [ -x /usr/bin/qemu-system-x86_64 ] && [ -x /usr/lib/qemu/virtiofsd ]; } || missing+=(qemu-system-x86)
# Static: the initramfs has no libc. Debian's dynamic `busybox` package conflicts with it.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" ||
    missing+=(busybox-static)
[ -x /usr/bin/setpriv ] || missing+=(util-linux)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "vm-deps: missing ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "vm-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No recommends: qemu-system-x86's pull in a GUI, OVMF and block drivers a -kernel boot
# never uses.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
