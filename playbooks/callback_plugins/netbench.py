"""Ansible's default output, with the sweep's own progress line in place of "FAILED - RETRYING".

The bench_client role polls the running sweep in a retry loop; each look carries the client's latest
``[i/N ... ETA]`` line (bench_client.core.progress). This prints that line when it changes, and nothing
for the looks in between; every other retry and every other event is the default callback's.
"""

from __future__ import annotations

from ansible.plugins.callback.default import CallbackModule as DefaultCallback

try:
    from bench_client.core.progress import from_result
except ImportError:  # bench_client not importable by this ansible-playbook: plain default output
    from_result = None

DOCUMENTATION = """
    name: netbench
    type: stdout
    short_description: default output, with the benchmark sweep's progress line while it runs
    description:
        - The default stdout callback; retries of the bench_client role's wait print the client's own progress line.
    extends_documentation_fragment:
      - default_callback
      - result_format_callback
    requirements:
      - set as stdout callback in ansible.cfg
"""


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "netbench"

    def __init__(self) -> None:
        super().__init__()
        self._netbench_last: dict[str, str] = {}

    def _netbench_sweep_line(self, result) -> bool:
        """Show the sweep's progress line (when it changed) if this result carries one."""
        line = from_result(result._result) if from_result else None
        if line is None:
            return False
        host = result._host.get_name()
        if self._netbench_last.get(host) != line:
            self._netbench_last[host] = line
            self._display.display(f"sweep [{host}]: {line}", color="cyan")
        return True

    def v2_runner_retry(self, result) -> None:
        if not self._netbench_sweep_line(result):
            super().v2_runner_retry(result)

    def v2_runner_on_ok(self, result) -> None:
        # the wait's last look: the sweep may have ended between two looks, with no retry to show its line
        self._netbench_sweep_line(result)
        super().v2_runner_on_ok(result)
