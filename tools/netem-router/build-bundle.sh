#!/usr/bin/env bash
# Builds the carryable netem router bundle (docs/netem-router.md):
#   vmlinuz          Debian's cloud kernel (sch_netem, ifb, act_mirred as modules)
#   initrd.img       static busybox + Debian's iproute2 (ip, tc) + the router's modules, /init = router-init.sh
#   qemu/            qemu-system-x86_64, its TCG accelerator module, every shared library it needs
#                    (glibc and its loader too: bin/qemu starts it through the bundled ld.so, so the
#                    host's libraries do not matter) and the qboot firmware
#   iproute2/        Debian bookworm's ip, tc, ping, iperf3 + their libraries (apt-get download +
#                    dpkg -x), for hosts without them: bin/ip, bin/tc, ... set LD_LIBRARY_PATH
# into OUT (default build/netem-router/bundle) and OUT.tar.xz; skipped while the recipe is unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/build/netem-router/bundle}
recipe=$(cat "$here/build-bundle.sh" "$here/router-init.sh" "$here/kmod-closure.py" "$here/capstone-stub.c" \
         | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$recipe" ] && [ -f "$out.tar.xz" ]; then
  echo "netem router bundle in $out is up to date ($recipe): $(stat -c %s "$out.tar.xz") bytes compressed"
  exit 0
fi
start=$(date +%s)
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$out.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
b=$work/bundle
mkdir -p "$b"/{bin,qemu/bin,qemu/lib,qemu/modules,qemu/share,iproute2/lib} "$work/debs"

# Debian packages: the cloud kernel and iproute2 with the libraries an Ubuntu/Debian host may lack.
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg=$(kernel_pkg)
[ -n "$kpkg" ] || { apt-get update -qq && kpkg=$(kernel_pkg); }
[ -n "$kpkg" ] || { echo "cannot find Debian's linux-image-cloud-amd64 in apt" >&2; exit 1; }
# iperf3 and ping: what the netem role measures with, also missing on a bare GPU host
ipkgs=(iproute2 libbpf1 libcap2 libelf1 libmnl0 libxtables12 libbsd0 libmd0 iperf3 libiperf0 libsctp1 iputils-ping)
(cd "$work/debs" && apt-get download -o APT::Sandbox::User=root "$kpkg" "${ipkgs[@]}" >/dev/null)
for p in "${ipkgs[@]}"; do dpkg-deb -x "$work"/debs/"${p}"_*.deb "$work/ipr"; done
for tool in ip tc ping iperf3; do
  cp -L "$(ls "$work"/ipr/{bin,sbin,usr/bin,usr/sbin}/"$tool" 2>/dev/null | head -n1)" "$b/iproute2/"
done
for lib in "$work"/ipr/usr/lib/x86_64-linux-gnu/*.so.* "$work"/ipr/lib/x86_64-linux-gnu/*.so.*; do [ -e "$lib" ] && cp -L "$lib" "$b/iproute2/lib/"; done
for tool in ip tc ping iperf3; do
  cat >"$b/bin/$tool" <<SH
#!/bin/sh
d=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$d/iproute2/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$d/iproute2/$tool" "\$@"
SH
  chmod +x "$b/bin/$tool"
done

# Kernel and modules.
dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
kmod=$work/kernel/lib/modules/$kver
cp "$work/kernel/boot/vmlinuz-$kver" "$b/vmlinuz"
find "$kmod" -name '*.ko.xz' -exec xz -d {} +   # busybox insmod reads plain .ko only
depmod -b "$work/kernel" "$kver"

# Initramfs: busybox, iproute2 with glibc (the guest has no libc of its own), modules, init.
ird=$work/initramfs
mkdir -p "$ird"/{bin,sbin,dev,proc,sys,tmp,lib/iproute2,lib64}
cp "$(command -v busybox)" "$ird/bin/busybox"
cp "$b"/iproute2/{ip,tc} "$ird/sbin/"
cp -a "$b"/iproute2/lib/. "$ird/lib/iproute2/"
for lib in $(ldd "$b/iproute2/tc" "$b/iproute2/ip" | awk '/=> \// {print $3}' | sort -u); do
  [ -e "$ird/lib/iproute2/$(basename "$lib")" ] || cp -L "$lib" "$ird/lib/iproute2/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$ird/lib64/"
install -m 0755 "$here/router-init.sh" "$ird/init"
python3 "$here/kmod-closure.py" "$kmod" "$ird" virtio_pci virtio_net bridge sch_ingress ifb act_mirred \
  cls_matchall cls_u32 sch_netem sch_htb sch_tbf
# xz (the kernel's CONFIG_RD_XZ): 2.7 MB instead of gzip's 4.2 MB
(cd "$ird" && find . | cpio -o -H newc --quiet | xz -T1 -9 --check=crc32 >"$b/initrd.img")

# Portable qemu: the binary, its TCG module, all its libraries and its own loader.
qbin=$(command -v qemu-system-x86_64)
cp "$qbin" "$b/qemu/bin/"
cp /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$b/qemu/modules/"
for lib in $(ldd "$qbin" "$b/qemu/modules/accel-tcg-x86_64.so" | awk '/=> \// {print $3}' | sort -u); do
  cp -L "$lib" "$b/qemu/lib/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$b/qemu/lib/"
if command -v cc >/dev/null && nm -D --undefined-only "$qbin" | awk '/ cs_/ {print $2}' | sort \
     | cmp -s - <(printf '%s\n' cs_close cs_disasm_iter cs_malloc cs_open cs_option); then
  # the disassembler is only for printing guest code: a stub with the five functions qemu imports
  cc -O2 -shared -fPIC -Wl,-soname,libcapstone.so.4 -o "$b/qemu/lib/libcapstone.so.4" "$here/capstone-stub.c"
fi
cp /usr/share/qemu/{qboot.rom,linuxboot_dma.bin,kvmvapic.bin} "$b/qemu/share/"
cat >"$b/bin/qemu" <<'SH'
#!/bin/sh
# qemu-system-x86_64 through the bundled loader and libraries (no dependence on the host's)
d=$(cd "$(dirname "$0")/.." && pwd)/qemu
QEMU_MODULE_DIR="$d/modules" exec "$d/lib/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/bin/qemu-system-x86_64" -L "$d/share" "$@"
SH
chmod +x "$b/bin/qemu"

echo "$kver" >"$b/kernel-version"
echo "$recipe" >"$b/stamp"
tar -C "$work" -cf - bundle | xz -T0 -9 >"$work/bundle.tar.xz"
rm -rf "$out" "$out.tar.xz"
mv "$b" "$out"
mv "$work/bundle.tar.xz" "$out.tar.xz"
echo "netem router bundle built in $out in $(( $(date +%s) - start )) s (kernel $kver):" \
     "$(du -sb "$out" | cut -f1) bytes unpacked, $(stat -c %s "$out.tar.xz") bytes compressed ($out.tar.xz)"
