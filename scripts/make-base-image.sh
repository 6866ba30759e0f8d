#!/usr/bin/env bash
# Make a minimal Debian base image without any container registry: debootstrap a
# bookworm root file system and import it into Docker. Skips the work when the image
# already exists, so it is cheap to call before every build.
#
# Usage: scripts/make-base-image.sh [IMAGE]        (default: local/debian:bookworm)
# Environment:
#   DEBIAN_SUITE   Debian release to bootstrap (default: bookworm)
#   DEBIAN_MIRROR  Debian mirror (default: http://deb.debian.org/debian)
#   FORCE=1        rebuild even when the image exists
set -euo pipefail

suite=${DEBIAN_SUITE:-bookworm}
image=${1:-local/debian:${suite}}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf 'make-base-image: %s\n' "$*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    say "$image already exists"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo -n)
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/debian-rootfs.XXXXXX")
cleanup() { "${as_root[@]}" rm -rf "$rootfs"; }
trap cleanup EXIT

say "bootstrapping Debian $suite from $mirror (about a minute)"
"${as_root[@]}" debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null

# Keep the image small and free of this machine's state.
"${as_root[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

say "importing into Docker as $image"
"${as_root[@]}" tar -C "$rootfs" -c . \
    | docker import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
say "done: $image"
