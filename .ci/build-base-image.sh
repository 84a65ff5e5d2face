#!/usr/bin/env bash
# Build anomalyd/debian:bookworm: a minimal Debian 12 root filesystem, made with
# debootstrap and `docker import`ed, because CI machines cannot pull images from
# any registry. Both the Kafka test image and the product image build FROM it.
#
# Usage: .ci/build-base-image.sh [--force]
# Env:   BASE_IMAGE (anomalyd/debian:bookworm), DEBIAN_MIRROR (deb.debian.org)
#
# Deliberately small: no python3, no JRE. Images built on it apt-get what they need.
set -euo pipefail

IMAGE=${BASE_IMAGE:-anomalyd/debian:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

say() { echo "[build-base-image] $*"; }

if ((!FORCE)) && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists; skipping (use --force to rebuild)"
    exit 0
fi
command -v debootstrap >/dev/null || { say "debootstrap missing: run .ci/start-docker.sh or apt-get install debootstrap" >&2; exit 1; }

start=$SECONDS
rootfs=$(mktemp -d /tmp/anomalyd-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

say "debootstrap bookworm (minbase) from $MIRROR"
# ca-certificates so that apt over https and clients inside the images work.
debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" \
    >"$rootfs.log" 2>&1 || { tail -n 40 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# Security and point-release updates, as the official debian:bookworm image has.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF

# Where TLS goes through an intercepting proxy, only the host's bundle knows its
# CA; without it containers cannot reach anything over https. Debian regenerates
# this file from /usr/local/share/ca-certificates, so keep a copy there too.
if [[ -f $CA_BUNDLE ]]; then
    cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$CA_BUNDLE" "$rootfs/usr/local/share/ca-certificates/host-bundle.crt"
fi

# Image hygiene as in the official Debian images: no caches, no recommends.
cat >"$rootfs/etc/apt/apt.conf.d/90anomalyd" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

say "docker import as $IMAGE"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$IMAGE" >/dev/null
say "built $IMAGE in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$IMAGE") bytes)"
