#!/usr/bin/env bash
# Install the Debian packages the tests and the lab need, only when something is missing,
# so `make test` on a warm machine does not touch apt at all.
set -euo pipefail

# Each entry: a Debian package and a file it provides (checked instead of dpkg -s so that a
# machine with the tool installed another way is left alone).
PACKAGES=(
    "iproute2:/usr/bin/ip"
    "etcd-server:/usr/bin/etcd"
    "nftables:/usr/sbin/nft"                              # pods' stateless port rewrites
    "prometheus:/usr/bin/promtool"                        # real scrapes and promtool in tests
    "containernetworking-plugins:/usr/lib/cni/ptp"        # reference plugins (chained, bench)
    "golang-go:/usr/bin/go"                               # builds the libcni test driver
    "golang-github-appc-cni-dev:/usr/share/gocode/src/github.com/containernetworking/cni/libcni"
    "python3-venv:/usr/lib/python3/dist-packages"
)

# `system-deps.sh kubernetes`: also what the lab's Kubernetes mode runs beside the
# binaries a user builds (README, "A lab on real Kubernetes"): a node's container runtime.
# `make test` does not need them (those tests skip without the binaries).
if [ "${1:-}" = kubernetes ]; then
    PACKAGES+=("containerd:/usr/bin/containerd" "runc:/usr/sbin/runc")
fi

missing=()
for entry in "${PACKAGES[@]}"; do
    pkg="${entry%%:*}"
    file="${entry#*:}"
    if [ "$pkg" = python3-venv ]; then
        # Any python3 that can build a venv with pip is enough.
        if python3 -c 'import venv, ensurepip' 2>/dev/null; then continue; fi
    elif [ -e "$file" ]; then
        continue
    fi
    missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
