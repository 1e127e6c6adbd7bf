"""iptables' own .t extension tests, run strictly against bpf-iptables.

One test per selected line (id ``file:lineno``), so the pass rate shows in
pytest's summary; ``python -m compat_tests.runner`` prints the same as a
per-file table.  What is selected and why: :mod:`compat_tests.selection`;
what each line must do: :mod:`compat_tests.checks`.  Nothing is skipped or
xfailed: a line out of scope is not selected at all.

The .t files are read from ``<repo>/../shared/iptables-tests`` (or
``$BPF_IPTABLES_TESTS_DIR``); collection fails loudly if they are missing.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from compat_tests.runner import SessionPool
from compat_tests.selection import SelectedLine, select

SELECTION = select()


@pytest.fixture(scope="module")
def pool() -> Iterator[SessionPool]:
    """Namespaces: one per .t file, made when its first line runs."""
    sessions = SessionPool()
    try:
        yield sessions
    finally:
        sessions.close()


@pytest.mark.parametrize("selected", SELECTION.lines, ids=[s.test_id for s in SELECTION.lines])
def test_line(pool: SessionPool, selected: SelectedLine) -> None:
    outcome = pool.check(selected)
    assert outcome.passed, f"{selected.line.rule!r} [{selected.expect.value}]: " + "; ".join(outcome.failures)
