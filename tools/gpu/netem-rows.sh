#!/usr/bin/env bash
# The network-profile rows on ONE GPU host whose kernel has no sch_netem (issue 11,
# docs/netem-router.md): the DHT/client and each Petals server in their own network namespace, the
# swarm's traffic through the netem router VM, site.yml driving everything with connection local
# (no sshd needed), the profile set inside the router and measured from the hosts.
#
# Carry: .whl/ (the Petals stack + Ansible wheels, tools/gpu/make-wheels.sh) and
# build/netem-router/bundle.tar.xz (bash tools/netem-router/build-bundle.sh; ~27 MB). Run from the
# repository root as root:
#   bash tools/gpu/netem-rows.sh OUTDIR [MODEL] [SERVERS] [-e more=vars ...]
# e.g. bash tools/gpu/netem-rows.sh /tmp/out facebook/opt-30b 4
set -euo pipefail
out=$1; model=${2:-facebook/opt-30b}; servers=${3:-4}; shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
if [[ ! -d /tmp/site/petals ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# the bundle: qemu + Debian kernel for the router, and ip/tc/ping/iperf3 for this host (it has none)
rm -rf /tmp/netem-router && mkdir -p /tmp/netem-router
tar -C /tmp/netem-router -xJf build/netem-router/bundle.tar.xz
bundle=/tmp/netem-router/bundle
export PATH="$bundle/bin:$PATH" PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NETBENCH_MODELS_DIR=/tmp/netbench-models
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
lab=/tmp/netbench-lab
playbook() { python3 -m ansible.cli.playbook -i "$lab/hosts.yml" site.yml -e results_dir="$out/results" "$@"; }
# PLAY_TIMEOUT=S: interrupt the experiment play after S seconds (a device call has a hard limit); the rows
# measured so far are kept (the client's own copy too, host-results/) and a rerun with RESUME=DIR (the
# results/ of the earlier call) resumes: the client host gets those rows back and measures only the rest.
# ARCHIVE=FILE.tgz: the whole OUTDIR packed there at the end (a device call returns few, shallow files).
timed() { if [[ -n ${PLAY_TIMEOUT:-} ]]; then timeout -s INT -k 30 "$PLAY_TIMEOUT" "$@"; else "$@"; fi; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
# RUN_ID: the run's id for site.yml and its cleanup (one timeline for both); default: the plan's
run_args=(); [[ -z ${RUN_ID:-} ]] || run_args=(-e "run_id=$RUN_ID")
cleanup() {
  cp -r "$lab/work/h1/results" "$out/host-results" 2>/dev/null || true
  local t0; t0=$(date +%s.%N)
  playbook --tags cleanup "${run_args[@]}" >"$out/cleanup.log" 2>&1 || echo "cleanup play failed: see $out/cleanup.log" >&2
  echo "cleanup_s $(elapsed "$t0")" | tee -a "$out/times.txt"
  cp -r "$lab/router/console.log" "$out/router-console.log" 2>/dev/null || true
  python3 -m bench_client.netem.lab down --dir "$lab"
  [[ -z ${ARCHIVE:-} ]] || tar -C "$out" -czf "$ARCHIVE" .
}
trap cleanup EXIT
nproc >"$out/host.txt"; uname -r >>"$out/host.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/host.txt"
smp=${ROUTER_SMP:-4}
# the router's own limits on this host first (unshaped rate/RTT, each paper profile; ~1 min)
if [[ ${ROUTER_BENCH:-1} == 1 ]]; then  # ROUTER_BENCH=0: measured already on this kind of host
  python3 -m bench_client.netem.router bench --dir /tmp/netem-router-bench --bundle "$bundle" --smp "$smp" \
    | tee "$out/router-bench.json"
fi
# h1: DHT + client (unshaped); h2..: one Petals server each, shaped inside the router
python3 -m bench_client.netem.lab up --dir "$lab" --hosts $((servers + 1)) --router-vm "$bundle" --router-smp "$smp" \
  --connection local --python "$(command -v python3)" | tee "$out/lab.txt"
python3 -m bench_client.netem.router status --dir "$lab/router" | tee "$out/router.json"
[[ -z ${RESUME:-} ]] || { mkdir -p "$out/results" && cp -rn "$RESUME"/. "$out/results/"; }
# SHAPING_COMPARE=PROFILE,...: before the swarm, each profile measured on the servers twice, one flow
# after another over every pair (the schedule of earlier rounds) and all at once (the role's default
# schedule, every pair too): the two must read the same (the router VM is no bottleneck)
for profile in ${SHAPING_COMPARE:+${SHAPING_COMPARE//,/ }}; do
  for mode in serial:1 concurrent:0; do
    t0=$(date +%s.%N)
    python3 -m ansible.cli.playbook -i "$lab/hosts.yml" playbooks/shaping.yml -e netem_hosts=servers \
      -e netem_profile="$profile" -e netem_rate_peers=0 -e netem_measure_max_flows="${mode#*:}" \
      -e netem_backup_dir="$out/shaping-compare/$profile-${mode%%:*}" >"$out/shaping-$profile-${mode%%:*}.log" 2>&1 \
      || echo "shaping compare $profile ${mode%%:*} failed: see $out/shaping-$profile-${mode%%:*}.log" >&2
    echo "shaping_${profile}_${mode%%:*}_s $(elapsed "$t0")" | tee -a "$out/times.txt"
  done
  python3 -m ansible.cli.playbook -i "$lab/hosts.yml" playbooks/shaping.yml -e netem_hosts=servers -e netem_state=absent \
    >>"$out/shaping-$profile-serial.log" 2>&1 || true
done
t0=$(date +%s.%N)
timed python3 -m ansible.cli.playbook -i "$lab/hosts.yml" site.yml -e results_dir="$out/results" -e model="$model" -e netbench_device=cuda \
  -e profiles=none,paper-10ms-1gbit,paper-10ms-100mbit,paper-100ms-100mbit "${run_args[@]}" "$@" 2>&1 | tee "$out/site.log"
echo "site_yml_s $(elapsed "$t0")" | tee -a "$out/times.txt"
# AGAIN='-e k=v ...': site.yml once more on the same swarm with these options instead of "$@" (an A/B
# on one swarm: e.g. the one-shot client first, the client session after)
if [[ -n ${AGAIN:-} ]]; then
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086  # the options, word by word
  timed python3 -m ansible.cli.playbook -i "$lab/hosts.yml" site.yml -e results_dir="$out/results" -e model="$model" \
    -e netbench_device=cuda $AGAIN 2>&1 | tee "$out/site-again.log"
  echo "site_yml_again_s $(elapsed "$t0")" | tee -a "$out/times.txt"
fi
