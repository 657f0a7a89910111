"""Netem on a rented kernel that ships sch_netem in an extra-modules package, for real, in one VM.

The test VM (tests/vm: Debian's cloud kernel under qemu) loses its sch_netem: unloaded, its .ko moved
out of the module tree (depmod), into a tiny .deb named linux-modules-extra-$(uname -r), as Ubuntu
ships it. The VM has no internet: a local flat apt repository (file:/srv/...) inside it is its index.
site.yml's pre-flight and provisioning (`--tags netem_module`) then run over ssh:
1. the index lacks the package: the pre-flight refuses, naming the module and the package, and the
   host is untouched (module not loaded, package not installed);
2. the index has it: check mode changes nothing; a real run installs the package and loads the
   module, and netem then shapes (tc qdisc add/show); a second run changes nothing.
One boot; ~1-2 minutes on 2 cores.
"""

from __future__ import annotations

import json

import pytest

from vm import REPO, VMCluster, build_image, recap

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Inside the VM: hide sch_netem, package it, and serve two flat repositories (one without it).
HIDE_AND_PACKAGE = r"""
set -eu
k=$(uname -r)
rmmod sch_netem
pkg=/tmp/pkg
mkdir -p "$pkg/DEBIAN" "$pkg/lib/modules/$k/kernel/net/sched" /srv/extra /srv/empty
mv "/lib/modules/$k/kernel/net/sched/sch_netem.ko" "$pkg/lib/modules/$k/kernel/net/sched/"
depmod "$k"
cat >"$pkg/DEBIAN/control" <<EOF
Package: linux-modules-extra-$k
Version: 1.0
Architecture: amd64
Maintainer: netbench tests <root@localhost>
Description: extra kernel modules for $k (test package: sch_netem only)
EOF
printf '#!/bin/sh\nset -e\ndepmod -a %s\n' "$k" >"$pkg/DEBIAN/postinst"
chmod 0755 "$pkg/DEBIAN/postinst"
deb=/srv/extra/linux-modules-extra-${k}_1.0_amd64.deb
dpkg-deb -Zgzip --build "$pkg" "$deb" >/dev/null
{ dpkg-deb -f "$deb"; echo "Filename: ./$(basename "$deb")"; echo "Size: $(stat -c %s "$deb")"
  echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"; echo; } >/srv/extra/Packages
: >/srv/empty/Packages
rm -f /etc/apt/sources.list.d/*
echo "$k"
"""


def _index(cluster: VMCluster, vm, repo: str) -> None:
    """The VM's only package source is /srv/<repo> (a populated index, as on a cloud image)."""
    cluster.ssh(vm, f"echo 'deb [trusted=yes] file:/srv/{repo} ./' >/etc/apt/sources.list && apt-get update -qq",
                timeout=120)


def _state(cluster: VMCluster, vm, package: str) -> tuple[bool, bool]:
    """(sch_netem loaded, package installed)."""
    out = cluster.ssh(vm, f"test -d /sys/module/sch_netem && echo loaded; "
                          f"dpkg-query -W -f='${{Status}}' {package} 2>/dev/null | grep -q 'ok installed' && echo installed",
                      check=False).stdout
    return "loaded" in out, "installed" in out


def test_extra_modules_package_installed_and_loaded_or_refused_in_preflight(tmp_path, capsys):
    build_image()
    cluster = VMCluster(count=1, workdir=tmp_path)
    cluster.groups = {"dht": ["vm1"], "servers": ["vm1"], "clients": ["vm1"]}
    try:
        cluster.start()
        vm = cluster.vms[0]
        kernel = cluster.ssh(vm, HIDE_AND_PACKAGE, timeout=120).stdout.split()[-1]
        package = f"linux-modules-extra-{kernel}"
        assert cluster.ssh(vm, "modprobe sch_netem", check=False).returncode != 0  # really gone
        assert _state(cluster, vm, package) == (False, False)
        extra = {"profiles": "paper-10ms-100mbit", "run_id": "netem-module", "netbench_shaping": True}

        def play(*args: str):
            proc = cluster.ansible_playbook(REPO / "site.yml", "--tags", "netem_module", *args, extra_vars=extra)
            with capsys.disabled():
                print(f"\nsite.yml --tags netem_module {' '.join(args)}: rc={proc.returncode} in {proc.wall_s:.0f} s")
            return proc

        # 1. no package in the index: refused by the pre-flight, nothing changed
        _index(cluster, vm, "empty")
        refused = play()
        assert refused.returncode != 0
        assert (f"profile(s) paper-10ms-100mbit need sch_netem: vm1 (kernel {kernel}) lacks sch_netem" in refused.stdout
                and f"{package} is not in its apt package index" in refused.stdout), refused.stdout[-3000:]
        assert "Kernel support for the shaping" not in refused.stdout  # provisioning never started
        assert _state(cluster, vm, package) == (False, False)

        # 2. the index has it: check mode changes nothing, then install + load, then nothing to do
        _index(cluster, vm, "extra")
        checked = play("--check")
        assert checked.returncode == 0, checked.stdout[-3000:]
        assert recap(checked.stdout)["vm1"]["changed"] >= 1
        assert _state(cluster, vm, package) == (False, False)

        installed = play()
        assert installed.returncode == 0, installed.stdout[-3000:]
        assert recap(installed.stdout)["vm1"]["changed"] >= 2  # package, modprobe
        assert _state(cluster, vm, package) == (True, True)
        cluster.ssh(vm, "tc qdisc add dev eth1 root netem delay 10ms")
        shaped = json.loads(cluster.ssh(vm, "tc -j qdisc show dev eth1").stdout)
        cluster.ssh(vm, "tc qdisc del dev eth1 root")
        assert shaped[0]["kind"] == "netem" and shaped[0]["options"]["delay"]["delay"] == pytest.approx(0.01), shaped

        again = play()
        assert again.returncode == 0 and recap(again.stdout)["vm1"]["changed"] == 0, again.stdout[-3000:]
    finally:
        cluster.close()
