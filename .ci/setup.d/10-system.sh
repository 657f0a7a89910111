#!/usr/bin/env bash
# System packages the tests use: iproute2 (netns, veth, tc), openssh (real ssh into test hosts),
# iperf3 (measured shaping), nftables (the swarm firewall), sudo (a non-root login user that becomes
# root only for the root tasks: tests/isolated/test_site_emulated_ssh.py), python3-venv (a bare host whose swarm
# stack provisioning installs into a venv: tests/isolated/test_provision_bare_host.py).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends iproute2 openssh-server openssh-client iperf3 iputils-ping \
  nftables procps sudo python3-venv >/dev/null
