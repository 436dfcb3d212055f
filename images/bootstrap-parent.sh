#!/usr/bin/env bash
# Build the base image's parent offline: a minimal Debian bookworm rootfs from the Debian mirror,
# imported into Docker. For sites (and CI machines) where no container registry is reachable.
# Usage: images/bootstrap-parent.sh TAG [MIRROR]
set -euo pipefail
tag=${1:?usage: bootstrap-parent.sh TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "bootstrap-parent: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /tmp/itwin-parent.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-wheel-whl,ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Trust the host's CA bundle: on networks with a TLS-inspecting proxy, pip inside the image needs it.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "bootstrap-parent: imported $tag"
