#!/bin/sh
# PID 1 of the test VMs (no systemd: ssh answers ~5 s after qemu starts instead of ~13 s).
# Kernel command line: nb.hostname=NAME nb.eth0=ADDR/PREFIX nb.eth1=ADDR/PREFIX
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
for m in virtio_net sch_netem sch_tbf sch_prio cls_u32; do modprobe "$m"; done
ip link set lo up
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nb.hostname=*) hostname "${arg#nb.hostname=}" ;;
    nb.eth*=*) dev=${arg%%=*}; dev=${dev#nb.}; ip addr add "${arg#*=}" dev "$dev"; ip link set "$dev" up ;;
  esac
done
# Room for a 100 ms x 100 Mbit bandwidth-delay product: the defaults of a 512 MB guest cap it
# at 60-70 Mbit/s, which would measure the guest, not the shaping.
sysctl -q -w net.core.rmem_max=33554432 net.core.wmem_max=33554432 \
  net.ipv4.tcp_rmem="4096 131072 33554432" net.ipv4.tcp_wmem="4096 65536 33554432"
mkdir -p /run/sshd
/usr/sbin/sshd
echo "netbench-vm $(hostname) ready" >/dev/console
# PID 1 must not exit nor spin; `wait` also reaps orphans adopted by PID 1.
while :; do sleep 2147483647 & wait; done
