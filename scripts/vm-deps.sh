#!/usr/bin/env bash
# Install what `python -m srv6ctl.hostvm` needs to boot a Debian cloud kernel over this
# host's root (srv6ctl/hostvm), only when something is missing: `apt-get update` runs only
# then, so a warm machine does not touch apt at all.
#
# --newer: also the newer cloud kernel Debian builds for bookworm, from bookworm-backports
# (6.12), which `make test-kernels` tests as well. Its apt lists are private to this run
# (a temporary directory): the host's apt sources and lists are left as they are.
set -euo pipefail

BACKPORTS=bookworm-backports
MIRROR=http://deb.debian.org/debian
STABLE_SERIES=6.1 # bookworm's own linux-image-cloud-amd64

newer=0
case "${1-}" in
    "") ;;
    --newer) newer=1 ;;
    *)
        echo "usage: $0 [--newer]" >&2
        exit 2
        ;;
esac

cloud_kernels() { # the releases with both an image and modules
    local image
    for image in /boot/vmlinuz-*-cloud-amd64; do
        [ -e "$image" ] && [ -f "/lib/modules/${image#/boot/vmlinuz-}/modules.dep" ] &&
            echo "${image#/boot/vmlinuz-}"
    done
    return 0
}

have_newer_kernel() { # a cloud kernel of a later series than bookworm's 6.1
    local release series
    for release in $(cloud_kernels); do
        series=$(echo "$release" | grep -oE '^[0-9]+\.[0-9]+')
        if [ "$series" != "$STABLE_SERIES" ] &&
            [ "$(printf '%s\n' "$STABLE_SERIES" "$series" | sort -V | tail -n1)" = "$series" ]; then
            return 0
        fi
    done
    return 1
}

missing=()
[ -n "$(cloud_kernels)" ] || missing+=(linux-image-cloud-amd64) # 6.1 on Debian 12: seg6local, VRF, dummy
# qemu-system-common (a dependency) brings /usr/lib/qemu/virtiofsd, the C daemon of qemu 7.2.
{ [ -x /usr/bin/qemu-system-x86_64 ] && [ -x /usr/lib/qemu/virtiofsd ]; } || missing+=(qemu-system-x86)
# Static: the initramfs has no libc. Debian's dynamic `busybox` package conflicts with it.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" ||
    missing+=(busybox-static)
[ -x /usr/bin/setpriv ] || missing+=(util-linux)
want_newer=0
if [ "$newer" -eq 1 ] && ! have_newer_kernel; then
    want_newer=1
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$want_newer" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    what="${missing[*]}"
    [ "$want_newer" -eq 0 ] || what="${what:+$what }linux-image-cloud-amd64 from $BACKPORTS"
    echo "vm-deps: missing $what; run as root or install them" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

if [ "${#missing[@]}" -gt 0 ]; then
    echo "vm-deps: installing ${missing[*]}"
    apt-get update -qq
    # No recommends: qemu-system-x86's pull in a GUI, OVMF and block drivers a -kernel boot
    # never uses.
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ "$want_newer" -eq 1 ] || exit 0

# The versioned image package the backports metapackage points at, installed as a local .deb
# by the host's own apt: the metapackage itself (bookworm's, 6.1) stays as it is, and apt
# checks the image's dependencies (kmod, initramfs-tools, linux-base, all bookworm's) before
# dpkg touches anything.
work=$(mktemp -d /tmp/vm-deps.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb $MIRROR $BACKPORTS main" >"$work/sources.list"
chown -R _apt "$work" 2>/dev/null || true # apt fetches as _apt where it can
private=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
)
echo "vm-deps: fetching linux-image-cloud-amd64 from $BACKPORTS"
apt-get "${private[@]}" -qq update
cd "$work/debs"
apt-get "${private[@]}" -qq download "linux-image-cloud-amd64/$BACKPORTS"
image=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends |
    sed -nE 's/^(linux-image-[^ ,]+-cloud-amd64) \(= ([^)]+)\).*/\1=\2/p')
if [ -z "$image" ]; then
    echo "vm-deps: cannot tell which image $BACKPORTS's linux-image-cloud-amd64 depends on" >&2
    exit 1
fi
package=${image%%=*}
release=${package#linux-image-}
apt-get "${private[@]}" -qq download "$image"
deb=$(echo "$work/debs/${package}"_*.deb)
if apt-get -s -qq install --no-install-recommends "$deb" >/dev/null 2>&1; then
    echo "vm-deps: installing $package ${image#*=}"
    apt-get install -y -qq --no-install-recommends "$deb"
else
    # Its dependencies cannot be met from this host's sources: unpack the files a guest needs
    # (image, modules) without dpkg, which then knows nothing of them (and is not left
    # half-configured). Remove with: rm -r /boot/*-$release /lib/modules/$release
    echo "vm-deps: $package's dependencies are not installable here; unpacking it without dpkg"
    dpkg-deb -x "$deb" /
    depmod "$release"
fi
if ! [ -f "/boot/vmlinuz-$release" ] || ! [ -f "/lib/modules/$release/modules.dep" ]; then
    echo "vm-deps: $package installed, but not /boot/vmlinuz-$release with its modules.dep" >&2
    exit 1
fi
