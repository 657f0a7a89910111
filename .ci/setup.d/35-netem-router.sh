#!/usr/bin/env bash
# The netem router VM bundle (tools/netem-router/build-bundle.sh; docs/netem-router.md) for
# tests/isolated/test_netem_router_vm.py and tests/isolated/test_site_router_vm.py: Debian's cloud kernel, a busybox +
# iproute2 initramfs, a portable qemu. Needs what 30-vm.sh installs (qemu, busybox-static, kmod,
# cpio, xz, iperf3). Built once into NETBENCH_ROUTER_CACHE (default /var/cache/netbench-router) and
# reused while its recipe is unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${NETBENCH_ROUTER_CACHE:-/var/cache/netbench-router}
bash tools/netem-router/build-bundle.sh "$cache/bundle"
