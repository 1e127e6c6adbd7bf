"""Control-plane side of the data-path benchmark: restore of a 10k rule set
and single -A / -D with it loaded, with the data path attached (the command
returns once the new rules are enforced) and unattached, beside
iptables-legacy. Wall time of the whole command, as a user sees it.

Each timing happens in namespaces the bench creates (lo only); an attached
namespace is detached and its state removed before it is deleted."""
from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .frontend import purge_bpf_state
from .live import DATAPATH, detach
from .netns import CommandFailed, Namespace, namespace
from .tools import BPF, LEGACY, Tool

LEGACY_SYS = "iptables-legacy"
BPF_ATTACHED = "bpf-iptables (attached)"
BPF_UNATTACHED = "bpf-iptables (not attached)"
SYSTEMS = (LEGACY_SYS, BPF_UNATTACHED, BPF_ATTACHED)


@dataclass
class Timing:
    operation: str          # restore, append, delete
    system: str
    times: list[float] = field(default_factory=list)


def tool_of(system: str) -> Tool:
    return LEGACY if system == LEGACY_SYS else BPF


@contextmanager
def prepared(system: str, env: dict[str, str]) -> Iterator[Namespace]:
    """A fresh namespace; for the attached system, the data path attached
    with the empty rule set (so a restore compiles and loads the new one)."""
    with namespace("bpft-bench") as ns:
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
            if system == BPF_ATTACHED:
                ns.run([*DATAPATH, "attach"], env=env)
            yield ns
        finally:
            if system == BPF_ATTACHED:
                detach(ns, env)
            elif system == BPF_UNATTACHED:
                purge_bpf_state(ns, env)


def time_restores(ruleset: Path, runs: int, env: dict[str, str],
                  progress: Callable[[str], None], notes: list[str]) -> list[Timing]:
    """A failing command is noted (and leaves its sample out), not fatal:
    the other systems' figures still mean something."""
    out = {s: Timing("restore", s) for s in SYSTEMS}
    for i in range(runs):
        for system in SYSTEMS:      # alternate, so drift hits all alike
            progress(f"restore {i + 1}/{runs}: {system}")
            try:
                with prepared(system, env) as ns:
                    out[system].times.append(
                        ns.run(tool_of(system).restore, stdin_path=str(ruleset), env=env))
            except CommandFailed as e:
                notes.append(f"restore, {system}: {e}")
    return list(out.values())


def rule_argv(tool: Tool, command: str, i: int) -> list[str]:
    # a rule unlike any ClassBench rule, at the end of INPUT
    return [*tool.command, command, "INPUT", "-s", f"10.255.{i % 256}.1", "-p", "tcp",
            "--dport", "8080", "-j", "ACCEPT"]


def time_updates(ruleset: Path, runs: int, env: dict[str, str],
                 progress: Callable[[str], None], notes: list[str],
                 restores: list[Timing] | None = None) -> list[Timing]:
    """Load the rule set once per system, then alternate single -A and -D
    (of the rule just appended, so the rule set stays the same size).
    Loading is a restore into a fresh namespace like time_restores' runs:
    its time is added to ``restores`` (one compile fewer per system)."""
    add = {s: Timing("append", s) for s in SYSTEMS}
    delete = {s: Timing("delete", s) for s in SYSTEMS}
    restore = {t.system: t for t in restores or []}
    with ExitStack() as stack:
        spaces = {}
        for system in SYSTEMS:
            progress(f"update: loading the rule set for {system}")
            try:
                ns = stack.enter_context(prepared(system, env))
                took = ns.run(tool_of(system).restore, stdin_path=str(ruleset), env=env)
            except CommandFailed as e:
                notes.append(f"update set-up, {system}: {e}")
                continue
            if system in restore:
                restore[system].times.append(took)
            spaces[system] = ns
        for i in range(runs):
            progress(f"update {i + 1}/{runs}: -A / -D")
            for system, ns in spaces.items():
                tool = tool_of(system)
                for command, timing in (("-A", add[system]), ("-D", delete[system])):
                    try:
                        timing.times.append(ns.run(rule_argv(tool, command, i), env=env))
                    except CommandFailed as e:
                        notes.append(f"{command}, {system}: {e}")
    return [*add.values(), *delete.values()]


def python_floor(runs: int, env: dict[str, str]) -> Timing:
    """Interpreter start-up, contained in every bpf-iptables figure."""
    with namespace("bpft-bench") as ns:
        return Timing("python -c pass", "-",
                      [ns.run([sys.executable, "-c", "pass"], env=env) for _ in range(runs)])
