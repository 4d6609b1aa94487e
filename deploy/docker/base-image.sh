#!/usr/bin/env bash
# A Debian bookworm + python3.11 image made with no container registry (debootstrap, then
# `docker import`): what BASE_IMAGE points to where python:3.11-slim cannot be pulled.
#   deploy/docker/base-image.sh [TAG]     (root, debootstrap installed; ~30 s)
set -euo pipefail
tag=${1:-attention-serving/python:3.11-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "base image: debootstrap bookworm (minbase + python3.11) from $mirror ..."
if ! debootstrap --variant=minbase --include=python3.11,ca-certificates bookworm "$rootfs" \
    "$mirror" >"$rootfs.log" 2>&1; then
  tail -20 "$rootfs.log" >&2
  exit 1
fi
ln -sf python3.11 "$rootfs/usr/bin/python"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
echo "base image: importing as $tag ..."
tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' - "$tag"
