"""The bad-input table (docs/bad-inputs.md) is complete and agrees with the tests that check each row;
the refusals no other test covers (launchers, swarm CLI) are run here for real."""

from __future__ import annotations

import re

import pytest

import make_bad_input_table as table


def documented_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in table.DOC.read_text().splitlines():
        match = re.match(r"^\| `(.+?)` \| `.*?` \| (\d+) \| (.*) \| \S+ \|$", line)
        if match:
            rows[match.group(1).replace("\\|", "|")] = (match.group(2), match.group(3).replace("\\|", "|"))
    return rows


def test_table_lists_every_case_with_its_message():
    rows = documented_rows()
    cases = table.all_cases(ansible=True)
    assert len({c.key for c in cases}) == len(cases), "case ids must be unique"
    missing = [c.key for c in cases if c.key not in rows]
    assert not missing, f"regenerate docs/bad-inputs.md (tests/make_bad_input_table.py): missing {missing}"
    stale = sorted(set(rows) - {c.key for c in cases})
    assert not stale, f"rows without a case (regenerate the table): {stale}"
    for case in cases:
        code, message = rows[case.key]
        assert code != "0", f"{case.key} was not refused"
        assert case.expected in message, f"{case.key}: {case.expected!r} not in the documented {message!r}"


@pytest.mark.parametrize("case", table.own_cli_cases(), ids=lambda c: c.key)
def test_launchers_refuse(case, tmp_path):
    code, message = case.run(tmp_path)
    assert code != 0 and case.expected in message, (code, message)
    assert message.startswith(("error:", "python -m")), message  # one line, says it is an error
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing may be written on bad input"
