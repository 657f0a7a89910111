"""Test-only Ansible callback: every task result as one JSON line in $NETBENCH_RECORD.

The tests read what a check-mode run would have done (module arguments, diffs) from it, instead
of parsing the human output. Enabled with ANSIBLE_CALLBACKS_ENABLED=record_results.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: record_results
    type: aggregate
    short_description: task results as JSON lines (tests only)
    description: Appends one JSON object per task result to the file named by NETBENCH_RECORD.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, status: str, result) -> None:
        path = os.environ.get("NETBENCH_RECORD")
        if not path:
            return
        line = {"status": status, "host": result._host.get_name(), "task": result._task.get_name(),
                "action": result._task.action, "args": result._task.args, "result": result._result}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result) -> None:
        self._record("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result) -> None:
        self._record("skipped", result)
