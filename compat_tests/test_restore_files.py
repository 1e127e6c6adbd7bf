"""Upstream's "fast mode", per in-scope .t file: all OK lines of the file
loaded with one bpf-iptables-restore must be dumped by bpf-iptables-save
exactly as their SAVE fields say, in order.  Complements the per-line tests
of test_iptables_t.py (it is not part of their pass rate)."""
from __future__ import annotations

import pytest

from compat_tests.checks import FileSession, check_restore, restore_eligible
from compat_tests.selection import select

SELECTION = select()
BY_FILE = {f: [s for s in SELECTION.lines if s.line.file == f] for f in SELECTION.files()}
FILES = [f for f, lines in BY_FILE.items() if restore_eligible(lines)]


@pytest.mark.parametrize("file", FILES)
def test_restore_file(file: str) -> None:
    session = FileSession(file)
    try:
        failures = check_restore(session, BY_FILE[file])
    finally:
        session.close()
    assert not failures, "; ".join(failures)
