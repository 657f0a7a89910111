# Read-only check of a host's swarm stack (roles/netbench_host, tasks/stack_check.yml). Ansible runs it
# as `python - PINS_JSON` with bench_client/compat.py's source before this text on stdin, so it needs
# nothing of ours installed: torch, hivemind and petals must import with compat.apply(), and every
# `name==version` pin of the project (and petals') must be the installed version. One JSON line out.
import importlib.metadata as _metadata
import json as _json
import re as _re
import sys as _sys


def _stack_problems(pins):
    problems = []
    for pin in pins:
        name, _, version = pin.partition("==")
        if not version:
            continue
        try:
            found = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if _re.sub(r"\+.*", "", found) != version:
            problems.append(f"{name} {found} is installed, the project pins {version}")
    if problems:
        return problems
    try:
        apply()  # noqa: F821 (compat's, above on stdin)
        import hivemind  # noqa: F401
        import petals  # noqa: F401
    except Exception as exc:  # an import that fails is the finding, whatever it raises
        problems.append(f"import petals with bench_client.compat applied: {type(exc).__name__}: {exc}")
    return problems


def _torch():
    try:
        import torch
    except Exception:  # no (working) torch: the venv installs one
        return None, None
    return torch.__version__, torch.version.cuda


_torch_version, _torch_cuda = _torch()
_problems = _stack_problems(_json.loads(_sys.argv[1]))
print(_json.dumps({"ok": not _problems, "problems": _problems, "torch": _torch_version, "torch_cuda": _torch_cuda,
                   "python": _sys.executable}))
