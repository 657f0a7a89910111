#!/usr/bin/env bash
# Debian VMs with a real netem kernel for the shaping tests (tests/isolated/test_netem_role_vm.py): qemu (TCG),
# Debian's cloud kernel (its sch_netem.ko loads; this machine's kernel has no netem), debootstrap
# and a static busybox for the initramfs. The image is built once into NETBENCH_VM_CACHE
# (default /var/cache/netbench-vm) and reused while its recipe is unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
need=()
for bin in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap \
           busybox:busybox-static mkfs.ext4:e2fsprogs depmod:kmod xz:xz-utils cpio:cpio ssh:openssh-client iperf3:iperf3 \
           ip:iproute2; do
  command -v "${bin%%:*}" >/dev/null || need+=("${bin#*:}")
done
[ -e /usr/share/qemu/qboot.rom ] || need+=(qemu-system-data)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi
bash tests/vm/build-image.sh
