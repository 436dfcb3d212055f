#!/usr/bin/env bash
# Make sure a Docker daemon answers: start dockerd by hand (no systemd), installing Debian's docker.io if needed.
# As root it also installs what the tests use beside the daemon: debootstrap (offline parent image),
# docker-registry (the CNCF Distribution registry, started on 127.0.0.1 by the registry tests), chromium,
# squashfs-tools, and rootless Podman (the Podman engine's tests run it as a non-root user).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
  want=()
  command -v debootstrap >/dev/null || want+=(debootstrap)
  command -v docker-registry >/dev/null || want+=(docker-registry)
  command -v chromium >/dev/null || want+=(chromium)  # headless page tests (the MLflow runs page)
  command -v dockerd >/dev/null || want+=(docker.io)
  command -v mksquashfs >/dev/null || want+=(squashfs-tools)  # Apptainer source overlays (HPC sites have it)
  for p in podman uidmap slirp4netns fuse-overlayfs catatonit python3-venv; do  # rootless Podman; a user's venv
    dpkg -s "$p" >/dev/null 2>&1 || want+=("$p")
  done
  if [ ${#want[@]} -gt 0 ]; then
    echo "ensure-dockerd: installing ${want[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
  fi
fi
# Answers: /_ping says 200 OK (a daemon that is starting accepts connections on its socket and resets them).
answers() {
  python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect("/var/run/docker.sock")
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n"); sys.exit(0 if b"200 OK" in s.recv(100) else 1)
PY
}
if docker info >/dev/null 2>&1 || answers; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-dockerd: no Docker daemon answers and starting one needs root (ask for one, or set DOCKER_HOST)" >&2
  exit 1
fi
echo "ensure-dockerd: starting dockerd (log: /var/log/itwin-dockerd.log)"
setsid dockerd >/var/log/itwin-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 60); do
  [ -S /var/run/docker.sock ] && answers && exit 0
  sleep 0.5
done
echo "ensure-dockerd: dockerd did not come up; see /var/log/itwin-dockerd.log" >&2
exit 1
