"""``results/<run-id>/manifest.json``: what a run was (plan, hosts, extra vars, versions, git commit).

Written by the experiment playbook on the controller before the first profile runs:

    python -m bench_client.orchestration.manifest --out results/RUN/manifest.json --json '{"plan": ..., "hosts": ...,
        "extra_vars": ...}'
    python -m bench_client.orchestration.manifest --check --out results/RUN/manifest.json --json '{"plan": ...}'

A run id whose manifest names another model or dtype is refused (exit 2), by the pre-flight already
(``--check``), and the manifest is never overwritten then.

Hosts are described by the fields the pre-flight probe summarised (address, device, memory, GPUs),
never by their connection variables; any key that looks like a credential is dropped wherever it
appears, so a secret passed as an extra var never reaches the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_client.core import environment, provenance
from bench_client.core.processes import fail, write_atomically
from bench_client.orchestration import runs
from bench_client.core.arguments import description

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?|secret|token|private|credential|api_?key|ssh_?key|key_?file|become_pass",
                         re.IGNORECASE)
REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """A copy of ``value`` with every dict entry whose key looks like a credential replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def controller_versions() -> dict[str, Any]:
    from importlib import metadata

    found: dict[str, Any] = dict(environment.package_versions())
    for package in ("ansible-core", "ansible-runner", "matplotlib"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["platform"] = platform.platform()
    return found


def build_manifest(data: dict[str, Any]) -> dict[str, Any]:
    plan = data.get("plan") or {}
    return redact({
        "schema": MANIFEST_SCHEMA,
        "run_id": data.get("run_id") or plan.get("run_id"),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": provenance.git_state(),
        "controller_versions": controller_versions(),
        "extra_vars": data.get("extra_vars") or {},
        "plan": plan,
        "hosts": data.get("hosts") or {},
        "inventory": data.get("inventory"),
    })


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists stay whole): the form manifests are compared in."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def differences(a: dict[str, Any], b: dict[str, Any], sections: tuple[str, ...] = (
        "git", "controller_versions", "extra_vars", "plan.model", "plan.dtype", "plan.num_gpus", "plan.profiles",
        "plan.systems", "hosts")) -> list[tuple[str, Any, Any]]:
    """(key, in A, in B) for every differing value under ``sections`` (run ids and times always differ)."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if any(k == s or k.startswith(s + ".") for s in sections))
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


# What a run's rows were measured with: a rerun of the run id that differs here is another experiment
# (its client would refuse to resume the rows only after the swarm was restarted for it).
RESUME_IDENTITY = ("model", "dtype")


def check_resume(out: Path, plan: dict[str, Any]) -> None:
    """Refuse (ValueError) a plan for a run id whose manifest.json names another model or dtype."""
    existing = read_manifest(out.parent) if out.name == MANIFEST_NAME else None
    if existing is None:
        return
    before = existing.get("plan") or {}
    differ = [f"{key} {before.get(key)!r} there, {plan.get(key)!r} now" for key in RESUME_IDENTITY
              if before.get(key) != plan.get(key)]
    if differ:
        raise ValueError(f"this resumes run {existing.get('run_id') or out.parent.name} ({out}), measured with "
                         f"another configuration: {'; '.join(differ)}; use another run_id, or the same "
                         "configuration to resume it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench_client.orchestration.manifest", description=description(__doc__))
    parser.add_argument("--out", required=True, type=Path, help="results/<run-id>/manifest.json")
    parser.add_argument("--json", required=True, help="JSON object with plan, hosts, extra_vars (and run_id, inventory)")
    parser.add_argument("--check", action="store_true",
                        help="only check that the plan may resume the run there (the pre-flight); write nothing")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json)
    except json.JSONDecodeError as exc:
        fail(f"--json is not valid JSON ({exc.msg})")
    if not isinstance(data, dict):
        fail("--json must be a JSON object")
    try:
        check_resume(args.out, data.get("plan") or {})
        if args.check:
            return 0
    except ValueError as exc:  # also an unreadable manifest: never overwritten
        fail(str(exc))
    manifest = build_manifest(data)
    # the run section (start, invocations, outcome, configurations done) is the timeline callback's
    # (bench_client.orchestration.runs): a rewrite by a resumed run keeps it
    manifest.update({k: v for k, v in (runs.read_json(args.out) or {}).items() if k == "run"})
    write_atomically(args.out, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
