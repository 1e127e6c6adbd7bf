"""Control-plane side of the data-path benchmark: restore of a 10k rule set
and single -A / -D / -I 1 with it loaded, with the data path attached (the
command returns once the new rules are enforced) and unattached, beside
iptables-legacy; and the same single updates *under traffic* (a live flow
through the server namespace while the command runs: bench/live.py's
topology, bpf-iptables attached at native XDP). Wall time of the whole
command, as a user sees it.

Each timing happens in namespaces the bench creates; an attached
namespace is detached and its state removed before it is deleted."""
from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from bpf_iptables.netaddr import int_to_ip

from . import live, workload
from .frontend import purge_bpf_state
from .live import DATAPATH, detach
from .netns import CommandFailed, Namespace, namespace
from .tools import BPF, LEGACY, Tool

LEGACY_SYS = "iptables-legacy"
BPF_ATTACHED = "bpf-iptables (attached)"
BPF_UNATTACHED = "bpf-iptables (not attached)"
SYSTEMS = (LEGACY_SYS, BPF_UNATTACHED, BPF_ATTACHED)
LEGACY_TRAFFIC = "iptables-legacy, under traffic"
BPF_TRAFFIC = "bpf-iptables (attached XDP), under traffic"
TRAFFIC_SYSTEMS = {LEGACY_TRAFFIC: live.LEGACY_NAME, BPF_TRAFFIC: live.BPF_NAME}
# timed single updates: (operation, command, position); each -I 1 is undone
# by an untimed -D so the rule set keeps its size
UPDATES = (("append", "-A", None), ("delete", "-D", None), ("insert", "-I", 1))


@dataclass
class Timing:
    operation: str          # restore, append, delete, insert
    system: str
    times: list[float] = field(default_factory=list)
    packets: int = 0        # under traffic: packets the server counted meanwhile


def tool_of(system: str) -> Tool:
    return LEGACY if system in (LEGACY_SYS, LEGACY_TRAFFIC) else BPF


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


def rule_argv(tool: Tool, command: str, i: int, position: int | None = None) -> list[str]:
    # a rule unlike any ClassBench rule (and any packet the bench sends),
    # at the end of INPUT or at ``position``
    where = ["INPUT"] if position is None else ["INPUT", str(position)]
    return [*tool.command, command, *where, "-s", f"10.255.{i % 256}.1", "-p", "tcp",
            "--dport", "8080", "-j", "ACCEPT"]


def run_updates(ns: Namespace, tool: Tool, i: int, timings: dict[str, Timing],
                env: dict[str, str], notes: list[str], label: str) -> None:
    """One round of UPDATES in ``ns``, each timed into timings[operation]."""
    for op, command, position in UPDATES:
        try:
            timings[op].times.append(ns.run(rule_argv(tool, command, i, position), env=env))
            if position is not None:
                ns.run(rule_argv(tool, "-D", i), env=env)
        except CommandFailed as e:
            notes.append(f"{command}, {label}: {e}")


def time_updates(ruleset: Path, runs: int, env: dict[str, str],
                 progress: Callable[[str], None], notes: list[str],
                 restores: list[Timing] | None = None) -> list[Timing]:
    """Load the rule set once per system, then alternate single -A and -D
    (of the rule just appended, so the rule set stays the same size).
    Loading is a restore into a fresh namespace like time_restores' runs:
    its time is added to ``restores`` (one compile fewer per system)."""
    timings = {s: {op: Timing(op, s) for op, _, _ in UPDATES} for s in SYSTEMS}
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
            progress(f"update {i + 1}/{runs}: -A / -D / -I 1")
            for system, ns in spaces.items():
                run_updates(ns, tool_of(system), i, timings[system], env, notes, system)
    return [t for per in timings.values() for t in per.values()]


def wait_for_flow(topo: live.Topology, system: str, probe: workload.Probe, before: int,
                  env: dict[str, str], timeout: float = 20.0) -> None:
    """Return once the server has counted the flow's first packets (the
    sender takes a moment to start), so every timed command runs under it."""
    deadline = time.monotonic() + timeout
    while live.read_count(topo, system, probe.first_match, env) == before:
        if time.monotonic() > deadline:
            raise CommandFailed(f"no packet of the flow counted within {timeout:.0f} s")
        time.sleep(0.05)


def time_updates_under_traffic(rules_text: str, probe: workload.Probe, runs: int, cpu: int,
                               env: dict[str, str], progress: Callable[[str], None],
                               notes: list[str]) -> list[Timing]:
    """The single updates with a live flow running: the rule set loaded in
    the server namespace (bpf-iptables attached at native XDP), the sender
    pinned to ``cpu`` sending ``probe``'s frame throughout; the commands run
    unpinned. The packets the server counted meanwhile are recorded (> 0:
    traffic did flow during the commands)."""
    out = []
    for system, live_system in TRAFFIC_SYSTEMS.items():
        timings = {op: Timing(op, system) for op, _, _ in UPDATES}
        progress(f"update under traffic: loading the rule set for {system}")
        try:
            with live.topology(env, int_to_ip(probe.packet.dst)) as topo:
                live.load(topo, live_system, rules_text, env)
                data = live.wire_frame(topo, probe)
                before = live.read_count(topo, live_system, probe.first_match, env)
                with live.background_flow(topo, data, cpu, env):
                    wait_for_flow(topo, live_system, probe, before, env)
                    for i in range(runs):
                        progress(f"update under traffic {i + 1}/{runs}: {system}")
                        run_updates(topo.server, tool_of(system), i, timings, env, notes,
                                    system)
                counted = live.read_count(topo, live_system, probe.first_match, env) - before
        except (CommandFailed, subprocess.CalledProcessError) as e:
            notes.append(f"update under traffic, {system}: {e}")
            counted = 0
        for t in timings.values():
            t.packets = counted
        out += timings.values()
    return out


def python_floor(runs: int, env: dict[str, str]) -> Timing:
    """Interpreter start-up: contained in every bpf-iptables command the
    namespace's server does not run (not attached: every command; attached:
    the rare fallback), not in a served one (the installed C client)."""
    with namespace("bpft-bench") as ns:
        return Timing("python -c pass", "-",
                      [ns.run([sys.executable, "-c", "pass"], env=env) for _ in range(runs)])
