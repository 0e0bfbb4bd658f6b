#!/usr/bin/env bash
# What the lab's Kubernetes mode (`srv6ctl lab up --kubernetes DIR`) runs beside the
# Kubernetes binaries a user builds (README, "A lab on real Kubernetes"): Debian's
# containerd and runc (a node's container runtime). Installed only when missing; `make
# test` does not need them (those tests skip without the binaries).
set -euo pipefail

missing=()
for entry in "containerd:/usr/bin/containerd" "runc:/usr/sbin/runc"; do
    [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "kubernetes-deps: missing ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "kubernetes-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
