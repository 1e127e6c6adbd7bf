"""Run the same command with real iptables-legacy and with bpf-iptables.

Each tool gets its own fresh network namespace, so both start from an empty
filter table and see exactly the same sequence of commands. Results are
compared after ``normalize()`` (only the program name/version may differ).

    with pair() as p:
        p.assert_same("-A", "INPUT", "-p", "udp", "--dport", "53")
        real, ours = p.both("-S")
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

from .compare import normalize
from .netns import Namespace, Result, bpf_command, namespace

# Real tool for each of our CLIs.
REAL_TOOLS = {
    "iptables": "iptables-legacy",
    "iptables-save": "iptables-legacy-save",
    "iptables-restore": "iptables-legacy-restore",
}


@dataclass(frozen=True)
class Outcome:
    """A normalised result, comparable with ``==``."""

    stdout: str
    stderr: str
    returncode: int

    @classmethod
    def of(cls, result: Result) -> "Outcome":
        return cls(normalize(result.stdout), normalize(result.stderr), result.returncode)

    def __str__(self) -> str:
        return f"rc={self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@dataclass
class Pair:
    real: Namespace
    ours: Namespace

    def both(self, *args: str, tool: str = "iptables",
             input: str | None = None) -> tuple[Outcome, Outcome]:
        """Run ``tool args`` in both namespaces: (real, ours), normalised."""
        real = self.real.run([REAL_TOOLS[tool], *args], input=input)
        ours = self.ours.run(bpf_command(tool, *args), input=input)
        return Outcome.of(real), Outcome.of(ours)

    def differs(self, *args: str, tool: str = "iptables",
                input: str | None = None) -> str | None:
        """None when both tools agree, else a readable description."""
        real, ours = self.both(*args, tool=tool, input=input)
        if real == ours:
            return None
        return f"$ {tool} {' '.join(args)}\n=== iptables-legacy\n{real}\n=== bpf-iptables\n{ours}"

    def assert_same(self, *args: str, tool: str = "iptables",
                    input: str | None = None) -> Outcome:
        """Run in both, assert identical results, return the real one."""
        real, ours = self.both(*args, tool=tool, input=input)
        assert real == ours, (f"$ {tool} {' '.join(args)}\n=== iptables-legacy\n{real}\n"
                              f"=== bpf-iptables\n{ours}")
        return real

    def reset(self) -> None:
        """Flush all rules, delete user chains, ACCEPT policies, zero counters."""
        for args in (("-F",), ("-X",), ("-Z",), ("-P", "INPUT", "ACCEPT"),
                     ("-P", "FORWARD", "ACCEPT"), ("-P", "OUTPUT", "ACCEPT")):
            self.assert_same(*args)


@contextmanager
def pair(prefix: str = "bpfp") -> Iterator[Pair]:
    """Two fresh namespaces: one for iptables-legacy, one for bpf-iptables."""
    with ExitStack() as stack:
        real = stack.enter_context(namespace(prefix + "r"))
        ours = stack.enter_context(namespace(prefix + "o"))
        yield Pair(real, ours)
