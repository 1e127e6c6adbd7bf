"""Run the same command with real iptables-legacy and with bpf-iptables.

Each tool gets its own fresh network namespace, so both start from an empty
filter table and see exactly the same sequence of commands. Results are
compared after ``normalize()`` (only the program name/version may differ).

    with pair() as p:
        p.assert_same("-A", "INPUT", "-p", "udp", "--dport", "53")
        real, ours = p.both("-S")

``pair(fast=True)`` runs our side through the fork server of
``compat_tests.forkserver`` (the package imported once, one forked child per
command, run exactly as ``python -m``): the same results, ~10x quicker on a
busy machine. Both sides of a command run concurrently either way.
"""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from .compare import normalize
from .netns import REPO, Namespace, Result, bpf_command, namespace

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
    # optional fast runner for our side (compat_tests.executor.ForkServerRunner)
    runner: Any = None
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def both(self, *args: str, tool: str = "iptables",
             input: str | None = None) -> tuple[Outcome, Outcome]:
        """Run ``tool args`` in both namespaces: (real, ours), normalised."""
        real = self._pool.submit(run_bytes_safe, self.real, [REAL_TOOLS[tool], *args], input)
        if self.runner is not None and input is None and tool in ("iptables", "iptables-save"):
            ours = self.runner.run(tool, *args)
        else:
            ours = run_bytes_safe(self.ours, bpf_command(tool, *args), input)
        return Outcome.of(real.result()), Outcome.of(ours)

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


def run_bytes_safe(ns: Namespace, argv: list[str], input: str | None = None,
                   timeout: float = 60) -> Result:
    """``Namespace.run`` for output that need not be UTF-8 (a comment cut
    inside a multi-byte character): bytes that do not decode become
    surrogates, as in the fork server, so both sides compare alike."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO))
    env["LC_ALL"] = "C"
    proc = subprocess.run(["ip", "netns", "exec", ns.name, *argv],
                          input=None if input is None else input.encode("utf-8", "surrogateescape"),
                          capture_output=True, timeout=timeout, env=env)
    return Result(proc.stdout.decode("utf-8", "surrogateescape"),
                  proc.stderr.decode("utf-8", "surrogateescape"), proc.returncode)


@contextmanager
def pair(prefix: str = "bpfp", fast: bool = False) -> Iterator[Pair]:
    """Two fresh namespaces: one for iptables-legacy, one for bpf-iptables."""
    with ExitStack() as stack:
        real = stack.enter_context(namespace(prefix + "r"))
        ours = stack.enter_context(namespace(prefix + "o"))
        runner = None
        if fast:
            from compat_tests.executor import ForkServerRunner

            runner = ForkServerRunner(ours)
            stack.callback(runner.close)
        p = Pair(real, ours, runner)
        stack.callback(p._pool.shutdown)
        yield p
