set -u
out=$1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/tools .whl/tools/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NETBENCH_MODELS_DIR=/tmp/netbench-models
/tmp/tools/bin/py-spy --version
python3 -m bench_client.local_swarm --model facebook/opt-6.7b --servers 1 --device cuda --dtype float16 --num-handlers 4 \
  --workdir /tmp/prof -- -b 2 --num-processes 6 --output /tmp/prof/out.tsv --prompt-lengths 512 --new-tokens 128 \
  --token-sweep none --num-gpus 1 > $out/client.log 2>&1 &
# wait until the timed calls run, then sample every process of the server for 20 s
for i in $(seq 1 90); do grep -q "prompt" $out/client.log 2>/dev/null && break; [ -f /tmp/prof/bringup.json ] && sleep 12 && break; sleep 1; done
ps -eo pid,pgid,pcpu,args | grep -E "bench_client.server|spawn_main" | grep -v grep | cut -c1-160 > $out/ps.txt
srv=$(pgrep -f "bench_client.server" | head -1)
timeout 40 /tmp/tools/bin/py-spy record --pid $srv --subprocesses --duration 20 --rate 200 --format raw -o $out/server.folded --nonblocking > $out/pyspy.log 2>&1
timeout 40 /tmp/tools/bin/py-spy dump --pid $srv --subprocesses > $out/dump.txt 2>&1
wait
cp /tmp/prof/*.log $out/ 2>/dev/null; cp /tmp/prof/out.* $out/ 2>/dev/null
