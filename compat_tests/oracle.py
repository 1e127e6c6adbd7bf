"""iptables-legacy as the oracle for the exit code of FAIL lines.

The .t files say only that such a line must be rejected; iptables also says
how (2 for a bad command line, 1 when the kernel refuses the rule, ...), and
bpf-iptables must give the same status.  The real iptables-legacy is run
once per (line, chain), at test time, in a private namespace of its own;
it is never the thing under test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tests.support.netns import Result

from .executor import NetnsSession
from .tfile import SetupCommand, TestLine


@dataclass(frozen=True)
class OracleAnswer:
    returncode: int
    stderr: str


class LegacyOracle:
    """Lazily creates its namespace: most files have few FAIL lines."""

    def __init__(self) -> None:
        self._session: NetnsSession | None = None
        self._cache: dict[tuple[str, int, str, tuple[str, ...]], OracleAnswer] = {}

    def _ns(self) -> NetnsSession:
        if self._session is None:
            self._session = NetnsSession("bpfo", with_bpf=False)
        return self._session

    def legacy(self, *args: str) -> Result:
        return self._ns().ns.iptables(*args)

    def append(self, line: TestLine, chain: str, argv: list[str]) -> OracleAnswer:
        key = (str(line.path), line.lineno, chain, tuple(argv))
        if key not in self._cache:
            table = line.table_name
            self.legacy("-t", table, "-F")
            replay_setup(line.setup, lambda *a: self.legacy(*a), self._ns().ns.run)
            result = self.legacy(*argv)
            self._cache[key] = OracleAnswer(result.returncode, result.stderr)
            self.legacy("-t", table, "-F")
        return self._cache[key]

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def replay_setup(setup: tuple[SetupCommand, ...], iptables: Callable[..., Result],
                 other: Callable[[list[str]], Result]) -> None:
    """Run a line's preceding ``@``/``%`` commands, ignoring their outcome
    as upstream does.  iptables commands go to the iptables under test
    (``iptables(*args)``), anything else runs as is (``other(argv)``)."""
    for command in setup:
        argv = command.argv
        if command.is_iptables:
            iptables(*argv[1:])
        else:
            other(argv)
