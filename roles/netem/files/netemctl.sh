#!/bin/sh
# Host side of the netem role (run by ansible.builtin.script; nothing of it stays on the host but
# the dead-man pid file). The role's root qdisc has handle 4e54:; nothing else is ever removed.
#   netemctl.sh inspect IFACE DIR   read-only: kernel support, qdiscs, bypass filters, timer (JSON)
#   netemctl.sh arm IFACE DIR SECS  (re)start the dead-man timer: remove the shaping after SECS
#   netemctl.sh teardown IFACE DIR  disarm the timer and remove the shaping; prints what it did
set -u
cmd=$1 iface=$2 dir=$3
pidfile="$dir/deadman-$iface.pid"
# The removal, also run by the detached timer: only our own root qdisc is deleted.
undo="tc qdisc show dev '$iface' root | grep -q '^qdisc [a-z_]* 4e54: root' && tc qdisc del dev '$iface' root"

timer_pid() {  # the running timer's pid, or nothing (a stale or reused pid is ignored)
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  grep -qs netem-deadman "/proc/$pid/cmdline" && echo "$pid"
}

disarm() {
  pid=$(timer_pid)
  [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null && echo "disarmed timer $pid"
  rm -f "$pidfile"
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
  for kind in netem tbf htb; do  # no namespaces here: trust the module tree
    if [ -d "/sys/module/sch_$kind" ] || grep -qs "/sch_$kind.ko" "/lib/modules/$(uname -r)/modules.builtin"; then
      ok=true; else ok=false; fi
    printf '"%s": %s, ' "$kind" "$ok"
  done
  printf '"probe": "modules"'
}

case $cmd in
  inspect)
    ip link show dev "$iface" >/dev/null 2>&1 || { echo "no interface $iface on $(hostname)" >&2; exit 2; }
    qdiscs=$(tc -j qdisc show dev "$iface")
    filters=$(tc filter show dev "$iface" parent 4e54: 2>/dev/null | grep -c 'flowid 4e54:1')
    printf '{%s, "qdiscs": %s, "bypass_filters": %s, "deadman_pid": "%s"}\n' \
      "$(probe)" "${qdiscs:-[]}" "${filters:-0}" "$(timer_pid)"
    ;;
  arm)
    secs=$4
    mkdir -p "$dir"
    disarm >/dev/null
    # setsid: its own session and process group, so the ssh session's end does not take it along
    # and disarm can stop the sleep with it. "netem-deadman" in its argv identifies it.
    setsid sh -c 'echo $$ > "$1"; sleep "$2"; sh -c "$3"; rm -f "$1"' netem-deadman \
      "$pidfile" "$secs" "$undo" </dev/null >/dev/null 2>&1 &
    i=0
    while [ -z "$(timer_pid)" ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    pid=$(timer_pid)
    [ -n "$pid" ] || { echo "dead-man timer did not start" >&2; exit 1; }
    echo "armed timer $pid: shaping of $iface removed in $secs s unless disarmed"
    ;;
  teardown)
    disarm
    if sh -c "$undo"; then echo "removed shaping from $iface"; fi
    exit 0
    ;;
  *)
    echo "usage: $0 inspect|arm|teardown IFACE DIR [SECONDS]" >&2
    exit 2
    ;;
esac
