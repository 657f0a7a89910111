#!/usr/bin/env bash
# The wheels a GPU host without internet needs (python 3.12, torch preinstalled): the Petals stack at
# this project's pins, Ansible (site.yml runs there too) and FlexGen. Versions are read from this
# machine's venv (bench_client/install.sh made it), so the GPU host runs what the tests ran.
#   bash tools/gpu/make-wheels.sh [OUT=.whl]          then carry OUT (<= 64 MiB a call with the tree)
# On the host: python3 -m pip install -q --no-index --no-deps --target /tmp/site OUT/*.whl
set -euo pipefail
out=${1:-.whl}
venv=${VENV:-.venv}
py312=${PY312:-$(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1 || command -v python3.12)}
# not carried (the GPU image has them, KINDS.md): torch, numpy, scipy, jinja2, pyyaml, packaging, psutil,
# safetensors, sentencepiece, tqdm, attrs, grpcio, protobuf, msgpack, uvloop, regex, six, sortedcontainers,
# typing-extensions; grpcio-tools (hivemind's metadata asks for it, nothing imports it at run time);
# bitsandbytes (43 MB for every CUDA: tools/gpu/int8-check.sh wheel makes a CUDA 13-only one; without it
# compat's placeholder stands in and int8/nf4 are refused)
names=(accelerate annotated-types async-timeout base58 ConfigArgParse Dijkstar hivemind huggingface-hub humanfriendly
  netaddr peft petals prefetch_generator pydantic pydantic_core python-baseconv varint
  speedtest-cli tensor-parallel tokenizers transformers py-multihash py-multibase py-multicodec py-cid
  morphys mmh3 blake3 cpufeature cryptography cffi pycparser typing-inspection
  ansible-core ansible-runner resolvelib pexpect ptyprocess python-daemon lockfile
  ${EXTRA_WHEELS:-})
mkdir -p "$out"
freeze=$("$venv/bin/python" -m pip freeze 2>/dev/null)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform any)
for name in "${names[@]}"; do
  spec=$(grep -i "^${name//[-_]/[-_]}==" <<<"$freeze" | head -1 || true)
  [[ -n $spec ]] || spec=$name
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${plat[@]}" -d "$out" "$spec" 2>/dev/null; then
    [[ -n $py312 ]] || { echo "[wheels] $spec has no cp312 wheel and no python3.12 here to build one" >&2; exit 1; }
    echo "[wheels] building $spec for cp312"
    "$py312" -m pip wheel -q --no-deps -w "$out" "$spec"
  fi
done
echo "[wheels] $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
