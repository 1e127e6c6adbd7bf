"""Summary run of the compatibility suite: ``python -m compat_tests.runner``.

Prints per-file pass/fail counts, the overall pass rate against the
project's acceptance bar (98 % of the selected lines), and every failing
line with its reason.  The pytest module ``test_iptables_t`` runs the same
checks, one test per line.

Options: ``-v`` also lists the exclusions; file names (``libxt_udp.t``)
restrict the run to those files; ``--refusals`` instead checks that the
lines of the excluded files which iptables accepts are refused as "not
supported" (not part of the pass rate).  Exit status 0 when the bar is met, 1 if
not, 2 when the test files cannot be found.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

from .checks import FileSession, LineOutcome, check_restore, restore_eligible
from .executor import exec_mode, save_available
from .selection import SelectedLine, Selection, TestsDirMissing, refusal_lines, select

ACCEPTANCE_BAR = 0.98


class SessionPool:
    """One FileSession open at a time: lines arrive grouped by file, so a
    file's namespace is made when its first line comes and deleted when the
    next file starts (or at close)."""

    def __init__(self) -> None:
        self._current: FileSession | None = None

    def session(self, file: str) -> FileSession:
        if self._current is not None and self._current.file != file:
            self.close()
        if self._current is None:
            self._current = FileSession(file)
        return self._current

    def check(self, selected: SelectedLine) -> LineOutcome:
        return self.session(selected.line.file).check(selected)

    def close(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            current.close()


def run_lines(lines: Iterable[SelectedLine]) -> Iterator[LineOutcome]:
    pool = SessionPool()
    try:
        for selected in lines:
            yield pool.check(selected)
    finally:
        pool.close()


@dataclass
class FileCounts:
    passed: int = 0
    failed: int = 0


def summarise(selection: Selection, outcomes: list[LineOutcome], verbose: bool, out=sys.stdout) -> bool:
    per_file: "OrderedDict[str, FileCounts]" = OrderedDict()
    for outcome in outcomes:
        counts = per_file.setdefault(outcome.selected.line.file, FileCounts())
        if outcome.passed:
            counts.passed += 1
        else:
            counts.failed += 1
    width = max((len(f) for f in per_file), default=10)
    print(f"iptables .t files: {selection.tests_dir}", file=out)
    mode = exec_mode()
    save_tool = ("iptables-legacy-save" if mode == "legacy" else
                 "bpf-iptables-save" if save_available() else "-S (bpf-iptables-save missing)")
    under_test = "iptables-legacy (harness self-check)" if mode == "legacy" else f"bpf-iptables ({mode})"
    print(f"under test: {under_test}; save check via {save_tool}\n", file=out)
    print(f"{'file':<{width}}  pass  fail", file=out)
    for name, counts in per_file.items():
        print(f"{name:<{width}}  {counts.passed:>4}  {counts.failed:>4}", file=out)
    total = len(outcomes)
    passed = sum(1 for o in outcomes if o.passed)
    rate = passed / total if total else 0.0
    met = rate >= ACCEPTANCE_BAR
    print(f"\ntotal: {passed}/{total} lines pass ({rate:.1%}); acceptance bar "
          f"{ACCEPTANCE_BAR:.0%} {'met' if met else 'NOT met'}", file=out)
    failures = [o for o in outcomes if not o.passed]
    if failures:
        print(f"\nfailures ({len(failures)}):", file=out)
        for o in failures:
            line = o.selected.line
            print(f"  {line.test_id} [{o.selected.expect.value}] {line.rule}", file=out)
            for reason in o.failures:
                print(f"      {reason}", file=out)
    noted = [o for o in outcomes if o.notes]
    if noted:
        print(f"\nnotes on passing or failing lines, not counted ({len(noted)}):", file=out)
        for o in noted:
            print(f"  {o.selected.line.test_id} {o.selected.line.rule}", file=out)
            for note in o.notes:
                print(f"      {note}", file=out)
    if verbose:
        print(f"\nexcluded ({len(selection.excluded)}):", file=out)
        for ex in selection.excluded:
            print(f"  {ex.what}: {ex.reason}", file=out)
    return met


def summarise_restore(lines: list[SelectedLine], out=sys.stdout) -> None:
    """Upstream's fast mode per file (not part of the pass rate)."""
    files = list(dict.fromkeys(s.line.file for s in lines))
    failed: list[tuple[str, list[str]]] = []
    checked = 0
    for name in files:
        of_file = [s for s in lines if s.line.file == name]
        if not restore_eligible(of_file):
            continue
        session = FileSession(name)
        try:
            failures = check_restore(session, of_file)
        finally:
            session.close()
        checked += 1
        if failures:
            failed.append((name, failures))
    print(f"\nrestore of each file's OK lines at once (upstream fast mode, not counted): "
          f"{checked - len(failed)}/{checked} files pass", file=out)
    for name, failures in failed:
        for reason in failures:
            print(f"  {name}: {reason}", file=out)


def run_refusals(lines: list[SelectedLine], files: list[str]) -> int:
    """Out-of-scope lines iptables accepts: each must be refused (exit 2)."""
    lines = [s for s in lines if not files or s.line.file in files]
    outcomes = list(run_lines(lines))
    refused = [o for o in outcomes if o.passed]
    print(f"out-of-scope lines refused as not supported: {len(refused)}/{len(outcomes)}")
    for o in outcomes:
        if not o.passed:
            print(f"  {o.selected.line.test_id} {o.selected.line.rule}")
            for reason in o.failures:
                print(f"      {reason}")
    return 0 if len(refused) == len(outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat_tests.runner")
    parser.add_argument("files", nargs="*", help="only these .t files (by name)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list exclusions")
    parser.add_argument("--refusals", action="store_true",
                        help="instead check that the excluded files' accepted lines are refused")
    args = parser.parse_args(argv)
    try:
        selection = select()
        if args.refusals:
            return run_refusals(refusal_lines(selection.tests_dir), args.files)
    except TestsDirMissing as exc:
        print(f"compat_tests: {exc}", file=sys.stderr)
        return 2
    lines = [s for s in selection.lines if not args.files or s.line.file in args.files]
    start = time.monotonic()
    outcomes = list(run_lines(lines))
    met = summarise(selection, outcomes, args.verbose)
    summarise_restore(lines)
    print(f"\n({time.monotonic() - start:.1f}s)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
