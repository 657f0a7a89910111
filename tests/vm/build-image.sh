#!/usr/bin/env bash
# Builds the base of the test VMs once (a few minutes; skipped while the recipe is unchanged):
#   vmlinuz      Debian's cloud kernel (6.1, sch_netem as a loadable module)
#   initrd.img   a ~1 MB static-busybox initramfs: loads the virtio modules, switch_roots to /dev/vda
#   base.img     ext4 root fs: debootstrap minbase + sshd, python3 (+ python3-apt: Ansible's apt module), iproute2, iperf3, ping; no systemd:
#                guest-init.sh is PID 1 (ssh answers ~5 s after qemu starts under TCG)
#   id_ed25519   the key root logs in with (the VMs live only in the tests' network namespaces)
# Output goes to NETBENCH_VM_CACHE (default /var/cache/netbench-vm), replaced atomically.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NETBENCH_VM_CACHE:-/var/cache/netbench-vm}
closure=$here/../../tools/netem-router/kmod-closure.py  # modules + their dependencies in load order
recipe=$(cat "$here/build-image.sh" "$here/guest-init.sh" "$here/initramfs-init.sh" "$closure" | sha256sum | cut -c1-16)
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$recipe" ]; then
  echo "VM image in $cache is up to date ($recipe)"
  exit 0
fi
start=$(date +%s)
mkdir -p "$(dirname "$cache")"
work=$(mktemp -d "$cache.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$work/out
mkdir -p "$out" "$work/kpkg"

# The mirror apt already uses (the only registry this machine may reach).
mirror=$(grep -rhoE '^(deb +|URIs: *)https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

# 1. Kernel: unpack Debian's cloud kernel package (not installed on this machine).
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg=$(kernel_pkg)
[ -n "$kpkg" ] || { apt-get update -qq && kpkg=$(kernel_pkg); }
[ -n "$kpkg" ] || { echo "cannot find Debian's linux-image-cloud-amd64 in apt" >&2; exit 1; }
(cd "$work/kpkg" && apt-get download -o APT::Sandbox::User=root "$kpkg" >/dev/null)
dpkg-deb -x "$work"/kpkg/*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
kmod=$work/kernel/lib/modules/$kver
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
find "$kmod" -name '*.ko.xz' -exec xz -d {} +   # busybox insmod reads plain .ko only
sed -i 's/\.ko\.xz/.ko/g' "$kmod"/modules.order "$kmod"/modules.builtin 2>/dev/null || true
depmod -b "$work/kernel" "$kver"  # the package leaves modules.dep to its postinst

# 2. Root file system.
debootstrap --variant=minbase \
  --include=openssh-server,python3,python3-apt,iproute2,iperf3,iputils-ping,kmod,procps \
  bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log"; exit 1; }
rootfs=$work/rootfs
mkdir -p "$rootfs/lib/modules/$kver/kernel/drivers"
for d in net crypto lib fs arch; do
  [ -d "$kmod/kernel/$d" ] && cp -a "$kmod/kernel/$d" "$rootfs/lib/modules/$kver/kernel/"
done
for d in net virtio block char; do
  [ -d "$kmod/kernel/drivers/$d" ] && cp -a "$kmod/kernel/drivers/$d" "$rootfs/lib/modules/$kver/kernel/drivers/"
done
cp "$kmod"/modules.order "$kmod"/modules.builtin* "$rootfs/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$rootfs" "$kver"
install -m 0755 "$here/guest-init.sh" "$rootfs/sbin/netbench-init"
ssh-keygen -q -t ed25519 -N '' -C netbench-vm -f "$out/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
[ -n "$(ls "$rootfs"/etc/ssh/ssh_host_*_key 2>/dev/null)" ] || ssh-keygen -A -f "$rootfs"
printf 'UseDNS no\nPermitRootLogin prohibit-password\n' >"$rootfs/etc/ssh/sshd_config.d/netbench.conf"
echo netbench-vm >"$rootfs/etc/hostname"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
mkfs.ext4 -q -F -L netbench-root -d "$rootfs" "$out/base.img" 1G

# 3. Initramfs: static busybox + the modules (in dependency order) needed to reach /dev/vda.
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$(command -v busybox)" "$ird/bin/busybox"
install -m 0755 "$here/initramfs-init.sh" "$ird/init"
python3 "$closure" "$kmod" "$ird" virtio_pci virtio_blk ext4
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initrd.img")

echo "$recipe" >"$out/stamp"
echo "$kver" >"$out/kernel-version"
rm -rf "$cache"
mv "$out" "$cache"
echo "VM image built in $cache in $(( $(date +%s) - start )) s (kernel $kver)"
