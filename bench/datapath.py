"""Data-path benchmark (issues 3 and 6): bpf-iptables beside iptables-legacy,
iptables-nft and a bare XDP drop program.

* ns/packet of the compiled classifier via BPF_PROG_TEST_RUN at N = 10,
  100, 1k, 10k ClassBench rules (fw1 and acl1; the first N rules) and at
  N = 10 .. 50k rules of the synthetic worst case (bench/workload.py):
  64-byte frames first-matching at the first rule, the middle, the last
  rule and the policy, and a traffic mix drawn from the rules' match boxes
  plus policy traffic (bench/testrun_worker.py), with the maps' kernel
  memory. The samples are interleaved over N (every N of a rule set
  loaded at once; sample k of a probe position at every N, then sample
  k + 1): the aims are ratios of 10k (50k) rules to 10, and a burst of
  host noise then lands on neighbouring samples of every N alike instead
  of on one probe's back-to-back samples;
* live traffic on one pinned CPU (bench/live.py, frames from
  bench/xdpgen.py): Mpps and ns/packet of bpf-iptables attached at XDP
  native, XDP generic and TC ingress, iptables-legacy and iptables-nft,
  same rules, same frame (the one walking the most rules), the empty rule
  set (policy DROP) as each system's baseline, and the bare XDP drop
  program (bench/xdp_drop.c) as the ceiling;
* restore of classbench-fw1-10k and single -A / -D / -I 1 with it loaded
  (bench/control.py), attached and not, beside iptables-legacy, and the
  single updates again under a live flow.

Everything runs in namespaces the bench creates and deletes."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import control, live, workload
from .control import Timing
from .frontend import env_for_children
from .live import LiveResult
from .netns import CommandFailed, namespace

FULL_COUNTS = (10, 100, 1000, 10000)
SYNTHETIC_COUNTS = (10, 100, 1000, 10000, 50000)
QUICK_SYNTHETIC_COUNTS = (10, 1000)
RULESETS = ("classbench-fw1-10k.rules", "classbench-acl1-10k.rules")
SYNTHETIC = workload.SYNTHETIC


@dataclass(frozen=True)
class Settings:
    counts: tuple[int, ...]
    rulesets: tuple[str, ...] = RULESETS
    synthetic_counts: tuple[int, ...] = SYNTHETIC_COUNTS   # () : no synthetic worst case
    repeat: int = 100_000        # BPF_PROG_TEST_RUN repeat per sample
    runs: int = 7                # TEST_RUN samples per probe
    mix_rule_packets: int = 64   # traffic mix: packets drawn over the rules' boxes
    mix_policy_packets: int = 16  # ... and packets no rule matches
    mix_repeat: int = 20_000     # TEST_RUN repeat per mix packet
    live_runs: int = 5
    live_seconds: float = 0.5
    live_counts: tuple[int, ...] | None = None   # default: 0 + counts
    live_rulesets: tuple[str, ...] = (*RULESETS, SYNTHETIC)
    live_synthetic_counts: tuple[int, ...] | None = None   # default: synthetic_counts
    live_systems: tuple[str, ...] = live.SYSTEMS
    # "xdp": BPF_PROG_TEST_RUN live frames (bench/xdpgen.py, tens of ns per
    # frame); "afpacket": sendmmsg (bench/trafficgen.py, ~1.3 us per frame,
    # which hides the receivers' differences)
    live_generator: str = "xdp"
    # iptables-legacy / -nft live only up to this many rules (None: all);
    # the report says which cells were left out and why
    others_max_rules: int | None = None
    restore_runs: int = 5
    update_runs: int = 7
    control: bool = True         # restore / update timings
    traffic_updates: bool = True  # the single updates also under a live flow
    control_ruleset: str = RULESETS[0]
    quick: bool = False

    @staticmethod
    def for_mode(quick: bool) -> "Settings":
        """--quick (under 3 minutes with the front end): N up to 1k, ClassBench
        fw1 and the synthetic set through TEST_RUN, the live systems on the
        synthetic set's 1k only, the control plane on classbench-fw1-1k with 3 runs."""
        if quick:
            return Settings((10, 1000), rulesets=RULESETS[:1],
                            synthetic_counts=QUICK_SYNTHETIC_COUNTS, repeat=20_000,
                            runs=3, mix_rule_packets=32, mix_policy_packets=8, mix_repeat=5_000,
                            live_runs=2, live_seconds=0.2, live_rulesets=(SYNTHETIC,),
                            live_synthetic_counts=(1000,), restore_runs=3,
                            update_runs=3, control_ruleset="classbench-fw1-1k.rules",
                            quick=True)
        return Settings(FULL_COUNTS)


@dataclass
class DatapathResults:
    settings: Settings
    testrun: list[dict]                      # one per (rule set, N), see testrun_worker
    live: list[LiveResult]
    control: list[Timing]
    cpu: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def testrun_entry(self, ruleset: str, count: int) -> dict | None:
        for e in self.testrun:
            if e["ruleset"] == ruleset and e["requested"] == count:
                return e
        return None

    def live_entry(self, system: str, count: int, ruleset: str) -> LiveResult | None:
        for r in self.live:
            if r.system == system and r.requested == count and r.ruleset == ruleset:
                return r
        return None

    def timing(self, operation: str, system: str) -> Timing | None:
        for t in self.control:
            if t.operation == operation and t.system == system:
                return t
        return None


def shared_dir() -> Path:
    from .tools import REPO

    return Path(os.environ.get("BPF_IPTABLES_SHARED_DIR", REPO.parent / "shared"))


def bench_cpu() -> int:
    """The CPU everything measured is pinned to: the last one."""
    return max(os.sched_getaffinity(0))


def run_testrun(settings: Settings, rulesets: list[Path], cpu: int, env: dict[str, str],
                progress: Callable[[str], None]) -> list[dict]:
    jobs = [{"source": str(r), "counts": list(settings.counts)} for r in rulesets]
    if settings.synthetic_counts:
        jobs.append({"source": SYNTHETIC, "counts": list(settings.synthetic_counts)})
    spec = {"jobs": jobs, "repeat": settings.repeat, "runs": settings.runs,
            "mix": {"rule_packets": settings.mix_rule_packets,
                    "policy_packets": settings.mix_policy_packets,
                    "repeat": settings.mix_repeat}}
    progress(f"BPF_PROG_TEST_RUN: {len(rulesets)} rule sets x N = {list(settings.counts)}"
             + (f", synthetic N = {list(settings.synthetic_counts)}"
                if settings.synthetic_counts else ""))
    with namespace("bpft-bench") as ns:
        ns.run(["ip", "link", "set", "lo", "up"])
        argv = ns.argv(["taskset", "-c", str(cpu), sys.executable, "-m",
                        "bench.testrun_worker", json.dumps(spec)])
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
        if proc.returncode != 0:
            raise CommandFailed(f"bench.testrun_worker exit {proc.returncode}")
    return json.loads(proc.stdout)


def _live_counts(settings: Settings, source: str) -> tuple[int, ...]:
    if source == SYNTHETIC:
        return settings.live_synthetic_counts if settings.live_synthetic_counts is not None \
            else settings.synthetic_counts
    return settings.live_counts if settings.live_counts is not None else (0, *settings.counts)


def _measure(system: str, text: str, rules: int, probe: workload.Probe,
             settings: Settings, cpu: int, env: dict[str, str], notes: list[str],
             beside_bare: bool = False) -> list[LiveResult]:
    """``system``'s live cell (with ``beside_bare``, and the bare drop
    measured beside it: live.measure_beside_bare); none when it failed."""
    args = (system, text, rules, probe, settings.live_runs, settings.live_seconds, cpu, env,
            settings.live_generator)
    try:
        return list(live.measure_beside_bare(*args)) if beside_bare else [live.measure(*args)]
    except (CommandFailed, subprocess.CalledProcessError, ValueError) as e:
        # noted, not fatal: the other cells still mean something
        beside = " beside the bare drop" if beside_bare else ""
        notes.append(f"live, {system}{beside}, {rules} rules: {e}")
        return []


# the rule count whose XDP native cell the live aims use: measured with
# the bare drop beside it (live.measure_beside_bare; dpreport.BIG)
BESIDE_BARE = 10_000


def run_bare(settings: Settings, cpu: int, env: dict[str, str],
             progress: Callable[[str], None], notes: list[str]) -> list[LiveResult]:
    """The ceiling, once per run: the bare XDP drop program (no rules), fed
    the synthetic worst case's frame (any IPv4 frame costs it the same)."""
    progress(f"live traffic: {live.BARE_NAME}")
    probe = workload.live_probe(SYNTHETIC, workload.load_source(SYNTHETIC, 1))
    got = _measure(live.BARE_NAME, "", 0, probe, settings, cpu, env, notes)
    for res in got:
        res.requested, res.ruleset = 0, ""
    return got


def run_live(settings: Settings, source: str, cpu: int, env: dict[str, str],
             progress: Callable[[str], None], notes: list[str]) -> list[LiveResult]:
    """Every system but the bare program at each N of one workload; N=0 is
    the empty rule set (policy DROP), each system's baseline."""
    live.ensure_bpffs()
    out = []
    name = workload.source_name(source)
    systems = [s for s in settings.live_systems if s != live.BARE_NAME]
    for count in _live_counts(settings, source):
        table = workload.load_source(source, count)
        probe = workload.live_probe(source, table)
        text = workload.source_text(source, count)
        rules = len(table.chains["INPUT"].rules)
        for system in systems:
            if system not in live.BPF_MODES and settings.others_max_rules is not None \
                    and count > settings.others_max_rules:
                continue      # the report says so
            progress(f"live traffic: {system}, {name} N={count}")
            # the aims' cell: the bare drop measured beside it
            beside = system == live.BPF_NAME and count == BESIDE_BARE \
                and live.BARE_NAME in settings.live_systems
            for res in _measure(system, text, rules, probe, settings, cpu, env, notes, beside):
                res.requested, res.ruleset = count, name
                out.append(res)
    return out


def run(settings: Settings, progress: Callable[[str], None] = lambda s: None,
        shared: Path | None = None) -> DatapathResults:
    if shutil.which("iptables-legacy-restore") is None:
        raise SystemExit("iptables-legacy-restore is missing: run scripts/setup.sh first")
    start = time.monotonic()
    env = env_for_children()
    base = (shared or shared_dir()) / "rulesets"
    rulesets = [base / name for name in settings.rulesets]
    for r in rulesets:
        if not r.is_file():
            raise SystemExit(f"rule set {r} not found (set BPF_IPTABLES_SHARED_DIR)")
    cpu = bench_cpu()
    results = DatapathResults(settings, [], [], [], cpu)
    results.testrun = run_testrun(settings, rulesets, cpu, env, progress)
    if live.BARE_NAME in settings.live_systems and settings.live_rulesets:
        results.live += run_bare(settings, cpu, env, progress, results.notes)
    for name in settings.live_rulesets:
        source = name if name == SYNTHETIC else str(base / name)
        results.live += run_live(settings, source, cpu, env, progress, results.notes)
    if settings.control:
        path = base / settings.control_ruleset
        # the update phase's initial load is one restore sample per system
        restores = control.time_restores(path, settings.restore_runs - 1, env, progress,
                                         results.notes)
        updates = control.time_updates(path, settings.update_runs, env, progress,
                                       results.notes, restores)
        results.control = [*restores, *updates]
        if settings.traffic_updates:
            source = str(path)
            table = workload.load_source(source, workload.rule_count(path))
            results.control += control.time_updates_under_traffic(
                workload.source_text(source, workload.rule_count(path)),
                workload.live_probe(source, table), settings.update_runs, cpu, env, progress,
                results.notes)
        results.control.append(control.python_floor(max(3, settings.restore_runs), env))
    results.seconds = time.monotonic() - start
    return results


# -- figures derived from the raw numbers (used by the report and the test) --

def median_ns(probe: dict) -> float:
    return statistics.median(probe["samples_ns"])


def worst_probe(entry: dict) -> dict:
    """The probe position with the highest median: the aims use it."""
    return max(entry["probes"], key=median_ns)


def live_ns(res: LiveResult) -> float:
    return statistics.median(r.ns_per_packet for r in res.runs)
