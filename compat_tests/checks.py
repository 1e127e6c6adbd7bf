"""The strict check of one selected `.t` line against bpf-iptables.

Per chain of the line (upstream's order; the first failing chain decides):
- OK: ``-A CHAIN RULE`` succeeds; ``-S CHAIN`` then shows exactly one rule,
  ``-A CHAIN SAVE``; bpf-iptables-save prints that same line; ``-C CHAIN
  RULE`` and ``-D CHAIN RULE`` succeed and the chain is empty again.
- NOMATCH: accepted, but printed as something other than ``-A CHAIN SAVE``
  (and absent from the save output); ``-D`` still removes it.
- FAIL: ``-A`` fails with the exit status iptables-legacy gives for the same
  command, and ``-S`` is the same before and after.
- REFUSED: ``-A`` fails with exit 2 saying "not supported"; nothing changes.

A namespace is made per file and reused across its lines; the table is
flushed before each line (and the file's preceding setup commands replayed)
so that one failing line cannot spoil the next.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.compare import normalize
from tests.support.netns import Result

from .executor import NetnsSession, save_available
from .oracle import LegacyOracle, replay_setup
from .selection import Expect, SelectedLine
from .tfile import TestLine


@dataclass
class LineOutcome:
    selected: SelectedLine
    failures: list[str] = field(default_factory=list)
    # Informational, not part of the verdict: differences beyond what the
    # .t files specify (e.g. a FAIL line's message versus iptables-legacy's).
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class CheckFailed(Exception):
    pass


def _brief(result: Result) -> str:
    return _first_line(result.stderr or result.stdout)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "(no output)"


def _rule_lines(listing: str) -> list[str]:
    return [l for l in listing.splitlines() if l.startswith("-A ")]


class FileSession:
    """bpf-iptables' namespace (and the oracle's) for one .t file."""

    def __init__(self, file: str, use_save: bool | None = None):
        self.file = file
        self.use_save = save_available() if use_save is None else use_save
        self.netns = NetnsSession("bpfc")
        self.oracle = LegacyOracle()
        self._notes: list[str] = []

    def close(self) -> None:
        try:
            self.netns.close()
        finally:
            self.oracle.close()

    # -- helpers ---------------------------------------------------------
    def bpf(self, *args: str) -> Result:
        return self.netns.bpf_iptables(*args)

    def saved_lines(self, table: str) -> tuple[list[str], str]:
        """The lines of the save output (or of ``-S`` until save exists), and
        which of the two it was, for messages."""
        if self.use_save:
            # Upstream's runner dumps everything with a bare iptables-save.
            result = self.netns.bpf_save()
            what = "bpf-iptables-save"
        else:
            result = self.bpf("-t", table, "-S")
            what = "-S (bpf-iptables-save missing)"
        if result.returncode != 0:
            raise CheckFailed(f"{what} exited {result.returncode}: {_brief(result)}")
        return result.stdout.splitlines(), what

    def prepare(self, line: TestLine) -> None:
        result = self.bpf("-t", line.table_name, "-F")
        if result.returncode != 0:
            raise CheckFailed(f"-F exited {result.returncode}: {_brief(result)}")
        replay_setup(line.setup, self.bpf, self.netns.ns.run)

    # -- the check -------------------------------------------------------
    def check(self, selected: SelectedLine) -> LineOutcome:
        outcome = LineOutcome(selected)
        self._notes = outcome.notes
        line = selected.line
        try:
            self.prepare(line)
            for chain in line.chains:
                self._check_chain(selected, chain)
        except CheckFailed as exc:
            outcome.failures.append(str(exc))
        except (RuntimeError, OSError, ValueError) as exc:
            # e.g. the fork server died: this line's result is unknown, so it
            # does not pass, and the reason says it is the harness's fault.
            outcome.failures.append(f"harness error: {exc!r}")
        return outcome

    def _check_chain(self, selected: SelectedLine, chain: str) -> None:
        line = selected.line
        # Upstream passes -t only when the file names a table.
        table_args = ["-t", line.table] if line.table else []
        spec = [chain, *table_args, *line.rule_argv]
        try:
            if selected.expect in (Expect.OK, Expect.NOMATCH):
                self._check_accepted(selected, chain, spec, table_args)
            else:
                self._check_rejected(selected, chain, spec)
        except CheckFailed as exc:
            raise CheckFailed(f"{chain}: {exc}") from None

    def _listing(self, table_args: list[str], chain: str) -> list[str]:
        result = self.bpf(*table_args, "-S", chain)
        if result.returncode != 0:
            raise CheckFailed(f"-S {chain} exited {result.returncode}: {_brief(result)}")
        return _rule_lines(result.stdout)

    def _check_accepted(self, selected: SelectedLine, chain: str, spec: list[str],
                        table_args: list[str]) -> None:
        line = selected.line
        expected = line.expected_save_line(chain)
        appended = self.bpf("-A", *spec)
        if appended.returncode != 0:
            raise CheckFailed(f"-A exited {appended.returncode}: {_brief(appended)}")
        printed = self._listing(table_args, chain)
        saved, save_tool = self.saved_lines(line.table_name)
        if selected.expect is Expect.OK:
            if printed != [expected]:
                raise CheckFailed(f"-S printed {printed!r}, expected [{expected!r}]")
            if expected not in saved:
                raise CheckFailed(f"{save_tool} lacks {expected!r}; its rules: {_rule_lines(chr(10).join(saved))!r}")
            checked = self.bpf("-C", *spec)
            if checked.returncode != 0:
                raise CheckFailed(f"-C exited {checked.returncode}: {_brief(checked)}")
        else:
            if len(printed) != 1 or printed[0] == expected:
                raise CheckFailed(f"-S printed {printed!r}, expected one rule other than {expected!r}")
            if expected in saved:
                raise CheckFailed(f"{save_tool} prints {expected!r}, which NOMATCH rules out")
        deleted = self.bpf("-D", *spec)
        if deleted.returncode != 0:
            raise CheckFailed(f"-D exited {deleted.returncode}: {_brief(deleted)}")
        left = self._listing(table_args, chain)
        if left:
            raise CheckFailed(f"-D left {left!r} in the chain")

    def _check_rejected(self, selected: SelectedLine, chain: str, spec: list[str]) -> None:
        line = selected.line
        before = self.bpf("-t", line.table_name, "-S")
        appended = self.bpf("-A", *spec)
        if selected.expect is Expect.REFUSED:
            if appended.returncode != 2 or "not supported" not in appended.stderr:
                raise CheckFailed(
                    f"uses {', '.join(selected.foreign)}: expected exit 2 \"not supported\", "
                    f"got exit {appended.returncode}: {_brief(appended)}")
        else:
            oracle = self.oracle.append(line, chain, ["-A", *spec])
            if oracle.returncode == 0:
                raise CheckFailed("iptables-legacy accepts this FAIL line on this machine; "
                                  "the expectation cannot be checked")
            legacy = f"iptables-legacy exits {oracle.returncode}: {_first_line(oracle.stderr)}"
            if appended.returncode == 0:
                raise CheckFailed(f"accepted, but {legacy}")
            if appended.returncode != oracle.returncode:
                raise CheckFailed(f"-A exited {appended.returncode} ({_brief(appended)}), {legacy}")
            if normalize(appended.stderr) != normalize(oracle.stderr):
                self._notes.append(f"{chain}: message {_brief(appended)!r} differs from "
                                   f"iptables-legacy's {_first_line(oracle.stderr)!r}")
        after = self.bpf("-t", line.table_name, "-S")
        if (after.returncode, after.stdout) != (before.returncode, before.stdout):
            raise CheckFailed(f"the rejected -A changed the rule set: {_rule_lines(after.stdout)!r}")


# Upstream's fast mode loads a file's OK rules in one iptables-restore, in
# this chain order, and expects the dump to list them as SAVE says.
RESTORE_CHAIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def restore_batch(lines: list[SelectedLine]) -> tuple[str, list[str]]:
    """(iptables-restore input, expected rule lines) for a file's OK lines."""
    per_chain: dict[str, list[tuple[str, str]]] = {}
    table = "filter"
    for selected in lines:
        line = selected.line
        table = line.table_name
        for chain in line.chains:
            per_chain.setdefault(chain, []).append(
                (f"-A {chain} {line.rule}", line.expected_save_line(chain)))
    data, expected = [f"*{table}"], []
    for chain in RESTORE_CHAIN_ORDER:
        for rule, saved in per_chain.get(chain, []):
            data.append(rule)
            expected.append(saved)
    data.append("COMMIT")
    return "\n".join(data) + "\n", expected


def restore_eligible(lines: list[SelectedLine]) -> list[SelectedLine]:
    """OK lines of a file upstream would run in fast mode (no setup
    commands, no variant-scoped results, one table)."""
    if any(s.line.setup or s.line.variant or s.line.table for s in lines):
        return []
    return [s for s in lines if s.expect is Expect.OK]


def check_restore(session: FileSession, lines: list[SelectedLine]) -> list[str]:
    """Upstream's fast mode for one file; returns the failures (none: pass)."""
    eligible = restore_eligible(lines)
    if not eligible:
        return []
    data, expected = restore_batch(eligible)
    try:
        session.prepare(eligible[0].line)
        restored = session.netns.bpf_restore(input=data)
        if restored.returncode != 0:
            return [f"restore exited {restored.returncode}: {_brief(restored)}"]
        saved, tool = session.saved_lines("filter")
        got = _rule_lines("\n".join(saved))
        if got != expected:
            missing = [l for l in expected if l not in got]
            extra = [l for l in got if l not in expected]
            return [f"{tool} after restore differs: missing {missing!r}, unexpected {extra!r}"
                    + ("" if missing or extra else " (order differs)")]
        session.prepare(eligible[0].line)
    except CheckFailed as exc:
        return [str(exc)]
    return []
