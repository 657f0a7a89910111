#!/bin/busybox sh
# /init of the netem router VM (PID 1, busybox + Debian's iproute2, no root disk).
# 1. loads the router's modules (modules.list is in dependency order);
# 2. names each NIC after its MAC (52:54:00:4e:00:NN -> nNN: the host knows which tap is NN) and
#    bridges them all (one L2 segment: the namespaces keep their addresses; shaping is per NIC);
# 3. raises the socket buffer maxima, enables forwarding;
# 4. runs the control agent on /dev/ttyS1 (a unix socket on the host): one request per line,
#    "ID tc ARGS...", "ID ip ARGS..." or "ID uname -r" (the shaping kernel, recorded in every row),
#    characters [A-Za-z0-9 ._:/=+-] only; the reply is the
#    command's output, then "@@nb ID RC". Anything else is refused with RC 126. No shell
#    evaluation: the words are split with globbing off and run as argv.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin LD_LIBRARY_PATH=/lib/iproute2
# busybox sh runs its own applets first whatever PATH says: iproute2 is called by its path
ip() { /sbin/ip "$@"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run/netns
while read -r m; do
  case "$m" in ifb.ko) insmod "/lib/modules/$m" numifbs=0 ;; *) insmod "/lib/modules/$m" ;; esac || echo "router: insmod $m failed"
done </modules.list
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up
ip link add br0 type bridge forward_delay 0 stp_state 0
ip link set br0 up
for dev in /sys/class/net/eth*; do
  dev=${dev##*/}
  mac=$(cat "/sys/class/net/$dev/address")
  name=n${mac##*:}
  ip link set "$dev" name "$name"
  ip link set "$name" master br0 up
done
echo 1 >/proc/sys/net/ipv4/ip_forward
for f in rmem_max wmem_max; do echo 67108864 >"/proc/sys/net/core/$f"; done
echo 10000 >/proc/sys/net/core/netdev_max_backlog
echo "router: up with $(ls /sys/class/net | tr '\n' ' ')"
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3<>/dev/ttyS1
set -f
while true; do
  IFS= read -r line <&3 || { sleep 0.2; continue; }
  line=${line%$(printf '\r')}
  set -- $line
  id=$1
  [ $# -ge 2 ] || { echo "@@nb $id 126" >&3; continue; }
  shift
  case "$line" in
    *[!A-Za-z0-9\ ._:/=+-]*) echo "refused: characters outside [A-Za-z0-9 ._:/=+-]" >&3; echo "@@nb $id 126" >&3; continue ;;
  esac
  case "$1" in
    tc|ip) cmd=/sbin/$1; shift; "$cmd" "$@" >/tmp/out 2>&1; rc=$? ;;
    uname) shift; /bin/uname "$@" >/tmp/out 2>&1; rc=$? ;;
    *) echo "refused: only tc, ip and uname" >/tmp/out; rc=126 ;;
  esac
  cat /tmp/out >&3
  echo "@@nb $id $rc" >&3
done
