#!/usr/bin/env bash
# Make a local Debian 12 base image for the Dockerfile (CI cannot pull from Docker Hub).
#
#   .ci/base_image.sh [IMAGE]        default IMAGE: localhost/debian:bookworm
#
# debootstrap --variant=minbase bookworm into a temporary directory, then `podman import` it
# (machine-notes.md §6). Idempotent: an existing image is kept (set REBUILD_BASE=1 to redo it).
# Needs root, debootstrap, podman and a reachable Debian mirror (DEBIAN_MIRROR).
set -euo pipefail
IMAGE="${1:-localhost/debian:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ "${REBUILD_BASE:-0}" != 1 ]] && podman image exists "$IMAGE"; then
    echo "base image $IMAGE already present"
    exit 0
fi
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/agquant-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# Leave apt lists out of the image, as the official slim images do.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE created"
