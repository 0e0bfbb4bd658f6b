#!/usr/bin/env bash
# Build the self-contained srv6-cni executable (cni/freeze.py): static, the shim frozen into
# CPython, no Python or C library needed on the node. Output: $1, default build/cni/srv6-cni.
#
# Needs a C compiler and a Python whose static library has `_socket` built in: Debian's
# python3 and libpython3-dev (the venv's pyenv Python has `_socket` as a shared module).
# Missing Debian packages are installed when run as root, as scripts/system-deps.sh does;
# deploy/Containerfile's cni-builder stage runs this very script. Exit status 3: the
# toolchain is missing and cannot be installed here (tests skip on it, outside CI).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
output=${1:-$root/build/cni/srv6-cni}
python=${CNI_BUILD_PYTHON:-/usr/bin/python3}

# Each entry: a Debian package and a file it provides.
PACKAGES=(
    "python3:/usr/bin/python3"
    "gcc:/usr/bin/gcc"
    "libc6-dev:/usr/include/stdio.h"        # libc.a: the executable links the C library too
    "libpython3-dev:/usr/include/python3"   # libpython3.X.a (checked properly below)
    "libexpat1-dev:/usr/include/expat.h"    # pyexpat is built into Debian's libpython
    "zlib1g-dev:/usr/include/zlib.h"        # and so is zlib
)
missing=()
for entry in "${PACKAGES[@]}"; do
    file="${entry#*:}"
    if ! compgen -G "$file*" >/dev/null; then missing+=("${entry%%:*}"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "build-cni: missing ${missing[*]}; run as root on Debian or install them" >&2
        exit 3
    fi
    echo "build-cni: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2
    then
        echo "build-cni: could not install ${missing[*]}" >&2
        exit 3
    fi
fi

cd "$root"
# -s: no user site-packages; -m from the root: this tree's cni package, nothing installed.
exec "$python" -s -m cni.freeze --output "$output"
