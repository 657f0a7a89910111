#!/bin/sh
# Host side of the netem role, run by ansible.builtin.script (plain sh: on slow hosts a Python
# module costs seconds per task). Nothing of it stays on the host but DIR (pid files, a cache).
# The role's root qdisc has handle 4e54:; nothing else is ever removed.
#   netemctl.sh inspect IFACE DIR             read-only: interface (IFACE "" = default route's),
#                                             address, kernel support, qdiscs, timer (JSON)
#   netemctl.sh apply IFACE DIR SECS BATCH    run the tc batch (if any); (re)arm the timer for SECS
#   netemctl.sh arm IFACE DIR SECS            (re)start the dead-man timer: remove the shaping after SECS
#   netemctl.sh teardown IFACE DIR            disarm the timer and remove the shaping; prints what it did
#   netemctl.sh serve IFACE DIR ADDR PORT COUNT INTERVAL PEER...  start an iperf3 server, ping each peer
#   netemctl.sh iperf IFACE DIR PORT SECS OMIT MIN_MBIT PEER...  iperf3 to each peer, one after another
#   netemctl.sh unserve IFACE DIR             stop the iperf3 server
#   netemctl.sh stats IFACE DIR               `tc -s -j qdisc show`
#   netemctl.sh module - DIR                  read-only: is sch_netem loaded, built in, in the module
#                                             tree, or in a package of the index (JSON for
#                                             bench_client.netem.kernel.module_action)
set -u
cmd=$1 iface=$2 dir=$3
shift 3
if [ -z "$iface" ]; then  # the interface of the default IPv4 route
  iface=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
fi
pidfile="$dir/deadman-$iface.pid"
# The removal, also what the detached timer runs: only our own root qdisc is deleted.
undo="tc qdisc show dev '$iface' root | grep -q '^qdisc [a-z_]* 4e54: root' && tc qdisc del dev '$iface' root"

tcp_listening() {  # is a TCP socket of this network namespace listening on port $1? (/proc: no ss needed,
  # the GPU hosts' images have none)
  awk -v port=":$(printf '%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == port { found = 1 }
    END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

timer_pid() {  # the running timer's pid, or nothing (a stale or reused pid is ignored)
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  grep -qs netem-deadman "/proc/$pid/cmdline" && echo "$pid"
}

disarm() {
  pid=$(timer_pid)
  [ -n "$pid" ] && kill -s TERM -- "-$pid" 2>/dev/null && echo "disarmed timer $pid"
  rm -f "$pidfile"
}

arm() {
  mkdir -p "$dir"
  disarm >/dev/null
  # setsid: its own session and process group, so the end of the ssh session does not take it
  # along, and disarm stops its sleep with it. "netem-deadman" in its argv identifies it.
  setsid sh -c 'echo $$ > "$1"; sleep "$2"; sh -c "$3"; rm -f "$1"' netem-deadman \
    "$pidfile" "$1" "$undo" </dev/null >/dev/null 2>&1 &
  i=0
  while [ -z "$(timer_pid)" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  pid=$(timer_pid)
  [ -n "$pid" ] || { echo "dead-man timer did not start" >&2; exit 1; }
  echo "armed timer $pid: shaping of $iface removed in $1 s unless disarmed"
}

probe() {  # try each qdisc for real on a veth in a throwaway namespace: no host interface touched
  for m in sch_netem sch_tbf sch_htb cls_u32 veth; do modprobe -q "$m" 2>/dev/null || true; done
  ns="netem-probe-$$"
  if ip netns add "$ns" 2>/dev/null; then
    if ip -n "$ns" link add probe0 type veth peer name probe1 2>/dev/null; then
      for kind in netem tbf htb; do
        case $kind in
          netem) args="delay 1ms rate 1mbit" ;;
          tbf) args="rate 1mbit burst 15140 limit 15140" ;;
          htb) args="default 1" ;;
        esac
        # shellcheck disable=SC2086  # a word list on purpose
        if tc -n "$ns" qdisc add dev probe0 root $kind $args 2>/dev/null; then ok=true; else ok=false; fi
        tc -n "$ns" qdisc del dev probe0 root 2>/dev/null
        printf '"%s": %s, ' "$kind" "$ok"
      done
      ip netns del "$ns"
      printf '"probe": "netns"'
      return
    fi
    ip netns del "$ns"
  fi
  # No namespaces here: the module tree tells what it can; without one, "null" (unknown: the
  # role then tries netem, and a missing netem fails loudly at tc).
  mods="/lib/modules/$(uname -r)"
  for kind in netem tbf htb; do
    if [ -d "/sys/module/sch_$kind" ] || grep -qs "/sch_$kind.ko" "$mods/modules.builtin" \
       || grep -qs "/sch_$kind.ko" "$mods/modules.dep"; then ok=true
    elif [ -d "$mods" ]; then ok=false
    else ok=null; fi
    printf '"%s": %s, ' "$kind" "$ok"
  done
  printf '"probe": "modules"'
}

case $cmd in
  inspect)
    interfaces=$(ls /sys/class/net | tr '\n' ' ')
    if [ -z "$iface" ] || [ ! -e "/sys/class/net/$iface" ]; then
      printf '{"interface": "", "wanted": "%s", "interfaces": "%s"}\n' "$iface" "$interfaces"
      exit 0
    fi
    # Kernel support does not change until a reboot, which also empties /run, or until sch_netem is
    # loaded (provisioning: tasks/module.yml): cache it there, under both.
    cache() { echo "$dir/support-$(uname -r)$([ -d /sys/module/sch_netem ] && echo -netem)"; }
    support=$(cat "$(cache)" 2>/dev/null) || {
      support=$(probe)  # (it loads the modules it can)
      mkdir -p "$dir" && echo "$support" >"$(cache)"
    }
    address=$(ip -4 -o addr show dev "$iface" | awk '{split($4, a, "/"); print a[1]; exit}')
    qdiscs=$(tc -j qdisc show dev "$iface")
    filters=$(tc filter show dev "$iface" parent 4e54: 2>/dev/null | grep -c 'flowid 4e54:1')
    printf '{"interface": "%s", "address": "%s", "kernel": "%s", "interfaces": "%s", %s, "qdiscs": %s, "bypass_filters": %s, "deadman_pid": "%s"}\n' \
      "$iface" "$address" "$(uname -r)" "$interfaces" "$support" "${qdiscs:-[]}" "${filters:-0}" "$(timer_pid)"
    ;;
  apply)
    secs=$1 batch=$2
    if [ -n "$batch" ]; then
      printf '%s\n' "$batch" | tc -batch - || exit 1
      echo "applied to $iface"
    fi
    if [ "$secs" -gt 0 ] && { [ -n "$batch" ] || [ -z "$(timer_pid)" ]; }; then arm "$secs"; fi
    ;;
  arm)
    arm "$1"
    ;;
  teardown)
    disarm
    if sh -c "$undo"; then echo "removed shaping from $iface"; fi
    exit 0
    ;;
  serve)
    addr=$1 port=$2 count=$3 interval=$4
    shift 4
    mkdir -p "$dir"
    # Its own process group (unserve stops it by that), and it ends by itself if never stopped.
    setsid timeout 900 iperf3 -s -B "$addr" -p "$port" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/iperf3.pid"
    pings=""
    for peer in "$@"; do  # all peers at once: pings do not disturb each other
      ping -n -c "$count" -i "$interval" -w $((count + 10)) "$peer" >"$dir/ping-$peer" 2>&1 &
      pings="$pings $!"
    done
    listening=no
    for _ in $(seq 50); do
      if tcp_listening "$port"; then listening=yes; break; fi
      sleep 0.1
    done
    # shellcheck disable=SC2086  # a list of pids
    [ -z "$pings" ] || wait $pings
    for peer in "$@"; do
      echo "=== $peer"
      cat "$dir/ping-$peer"
      rm -f "$dir/ping-$peer"
    done
    [ "$listening" = yes ] || { echo "iperf3 server did not start on $addr:$port" >&2; exit 1; }
    ;;
  iperf)
    # Up to 3 runs per peer until one reaches MIN_MBIT (0: one run); the fastest run is printed.
    # A cap is checked on the fastest run too, so retrying only forgives TCP noise of busy hosts.
    port=$1 secs=$2 omit=$3 min_mbit=$4
    shift 4
    for peer in "$@"; do
      best="" best_rate=-1
      for attempt in 1 2 3; do
        out=$(iperf3 -J -c "$peer" -p "$port" -t "$secs" -O "$omit" --connect-timeout 5000)
        rate=$(printf '%s\n' "$out" | awk '/"sum_received"/ {f = 1}
          f && /"bits_per_second"/ {gsub(/[^0-9.e+]/, "", $2); print $2 / 1e6; exit}')
        rate=${rate:-0}
        if awk -v r="$rate" -v b="$best_rate" 'BEGIN {exit !(r > b)}'; then best=$out best_rate=$rate; fi
        awk -v r="$rate" -v m="$min_mbit" 'BEGIN {exit !(m <= 0 || r >= m)}' && break
        echo "iperf3 to $peer: $rate Mbit/s < $min_mbit, run $attempt of 3" >&2
      done
      echo "=== $peer"
      printf '%s\n' "$best"
    done
    exit 0
    ;;
  unserve)
    pid=$(cat "$dir/iperf3.pid" 2>/dev/null) && kill -s TERM -- "-$pid" 2>/dev/null
    rm -f "$dir/iperf3.pid"
    exit 0
    ;;
  stats)
    tc -s -j qdisc show dev "$iface"
    ;;
  module)
    k=$(uname -r) mods="/lib/modules/$(uname -r)"
    loaded=false builtin=false tree=false on_disk=null works=null
    [ -d /sys/module/sch_netem ] && loaded=true
    grep -qs '/sch_netem\.ko' "$mods/modules.builtin" && builtin=true
    if [ -d "$mods" ]; then
      tree=true
      # listed in modules.dep (what modprobe reads) and the file really there
      path=$(awk -F: '/\/sch_netem\.ko/ {print $1; exit}' "$mods/modules.dep" 2>/dev/null)
      if [ -n "$path" ] && [ -f "$mods/$path" ]; then on_disk=true; else on_disk=false; fi
    elif ip netns add "netem-mod-$$" 2>/dev/null; then
      # no module tree (a container): does the kernel take a netem qdisc (loading it from the host's tree)?
      works=false
      ip -n "netem-mod-$$" link add probe0 type veth peer name probe1 2>/dev/null \
        && tc -n "netem-mod-$$" qdisc add dev probe0 root netem delay 1ms 2>/dev/null && works=true
      ip netns del "netem-mod-$$"
    fi
    manager="" package="" state=unknown
    if command -v apt-get >/dev/null 2>&1; then
      manager=apt package="linux-modules-extra-$k"
      if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then state=installed
      elif ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages'; then state=no-index
      else
        candidate=$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then state=available; else state=missing; fi
      fi
    elif command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1; then
      manager=$(command -v dnf >/dev/null 2>&1 && echo dnf || echo yum) package="kernel-modules-extra-$k"
      if rpm -q "$package" >/dev/null 2>&1; then state=installed
      elif timeout 120 "$manager" -q list --available "$package" >/dev/null 2>&1; then state=available
      else state=missing; fi
    fi
    os=$(. /etc/os-release 2>/dev/null && echo "${ID:-}")
    printf '{"kernel": "%s", "loaded": %s, "builtin": %s, "tree": %s, "on_disk": %s, "works": %s, "manager": "%s", "package": "%s", "package_state": "%s", "os": "%s"}\n' \
      "$k" "$loaded" "$builtin" "$tree" "$on_disk" "$works" "$manager" "$package" "$state" "$os"
    ;;
  *)
    echo "usage: $0 inspect|apply|arm|teardown|serve|iperf|unserve|stats|module IFACE DIR ..." >&2
    exit 2
    ;;
esac
