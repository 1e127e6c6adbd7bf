"""Running bpf-iptables (and, as exit-code oracle, iptables-legacy) in a netns.

Two ways to run our programs, same results: ``forkserver`` (default, fast;
see :mod:`compat_tests.forkserver`) and ``subprocess`` (one
``python -m bpf_iptables.cli.*`` process per command, like a user would),
picked with ``BPF_IPTABLES_COMPAT_EXEC``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from contextlib import ExitStack
from typing import Protocol

from tests.support.netns import REPO, Namespace, Result, bpf_command, namespace

EXEC_ENV = "BPF_IPTABLES_COMPAT_EXEC"
# BPF_IPTABLES_COMPAT_EXEC=legacy puts iptables-legacy itself under test.
# Not a way to pass: it checks the harness (selection, expectations, checks)
# on this machine, where the real tool must pass every selected line.
LEGACY_TOOLS = {"iptables": "iptables-legacy", "iptables-save": "iptables-legacy-save",
                "iptables-restore": "iptables-legacy-restore"}
MODULES = {"iptables": "bpf_iptables.cli.iptables", "iptables-save": "bpf_iptables.cli.save",
           "iptables-restore": "bpf_iptables.cli.restore"}


def exec_mode() -> str:
    mode = os.environ.get(EXEC_ENV, "forkserver")
    if mode not in ("forkserver", "subprocess", "legacy"):
        raise ValueError(f"${EXEC_ENV} must be forkserver, subprocess or legacy, not {mode!r}")
    return mode


def save_available() -> bool:
    """Whether bpf-iptables-save exists yet (until then ``-S`` stands in)."""
    if exec_mode() == "legacy":
        return True
    return importlib.util.find_spec(MODULES["iptables-save"]) is not None


class BpfRunner(Protocol):
    def run(self, tool: str, *args: str, input: str | None = None) -> Result: ...
    def close(self) -> None: ...


class SubprocessRunner:
    def __init__(self, ns: Namespace):
        self.ns = ns

    def run(self, tool: str, *args: str, input: str | None = None) -> Result:
        return self.ns.run(bpf_command(tool, *args), input=input)

    def close(self) -> None:
        pass


class LegacyRunner:
    """The real iptables-legacy in the place of bpf-iptables (harness check)."""

    def __init__(self, ns: Namespace):
        self.ns = ns

    def run(self, tool: str, *args: str, input: str | None = None) -> Result:
        return self.ns.run([LEGACY_TOOLS[tool], *args], input=input)

    def close(self) -> None:
        pass


class ForkServerRunner:
    def __init__(self, ns: Namespace):
        env = dict(os.environ, PYTHONPATH=str(REPO), LC_ALL="C")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "compat_tests.forkserver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
            env=env, cwd=str(REPO))

    def run(self, tool: str, *args: str, input: str | None = None) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"module": MODULES[tool], "argv": list(args), "stdin": input}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"fork server died (exit {self.proc.wait()})")
        msg = json.loads(answer)
        return Result(msg["stdout"], msg["stderr"], msg["rc"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class NetnsSession:
    """A private namespace with a bpf-iptables runner, closed together."""

    def __init__(self, prefix: str, with_bpf: bool = True):
        self._stack = ExitStack()
        self.ns: Namespace = self._stack.enter_context(namespace(prefix))
        self.bpf: BpfRunner | None = None
        if with_bpf:
            runner = {"forkserver": ForkServerRunner, "subprocess": SubprocessRunner,
                      "legacy": LegacyRunner}[exec_mode()]
            self.bpf = runner(self.ns)
            self._stack.callback(self.bpf.close)

    def bpf_iptables(self, *args: str) -> Result:
        assert self.bpf is not None
        return self.bpf.run("iptables", *args)

    def bpf_save(self, *args: str) -> Result:
        assert self.bpf is not None
        return self.bpf.run("iptables-save", *args)

    def bpf_restore(self, *args: str, input: str) -> Result:
        assert self.bpf is not None
        return self.bpf.run("iptables-restore", *args, input=input)

    def close(self) -> None:
        self._stack.close()
