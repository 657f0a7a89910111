#!/usr/bin/env bash
# median of 3 fresh interpreters per import path: CPU seconds (user+sys; less sensitive than wall time to
# the other engineers' load on this shared 2-core host) and wall seconds
P=/work/main/.venv/bin/python
t() { local name="$1"; shift; local cpu=() wall=(); for i in 1 2 3; do PYTHONPATH=/tmp/bringup-new /usr/bin/time -o /tmp/bringup-res/t.out -f "%U %S %e" $P -c "$*" >/dev/null 2>&1; out=$(tail -1 /tmp/bringup-res/t.out); cpu+=("$(echo "$out" | awk '{print $1+$2}')"); wall+=("$(echo "$out" | awk '{print $3}')"); done
  printf '%-62s cpu %5s s  wall %5s s\n' "$name" "$(printf '%s\n' "${cpu[@]}" | sort -n | sed -n 2p)" "$(printf '%s\n' "${wall[@]}" | sort -n | sed -n 2p)"; }
t "import torch" "import torch"
t "import hivemind" "import hivemind"
t "old DHT: compat.apply() + petals.cli.run_dht" "from bench_client import compat; compat.apply(); import petals.cli.run_dht"
t "new DHT: hivemind DHT node + p2p, no package __init__s" "from bench_client import compat; compat.import_without_package_inits(); compat.keep_p2p_private(); import hivemind.dht.node, hivemind.utils.networking"
t "old server: compat.apply() + petals.cli.run_server" "from bench_client import compat; compat.apply(); import petals.cli.run_server"
t "new float server: compat.apply(bitsandbytes=False) + same" "from bench_client import compat; compat.apply(bitsandbytes=False); import petals.cli.run_server"
