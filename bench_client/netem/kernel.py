"""Does a host's kernel have sch_netem, and if not, how does it get it? (pure: unit-tested without a kernel)

Many cloud images ship sch_netem outside the kernel package, in an extra-modules package for the
running kernel (Ubuntu: linux-modules-extra-$(uname -r); RHEL/Fedora: kernel-modules-extra-$(uname -r)).
The netem role's read-only probe (netemctl.sh module) reports the facts; ``module_action`` turns them
into one of:

    ok       the module is loaded or built in (or a netem qdisc works: the kernel loads it itself)
    load     it is in the running kernel's module tree: modprobe
    install  the package carrying it is in the package index: install it, then modprobe
    refuse   none of these: the message names what is missing and the ways out

The pre-flight (bench_client.orchestration.plan) refuses with that message before any host changes;
provisioning (roles/netem tasks/module.yml) loads or installs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTIONS = ("ok", "load", "install", "refuse")
# package_state values of the probe: installed, available (a candidate in the index), missing (the
# index has none), no-index (the index was never fetched: apt-get update), unknown (could not ask)
PACKAGE_STATES = ("installed", "available", "missing", "no-index", "unknown")
WAYS_OUT = ("or shape through the netem router VM (netem_backend: router), or use a rate-only profile "
            "(tbf needs no sch_netem)")


@dataclass(frozen=True)
class ModuleAction:
    action: str  # one of ACTIONS
    package: str  # install: the package to install ("" otherwise)
    refresh_index: bool  # install: refresh the package index first (it was never fetched)
    message: str  # what was found (refuse: what is missing and what to do)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "package": self.package, "refresh_index": self.refresh_index,
                "message": self.message}


def module_action(facts: dict[str, Any], host: str = "", update_index: bool = False,
                  install: bool = True) -> ModuleAction:
    """The probe's facts -> what provisioning does about sch_netem on this host.

    ``update_index``: an apt index that was never fetched may be refreshed (then the package is
    installed if the refreshed index has it); otherwise such a host is refused, naming the command.
    ``install``: False allows only loading (a host whose packages we may not touch).
    """
    kernel = str(facts.get("kernel") or "?")
    where = f"{host} (kernel {kernel})" if host else f"kernel {kernel}"
    if facts.get("loaded") or facts.get("builtin"):
        return ModuleAction("ok", "", False, f"{where}: sch_netem is {'loaded' if facts.get('loaded') else 'built in'}")
    if facts.get("works"):
        return ModuleAction("ok", "", False, f"{where}: the kernel accepts a netem qdisc")
    if facts.get("on_disk"):
        return ModuleAction("load", "", False, f"{where}: sch_netem is in the module tree, not loaded")
    package = str(facts.get("package") or "")
    state = str(facts.get("package_state") or "unknown")
    manager = str(facts.get("manager") or "")
    lacks = f"{where} lacks sch_netem (not loaded, not built in, not in /lib/modules/{kernel})"
    if facts.get("on_disk") is None and not facts.get("tree", True):
        # no module tree for the running kernel (a container, a custom kernel): a package cannot help
        return ModuleAction("refuse", "", False, f"{where} has no sch_netem and no module tree /lib/modules/{kernel} "
                                                 f"(a container or a custom kernel?): boot a kernel with netem, {WAYS_OUT}")
    if not package:
        return ModuleAction("refuse", "", False, f"{lacks}, and no package for it is known on this distribution "
                                                 f"({facts.get('os') or 'unknown'}, package manager "
                                                 f"{manager or 'none'}): install the kernel's extra modules, {WAYS_OUT}")
    if state == "installed":
        return ModuleAction("refuse", "", False, f"{lacks}, although {package} is installed: this kernel has no "
                                                 f"netem module at all; boot another kernel, {WAYS_OUT}")
    if not install:
        return ModuleAction("refuse", "", False, f"{lacks}; {package} would bring it but netem_module_install is "
                                                 f"false: install it, {WAYS_OUT}")
    if state == "available":
        return ModuleAction("install", package, False, f"{where}: sch_netem comes with {package} (not installed)")
    if state == "no-index" and update_index:
        return ModuleAction("install", package, True, f"{where}: sch_netem may come with {package}; the {manager} "
                                                      "index was never fetched, so it is refreshed first")
    if state == "no-index":
        return ModuleAction("refuse", "", False, f"{lacks}; it may come with {package}, but the {manager} index "
                                                 "was never fetched: run `apt-get update` there (or set "
                                                 f"netem_module_update_index=true), {WAYS_OUT}")
    if state == "missing":
        return ModuleAction("refuse", "", False, f"{lacks}, and {package} is not in its {manager} package index: "
                                                 f"install a kernel that has netem, {WAYS_OUT}")
    return ModuleAction("refuse", "", False, f"{lacks}, and whether {manager or 'the package manager'} has "
                                             f"{package} could not be found out: install it, {WAYS_OUT}")
