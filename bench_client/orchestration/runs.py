"""The runs under a results directory: their state, the latest unfinished one, what is left, what it costs.

Pure functions over ``results/<run_id>/`` (manifest.json, timeline.jsonl, ``<profile>/out.tsv``):

- :func:`run_state` / :func:`update_run_state`: the ``run`` section of manifest.json (start, end,
  outcome of the run and of each invocation, and per profile how many configurations are done),
  written by the ``netbench_timeline`` callback when an experiment starts and when it ends;
- :func:`latest_unfinished`: what ``petals-netbench --resume`` and ``-e resume=true`` resume;
- :func:`estimate`: the wall time and GPU-hours of a plan, from earlier runs' timelines where they
  measured the same model and profile, else from the workload;
- :func:`format_plan`: the plan and its estimate as the pre-flight prints them.

A resumed run keeps its run id, so the client resumes each profile's output where it stopped
(bench_client.core.results: a configuration already in out.tsv is not measured again).
"""

from __future__ import annotations

import json
import shlex
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from bench_client.core.models import get_model
from bench_client.core.processes import write_atomically
from bench_client.core.results import read_tsv
from bench_client.core.sweep import build_sweep, parse_token_sweep
from bench_client.netem import profiles as netem
from bench_client.orchestration import timeline

MANIFEST_NAME = "manifest.json"  # bench_client.orchestration.manifest's (it imports core, kept apart from it)
RUNNING, SUCCESSFUL, FAILED = "running", "successful", "failed"
# Workload guesses where no earlier run measured the model and profile (seconds; see estimate()).
GUESS_OVERHEAD_S = 60.0  # pre-flight, provision, swarm start and wait, the client's start (local run: ~30 s)
GUESS_PROFILE_S = 15.0  # per profile: shaping applied and verified (ping, iperf3), removed, fetched
GUESS_CONFIG_S = 3.0  # per configuration: warm-up and the client's bookkeeping
# Bytes per second a server streams its blocks' weights at, per decode step (a fraction of the roofline).
GUESS_BANDWIDTH = {"cuda": 1.0e12, "cpu": 1.0e10}


def iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds") if epoch is not None else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None where it is missing or unreadable (a run cut mid-write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def planned_configurations(plan: dict[str, Any]) -> int:
    """Configurations the client measures per profile: the sweep (every prompt length, then the token
    sweep) times the repeats, as bench_client.core.sweep builds it."""
    workload = plan.get("workload") or {}
    try:
        sweep = parse_token_sweep(str(workload.get("token_sweep") or "none"), str(plan.get("model") or ""))
        points = build_sweep([int(p) for p in workload.get("prompt_lengths") or []], int(workload.get("new_tokens") or 0),
                             sweep)
    except (TypeError, ValueError):
        return 0
    return len(points) * max(1, int(workload.get("repeats") or 1))


def configurations_done(run_dir: Path, plan: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per profile of the plan: configurations planned and done (rows fetched into <profile>/out.tsv,
    which holds only measured rows: what a rerun skips)."""
    planned = planned_configurations(plan)
    done = {}
    for profile in plan.get("profiles") or []:
        name = profile["name"] if isinstance(profile, dict) else str(profile)
        try:
            rows = len(read_tsv(run_dir / name / "out.tsv"))
        except (OSError, ValueError):  # a TSV cut by a crash: its client repairs it on resume
            rows = 0
        done[name] = {"planned": planned, "done": min(rows, planned) if planned else rows}
    return done


def update_run_state(state: dict[str, Any] | None, invocation: dict[str, Any],
                     configurations: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The run section with this invocation recorded (added, or its entry replaced by id). The run's
    outcome is its last invocation's; started_at is its first one's; finished_at is set once an
    invocation ended (None while one runs, or where one was killed and never ended)."""
    state = dict(state or {})
    invocations = [i for i in state.get("invocations") or [] if i.get("invocation") != invocation.get("invocation")]
    invocations.append(invocation)
    complete = bool(configurations) and all(c["done"] >= c["planned"] for c in configurations.values())
    state.update(started_at=invocations[0].get("started_at"), finished_at=invocation.get("finished_at"),
                 outcome=invocation.get("outcome"), invocations=invocations, configurations=configurations,
                 complete=complete)
    return state


def record_invocation(run_dir: Path, plan: dict[str, Any], invocation: dict[str, Any]) -> dict[str, Any]:
    """Write this invocation into ``run_dir/manifest.json``'s run section (where the experiment has not
    written the manifest yet, a run that failed before it, it is created with the run id and the plan:
    what a resume is checked against)."""
    path = run_dir / MANIFEST_NAME
    manifest = read_json(path) or {"schema": 1, "run_id": plan.get("run_id") or run_dir.name, "plan": plan}
    manifest["run"] = update_run_state(manifest.get("run"), invocation, configurations_done(run_dir, plan))
    write_atomically(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest["run"]


def is_unfinished(run_dir: Path) -> bool:
    """A run whose manifest says it is not done: still running or killed (no end), failed, or ended
    with configurations missing. A run with no run section (older than it) counts as finished."""
    state = (read_json(run_dir / MANIFEST_NAME) or {}).get("run")
    if not isinstance(state, dict):
        return False
    return state.get("outcome") != SUCCESSFUL or not state.get("complete", True)


def latest_unfinished(results_root: Path) -> str | None:
    """The id of the most recently started unfinished run under ``results_root`` (None: there is none)."""
    found = []
    for run_dir in Path(results_root).glob("*/"):
        if is_unfinished(run_dir):
            state = (read_json(run_dir / MANIFEST_NAME) or {}).get("run") or {}
            found.append((str(state.get("started_at") or ""), run_dir.name))
    return max(found)[1] if found else None


def resume_run_id(results_root: Path) -> str:
    """The run id ``--resume`` / ``-e resume=true`` means, or a ValueError saying there is none."""
    run_id = latest_unfinished(results_root)
    if run_id is None:
        raise ValueError(f"no unfinished run to resume under {results_root} (a run is unfinished while its manifest.json "
                         "says it failed, was interrupted or lacks configurations); pass the run id to resume one")
    return run_id


def resume_command(words: list[str], run_id: str, flag: str) -> str:
    """``words`` (a command line) with its run id and resume options replaced by ``flag`` for ``run_id``:
    ``--resume`` for petals-netbench, ``-e`` for ansible-playbook (``-e run_id=ID``)."""
    kept, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in ("--run-id", "--resume") and nxt and not nxt.startswith("-"):
            skip = True
            continue
        if word == "--resume" or word.startswith(("--run-id=", "--resume=")):
            continue
        if word in ("-e", "--extra-vars") and nxt.split("=", 1)[0] in ("run_id", "resume"):
            skip = True
            continue
        kept.append(word)
    kept += ["--resume", run_id] if flag == "--resume" else ["-e", f"run_id={run_id}"]
    return shlex.join(kept)


# --- the estimate ------------------------------------------------------------------------------------------------

def history(results_root: Path, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """What earlier runs cost: per invocation that measured something, its model, wall time, the seconds
    of each profile's phases and the configurations it measured there (rows finished during it)."""
    samples = []
    for run_dir in sorted(Path(results_root).glob("*/")):
        if run_dir.name in set(skip):
            continue
        model = ((read_json(run_dir / MANIFEST_NAME) or {}).get("plan") or {}).get("model")
        records = list(timeline.read(run_dir / timeline.TIMELINE_NAME))
        rows = {p.parent.name: _finish_times(p) for p in run_dir.glob("*/out.jsonl")}
        for rec in records:
            if rec.get("kind") != "summary" or not model:
                continue
            ident, start, end = rec.get("invocation"), float(rec["start"]), float(rec["end"])
            per_profile: dict[str, float] = {}
            for iv in records:
                if iv.get("kind") == "interval" and iv.get("invocation") == ident and iv.get("profile"):
                    per_profile[iv["profile"]] = per_profile.get(iv["profile"], 0.0) + float(iv["seconds"])
            # finished_at has whole seconds: a row of the invocation's first second still counts
            measured = {p: sum(1 for t in rows.get(p, []) if int(start) <= t <= end + 1) for p in per_profile}
            if any(measured.values()):
                samples.append({"model": model, "wall_s": float(rec["wall_s"]), "profiles": per_profile,
                                "measured": measured})
    return samples


def _finish_times(path: Path) -> list[float]:
    times = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if row.get("status") == "ok" and row.get("finished_at"):
                times.append(datetime.fromisoformat(row["finished_at"]).timestamp())
        except (ValueError, AttributeError, TypeError):  # a cut line: the client's reader reports it
            continue
    return times


def workload_seconds(plan: dict[str, Any], profile: dict[str, Any]) -> float:
    """A guess of one configuration's seconds from the workload: each decode step crosses every server
    (a round trip of the profile's delay per hop) and streams their blocks' weights; the prompt crosses
    the profile's rate once per hop; plus a fixed cost per configuration."""
    workload = plan.get("workload") or {}
    model = get_model(str(plan["model"]))
    shaped = netem.resolve_profile(profile.get("netem")) if profile.get("netem") is not None else None
    hops = max(1, int(plan.get("num_servers") or 1))
    rtt = 2 * (shaped.delay_us if shaped else 0) / 1e6
    device = "cuda" if int(plan.get("num_gpus") or 0) > 0 else "cpu"
    step = hops * rtt + model.blocks_bytes(str(plan.get("dtype") or "float32")) / GUESS_BANDWIDTH[device]
    batch = int(workload.get("batch_size") or 1) * int(workload.get("num_processes") or 1)
    prompts = [int(p) for p in workload.get("prompt_lengths") or [0]]
    prompt_bytes = batch * statistics.mean(prompts) * model.hidden * 2  # hidden states in 16 bits
    transfer = hops * prompt_bytes * 8 / shaped.rate_bit if shaped and shaped.rate_bit else 0.0
    return GUESS_CONFIG_S + transfer + step * (1 + int(workload.get("new_tokens") or 0))


WORKLOAD = "a guess from the workload"


def _earlier(count: int) -> str:
    return f"the timelines of {count} earlier run{'s' if count > 1 else ''}"


def estimate(plan: dict[str, Any], samples: list[dict[str, Any]],
             done: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Wall time and GPU-hours of ``plan``: per profile, configurations left (planned less ``done``, a
    resumed run's) x seconds per configuration (the median over earlier invocations of the same model
    and profile: their profile phases' seconds over the configurations they measured; else
    workload_seconds, plus GUESS_PROFILE_S), plus the overhead (the median of those invocations' wall
    time outside profiles, else GUESS_OVERHEAD_S)."""
    same = [s for s in samples if s["model"] == plan.get("model")]
    planned = planned_configurations(plan)
    profiles, total = [], 0.0
    for profile in plan.get("profiles") or []:
        configs = max(0, planned - (done or {}).get(profile["name"], {}).get("done", 0))
        rates = [s["profiles"][profile["name"]] / s["measured"][profile["name"]] for s in same
                 if s["measured"].get(profile["name"])]
        if rates:
            seconds, source = configs * statistics.median(rates), _earlier(len(rates))
        else:
            seconds, source = (GUESS_PROFILE_S + configs * workload_seconds(plan, profile)) if configs else 0.0, WORKLOAD
        profiles.append({"name": profile["name"], "configurations": configs, "seconds": round(seconds, 1),
                         "source": source})
        total += seconds
    overheads = [s["wall_s"] - sum(s["profiles"].values()) for s in same]
    overhead = statistics.median(overheads) if overheads else GUESS_OVERHEAD_S
    wall = overhead + total
    return {"wall_s": round(wall, 1), "overhead_s": round(overhead, 1),
            "overhead_source": _earlier(len(overheads)) if overheads else WORKLOAD,
            "gpu_hours": round(wall * int(plan.get("num_gpus") or 0) / 3600, 3), "profiles": profiles,
            "configurations": sum(p["configurations"] for p in profiles)}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _shaping(describe: dict[str, Any] | None) -> str:
    if not describe:
        return "no shaping"
    parts = [f"{describe[k]:g} {unit}" for k, unit in (("delay_ms", "ms"), ("jitter_ms", "ms jitter"),
                                                       ("rate_mbit", "Mbit/s"), ("loss_pct", "% loss")) if describe.get(k)]
    return ", ".join(parts) or "no limits"


def format_plan(plan: dict[str, Any], hosts: dict[str, Any] | None = None) -> str:
    """The plan as the pre-flight prints it: hosts, GPUs, servers and spans, cache, memory, profiles,
    configurations, and the estimate (``plan['estimate']``) where it has one."""
    hosts = hosts or {}
    workload = plan.get("workload") or {}
    memory = plan.get("memory") or {}
    lines = [f"plan of run {plan.get('run_id')}: {plan.get('model')} in {plan.get('dtype')}, {plan.get('layers')} blocks, "
             f"systems {', '.join(plan.get('systems') or ['petals'])}"]
    groups = plan.get("groups") or {}
    for name in sorted({h for members in groups.values() for h in members}):
        info = hosts.get(name) or {}
        roles = [g for g in ("dht", "servers", "clients") if name in groups.get(g, [])]
        gpus = info.get("gpus_mib") or []
        gpu_text = f"{len(gpus)} GPU(s) ({', '.join(f'{m / 1024:.0f} GiB' for m in gpus)})" if gpus else "no GPU"
        lines.append(f"  host {name} ({', '.join(roles)}): {info.get('address', '?')}, {info.get('device', 'cpu')}, "
                     f"{gpu_text}, {int(info.get('mem_kb') or 0) / 2**20:.0f} GiB RAM")
    for server in plan.get("servers") or []:
        lines.append(f"  server {server['host']}/{server['name']}: blocks {server['span']} on {server['device']}, "
                     f"port {server['port'] or 'any'}")
    lines.append(f"  {plan.get('num_servers')} server(s) on {plan.get('num_gpus')} GPU(s); attention cache "
                 f"{plan.get('attn_cache_tokens')} tokens per server")
    if memory:
        lines.append(f"  memory: the blocks need {memory.get('needed_gb')} GB of the servers' {memory.get('available_gb')} GB "
                     f"(headroom {round(float(memory.get('available_gb', 0)) - float(memory.get('needed_gb', 0)), 2)} GB)")
    for gpu in plan.get("gpu_memory") or []:  # blocks, attention caches, CUDA contexts, the client's processes
        lines.append(f"  {gpu['host']} GPU {gpu['gpu']}: {gpu['servers']} server(s) use {gpu['needed_bytes'] / 1e9:.1f} of "
                     f"{gpu['capacity_bytes'] / 1e9:.1f} GB (headroom {(gpu['capacity_bytes'] - gpu['needed_bytes']) / 1e9:.1f} GB)")
    lines.append(f"  workload: batch {workload.get('batch_size')} x {workload.get('num_processes')} processes, prompts "
                 f"{workload.get('prompt_lengths')}, {workload.get('new_tokens')} new tokens, token sweep "
                 f"{workload.get('token_sweep')}, repeats {workload.get('repeats', 1)}")
    est = plan.get("estimate") or {}
    by_name = {p["name"]: p for p in est.get("profiles") or []}
    for profile in plan.get("profiles") or []:
        part = by_name.get(profile["name"])
        cost = f": {_count(part['configurations'], 'configuration')}, ~{_duration(part['seconds'])} from {part['source']}" if part else ""
        lines.append(f"  profile {profile['name']} ({_shaping(profile.get('describe'))}){cost}")
    if est:
        lines.append(f"  estimate: ~{_duration(est['wall_s'])} wall ({_count(est['configurations'], 'configuration')}, overhead "
                     f"~{_duration(est['overhead_s'])} from {est['overhead_source']}), {est['gpu_hours']} GPU-hours")
    return "\n".join(lines)
