"""Out-of-scope lines of iptables' .t files that bpf-iptables must refuse.

The excluded files test extensions bpf-iptables does not support.  Where
iptables-legacy accepts such a line in the filter table, bpf-iptables must
refuse it with exit 2 "... is not supported" and leave the rule set as it
was, never accept and ignore it.  These tests are not part of the pass rate
of test_iptables_t.py (see compat_tests.selection.refusal_lines)."""
from __future__ import annotations

from typing import Iterator

import pytest

from compat_tests.runner import SessionPool
from compat_tests.selection import SelectedLine, refusal_lines

LINES = refusal_lines()


@pytest.fixture(scope="module")
def pool() -> Iterator[SessionPool]:
    sessions = SessionPool()
    try:
        yield sessions
    finally:
        sessions.close()


@pytest.mark.parametrize("selected", LINES, ids=[s.test_id for s in LINES])
def test_refused(pool: SessionPool, selected: SelectedLine) -> None:
    outcome = pool.check(selected)
    assert outcome.passed, f"{selected.line.rule!r}: " + "; ".join(outcome.failures)
