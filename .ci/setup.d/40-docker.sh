#!/usr/bin/env bash
# Docker for the container tests: Debian's docker.io, a dockerd started here (no systemd on the
# CI machine), and the local inputs of the swarm image, made once and cached outside the clone:
# the debootstrapped base image and the pip wheelhouse (no registry is reachable but PyPI/apt).
# Idempotent: a running dockerd is kept, a cached base or wheelhouse is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  apt-get update -qq
  # docker.io brings containerd, runc, tini (docker run --init) and iptables
  apt-get install -y -qq --no-install-recommends "${need[@]}" iptables tini ca-certificates >/dev/null
fi

# Debian's client talks to Debian's daemon; a newer client earlier on PATH negotiates down.
if ! docker info >/dev/null 2>&1; then
  pidfile=/run/netbench-dockerd.pid
  if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "[docker] dockerd $(cat "$pidfile") is starting"
  else
    echo "[docker] starting dockerd (log /var/log/netbench-dockerd.log)"
    # its own session, so that it outlives this script and is stopped by its PID alone
    setsid dockerd --pidfile "$pidfile" </dev/null >>/var/log/netbench-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 30 /var/log/netbench-dockerd.log; echo "[docker] dockerd did not come up" >&2; exit 1; }
fi
echo "[docker] engine $(docker version --format '{{.Server.Version}}') up"

# The image's inputs, cached across CI runs (the clone is new each time, /var/cache is not).
cache=${NETBENCH_IMAGE_CACHE:-/var/cache/netbench}
# Both mostly wait on the network: side by side.
bash roles/swarm_image/files/make-base.sh "${NETBENCH_BASE_IMAGE:-netbench-base:bookworm}" "$cache/debootstrap" &
base_pid=$!
# (pip's notes about this machine's local index folders are noise here)
bash roles/swarm_image/files/make-wheelhouse.sh "$cache/wheelhouse" 2>&1 | { grep -v '^WARNING: Location' || true; }
wait "$base_pid"
