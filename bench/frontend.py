"""Front-end benchmark: bpf-iptables vs iptables-legacy in the same run.

Two operations, each in fresh private namespaces:
  * restore: load a large rule set (default ClassBench fw1 10k) from a file;
  * append:  one ``-A INPUT ...`` with that rule set already loaded.
Runs of the two tools alternate, so drift of a shared, noisy machine hits
both alike; ratios are of medians taken in the same run."""
from __future__ import annotations

import atexit
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .netns import Namespace, namespace
from .tools import BPF, LEGACY, REPO, Tool


@dataclass
class Measurement:
    operation: str
    tool: str
    times: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def available(self) -> bool:
        return bool(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Profile:
    title: str
    by_tottime: str
    by_cumulative: str


@dataclass
class Results:
    ruleset: Path
    rule_count: int
    runs: int
    quick: bool
    measurements: list[Measurement]
    profiles: list[Profile]

    def find(self, operation: str, tool: str) -> Measurement:
        return next(m for m in self.measurements if m.operation == operation and m.tool == tool)


def private_lock_file() -> str:
    """An xtables lock file of this bench run only. Both tools honour
    $XTABLES_LOCKFILE; the machine-wide /run/xtables.lock is held by anyone
    changing rules in any namespace (iptables-legacy-restore waits for it
    without limit, bpf-iptables holds it through a whole data-path compile),
    and that waiting is not the cost of the command being measured."""
    path = Path(tempfile.gettempdir()) / f"bpft-bench-{os.getpid()}.xtables.lock"
    if not path.exists():
        path.touch(mode=0o600)
        atexit.register(path.unlink, missing_ok=True)
    return str(path)


def env_for_children() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["LC_ALL"] = "C"
    # a namespace the bench does not attach explicitly measures the front
    # end alone: without this, its first change would attach the data path
    env["BPF_IPTABLES_DATAPATH"] = "off"
    env["XTABLES_LOCKFILE"] = private_lock_file()
    return env


def purge_bpf_state(ns: Namespace, env: dict[str, str]) -> None:
    """Remove bpf-iptables' per-namespace state before the namespace goes
    (it is keyed by a cookie that is never reused, so it would only pile up)."""
    code = ("import shutil; from bpf_iptables import state; "
            "shutil.rmtree(state.namespace_dir(), ignore_errors=True)")
    subprocess.run(ns.argv([sys.executable, "-c", code]), env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def append_argv(tool: Tool, i: int) -> list[str]:
    # A rule unlike any ClassBench rule, at the end of INPUT: what a user adds.
    return [*tool.command, "-A", "INPUT", "-s", f"10.255.{i % 256}.1", "-p", "tcp",
            "--dport", "8080", "-j", "ACCEPT"]


def load(ns: Namespace, tool: Tool, ruleset: Path, env: dict[str, str]) -> None:
    ns.run(tool.restore, stdin_path=str(ruleset), env=env)


def time_restore(tool: Tool, ruleset: Path, env: dict[str, str]) -> float:
    with namespace() as ns:
        try:
            return ns.run(tool.restore, stdin_path=str(ruleset), env=env)
        finally:
            if tool.python:
                purge_bpf_state(ns, env)


def time_appends(tools: list[Tool], ruleset: Path, runs: int,
                 env: dict[str, str]) -> dict[str, list[float]]:
    """Load the rule set once per tool (each in its own namespace), then time
    `runs` single -A commands, alternating the tools."""
    times: dict[str, list[float]] = {t.name: [] for t in tools}
    with ExitStack() as stack:
        spaces = [stack.enter_context(namespace()) for _ in tools]
        for tool, ns in zip(tools, spaces):
            if tool.python:
                stack.callback(purge_bpf_state, ns, env)
            load(ns, tool, ruleset, env)
        for i in range(runs):
            for tool, ns in zip(tools, spaces):
                times[tool.name].append(ns.run(append_argv(tool, i), env=env))
    return times


def time_floor(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    with namespace() as ns:
        return [ns.run(argv, env=env) for _ in range(runs)]


def profile(title: str, tool: Tool, ruleset: Path, env: dict[str, str],
            operation: str) -> Profile:
    """cProfile one bpf-iptables run of `operation`; top 10 by own and cumulative time."""
    with tempfile.TemporaryDirectory() as tmp, namespace() as ns:
        out = Path(tmp) / "prof"
        try:
            if operation == "restore":
                module = tool.modules[1]
                ns.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", module],
                       stdin_path=str(ruleset), env=env)
            else:
                load(ns, tool, ruleset, env)
                argv = append_argv(tool, 0)[len(tool.command):]   # the command's arguments
                ns.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m",
                        tool.modules[0], *argv], env=env)
        finally:
            purge_bpf_state(ns, env)
        return Profile(title, _top(out, "tottime"), _top(out, "cumulative"))


def _top(path: Path, key: str) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.strip_dirs().sort_stats(key).print_stats(10)
    text = buf.getvalue()
    # Keep the table itself: from the column header line on.
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def count_rules(ruleset: Path) -> int:
    with open(ruleset) as fh:
        return sum(1 for line in fh if line.startswith("-A "))


def run(ruleset: Path, runs: int, quick: bool,
        progress: Callable[[str], None] = lambda s: None) -> Results:
    if shutil.which("iptables-legacy-restore") is None:
        raise SystemExit("iptables-legacy-restore is missing: run scripts/setup.sh first")
    env = env_for_children()
    bpf = BPF
    tools = [LEGACY, bpf]
    restore = {t.name: Measurement("restore", t.name) for t in tools}
    append = {t.name: Measurement("append", t.name) for t in tools}

    for i in range(runs):
        for tool in tools:      # alternate tools run by run
            progress(f"restore run {i + 1}/{runs}: {tool.name}")
            restore[tool.name].times.append(time_restore(tool, ruleset, env))
    progress(f"append: loading the rule set, then {runs} x -A per tool")
    for name, times in time_appends(tools, ruleset, runs, env).items():
        append[name].times.extend(times)

    progress("launcher and interpreter floors")
    floors = [
        Measurement("nsenter + /bin/true (launcher floor)", "-",
                    time_floor(["true"], runs, env)),
        Measurement("python startup, `python -c pass` (floor of any Python CLI)", "-",
                    time_floor([sys.executable, "-c", "pass"], runs, env)),
    ]

    measurements = [restore[LEGACY.name], restore[bpf.name], append[LEGACY.name],
                    append[bpf.name], *floors]
    results = Results(ruleset, count_rules(ruleset), runs, quick, measurements, [])

    # Profile the slower operation (by ratio); in full mode both.
    ratios = {op: ratio(results, op) for op in ("restore", "append")}
    ranked = sorted((op for op, r in ratios.items() if r is not None),
                    key=lambda op: ratios[op] or 0, reverse=True)
    for op in ranked[:1] if quick else ranked:
        progress(f"cProfile: bpf-iptables {op}")
        title = ("bpf-iptables-restore of the rule set" if op == "restore"
                 else "one bpf-iptables -A with the rule set loaded")
        results.profiles.append(profile(title, bpf, ruleset, env, op))
    return results


def ratio(results: Results, operation: str) -> float | None:
    legacy = results.find(operation, LEGACY.name)
    ours = results.find(operation, "bpf-iptables")
    if not (legacy.available and ours.available):
        return None
    return ours.median / legacy.median
