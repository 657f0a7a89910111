"""Action plugin netbench_plan: the experiment's plan, computed by bench_client.orchestration.plan.

The one bridge from the roles to the package on the controller: the task's arguments are the plan
input (the dict ``python -m bench_client.orchestration.plan --json`` takes), the result's ``plan`` is
the plan (JSON in, JSON out), and a refusal fails the task with the plan's own one-line message.
It adds ``variables``: each play host's value of every variable bench_client.orchestration.variables
checks, where the user set one.
An action plugin runs in ansible-playbook's process, on no host, so bench_client must be importable
there (bench_client/install.sh installs the controller so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False  # pure computation on the controller

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        try:
            from bench_client.orchestration import plan, runs
        except ImportError as exc:
            raise AnsibleActionFail(
                f"bench_client is not importable by ansible-playbook's Python ({sys.executable}): {exc}; "
                "install the controller (bash bench_client/install.sh) or put the checkout on PYTHONPATH") from exc
        from bench_client.orchestration.variables import VARIABLES

        # every -e variable the plan knows that the user set for a host (extra vars, inventory; hostvars
        # hold no role defaults, which are ours), templated as the roles will see it
        hostvars = (task_vars or {}).get("hostvars") or {}
        hosts = (task_vars or {}).get("ansible_play_hosts") or []
        variables = {host: {name: hostvars[host][name] for name in VARIABLES if name in hostvars[host]} for host in hosts}
        # plain JSON types, exactly what the command line would parse (templated args may be tagged)
        config = json.loads(json.dumps({**self._task.args, "variables": variables}, cls=AnsibleJSONEncoder))
        # --ask-become-pass gives a become password that no variable shows: every host may become root
        if getattr(self._play_context, "become_pass", None):
            for host in (config.get("hosts") or {}).values():
                if isinstance(host, dict):
                    host["become_password"] = True
        # not the plan's input: where resume looks and the estimate reads earlier timelines (controller only)
        results_root = Path(str(config.pop("results_dir", None) or "results"))
        resume = str(config.pop("resume", False)).strip().lower() in ("true", "yes", "1", "on")
        try:
            if resume and not config.get("run_id"):
                config["run_id"] = runs.resume_run_id(results_root)
            result["plan"] = plan.run_plan(config)
        except ValueError as exc:  # a PlanError, or no unfinished run to resume
            result.update(failed=True, msg=str(exc))
            return result
        found = result["plan"]
        # a resumed run is estimated for what it still lacks; its own timeline is not history
        done = runs.configurations_done(results_root / found["run_id"], found)
        found["estimate"] = runs.estimate(found, runs.history(results_root, skip=[found["run_id"]]), done)
        result["plan_text"] = runs.format_plan(found, config.get("hosts"))
        result["changed"] = False
        return result
