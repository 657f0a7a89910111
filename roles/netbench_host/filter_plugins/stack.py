"""Thin Jinja filters over bench_client.orchestration.stack (pure, unit-tested) for the netbench_host role.

The bridge's convention (as roles/netem/filter_plugins/netem.py): plugins of the role that uses them,
importing the package installed in ansible-playbook's Python, plain data in and out, the package's
one-line errors as the task's.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from bench_client.orchestration import stack


def netbench_torch_index(choice: str, driver_cuda: str, builds: list, base: str) -> str:
    try:
        return stack.torch_index(str(choice), str(driver_cuda or ""), [str(b) for b in builds], str(base))
    except stack.StackError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def netbench_stack_requirements(pyproject: str) -> list[str]:
    try:
        return stack.requirements(pyproject)
    except (OSError, stack.StackError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self):
        return {"netbench_torch_index": netbench_torch_index, "netbench_stack_requirements": netbench_stack_requirements}
