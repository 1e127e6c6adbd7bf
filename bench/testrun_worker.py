"""Worker: ns/packet of the compiled classifier via BPF_PROG_TEST_RUN.

Run by bench/datapath.py inside a namespace the bench created (nsenter),
pinned to one CPU, so nothing it loads or resolves (interfaces) touches the
root namespace; prints one JSON document on stdout.

    python -m bench.testrun_worker SPEC_JSON

For each workload (a ClassBench file's first N rules, or the synthetic
worst case of N rules, bench/workload.py) the rules of every N are parsed,
compiled and loaded first, each into a program of exactly their shape (no
reuse of a bigger program); all of them stay loaded while the workload is
measured (50k synthetic rules: ~0.6 GB of maps). Then

* each probe frame (first match at the first rule, the middle, the last
  rule, the policy) runs ``repeat`` times per run; the kernel's mean ns per
  run is one sample. The verdict is the reference's, and the counter of the
  rule (or policy) it first matches grows by exactly what it was sent
  (counted == sent; read around each of its own runs, so probes sharing a
  rule are still checked one by one);
* the traffic mix (packets drawn uniformly over the rules' match boxes,
  plus policy traffic: workload.traffic_mix) runs ``mix_repeat`` times per
  packet; each packet's kernel mean is one value, the mix is summarised by
  their mean and 90th percentile. Afterwards every rule counter and the
  policy counter must equal what the reference's first matches predict.

Samples are interleaved, not taken back to back: sample k of every probe
of every N is taken before sample k + 1 of any, position by position (the
first-rule probe at each N, then the middle one at each N, ...), and mix
packet i of every N before packet i + 1 of any; the first N sits between
the two largest (sample_order), and the order is reversed every other
sample.
The aims compare N = 10k with N = 10; on a shared machine a burst of host
noise (tens to hundreds of ms) used to land on the 7 back-to-back samples
of one probe only and move its median (fw1-10k's slowest position read 94
ns in a full run, 56-62 ns right after). Interleaved, a burst hits
neighbouring samples of every N alike, and the medians (min and max are
reported too) compare like with like.

The maps' kernel memory is read from /proc/self/fdinfo (``memlock``) of
each program's own map fds."""
from __future__ import annotations

import json
import math
import os
import statistics
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TypeVar

from bpf_iptables.datapath import bpfsys
from bpf_iptables.datapath.compiler import (POLICY_COUNTER, Compiled, compile_chain,
                                            interfaces_here)
from bpf_iptables.datapath.harness import XDP_TO_VERDICT
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run

from .workload import Probe, load_source, source_name, source_probes, traffic_mix

T = TypeVar("T")
COUNTER_BYTES = 16     # struct counter (bpf/filter.c): packets, bytes


def map_memlock(fds: Iterable[int] | None = None) -> tuple[int, int]:
    """(maps, bytes): the BPF maps among ``fds`` (default: every fd of this
    process) and their memlock."""
    count = total = 0
    wanted = None if fds is None else {str(fd) for fd in fds}
    for fd in os.listdir("/proc/self/fd"):
        if wanted is not None and fd not in wanted:
            continue
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:bpf-map":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as fh:
                for line in fh:
                    if line.startswith("memlock:"):
                        total += int(line.split()[1])
                        count += 1
        except OSError:
            continue
    return count, total


def slot_packets(prog: LoadedProgram, slot: int) -> int:
    """Packets counted in one slot of the per-CPU counter array, all CPUs:
    one lookup, cheap enough to read around every sample."""
    ncpu = bpfsys.possible_cpus()
    raw = bpfsys.map_lookup(prog.maps["counter_map"], struct.pack("I", slot),
                            COUNTER_BYTES * ncpu)
    assert raw is not None, f"counter slot {slot} missing"
    return sum(struct.unpack_from("Q", raw, COUNTER_BYTES * cpu)[0] for cpu in range(ncpu))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a measured value)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def sample_order(items: list[T]) -> list[T]:
    """The order the N of a workload are sampled in (given ascending): the
    aims compare the largest N (10k, 50k) with the first (10), so the
    first is put between the two largest, next to both: 10, 100, 1k, 10k,
    50k -> 100, 1k, 10k, 10, 50k. Then a noise burst that ends between
    two samples separates the compared ones less often."""
    if len(items) < 3:
        return list(items)
    return [*items[1:-1], items[0], items[-1]]


def alternating(items: list[T], k: int) -> Iterator[T]:
    """``items`` forwards for even k, backwards for odd k: within a round of
    interleaved samples no N is always the first or the last."""
    return iter(items) if k % 2 == 0 else reversed(items)


@dataclass
class ProbeRun:
    """One probe of one program: its frame, counter slot and what it got."""
    probe: Probe
    data: bytes
    slot: int
    verdict: str = ""
    samples: list[int] = field(default_factory=list)
    sent: int = 0
    counted: int = 0

    def run(self, prog: LoadedProgram, repeat: int) -> int:
        """``repeat`` runs of the frame; the counter's growth is added to
        ``counted`` (read outside the kernel's timed loop)."""
        before = slot_packets(prog, self.slot)
        res = test_run(prog.fd, self.data, repeat=repeat)
        self.counted += slot_packets(prog, self.slot) - before
        self.sent += repeat
        if not self.verdict:
            self.verdict = XDP_TO_VERDICT.get(res.verdict, res.name)
        return res.duration_ns

    def result(self) -> dict:
        p = self.probe
        return {"position": p.position, "first_match": p.first_match,
                "proto": p.packet.proto, "frame_bytes": len(self.data),
                "verdict": self.verdict, "reference_verdict": p.verdict,
                "samples_ns": self.samples, "sent": self.sent, "counted": self.counted}


@dataclass
class Loaded:
    """One N of a workload, compiled and loaded, with its probes and mix."""
    requested: int
    ruleset: str
    rules: int
    compiled: Compiled
    build_s: float
    prog: LoadedProgram
    maps: int
    memlock: int
    probes: list[ProbeRun]
    mix: list[Probe]

    def slot(self, first_match: int | None) -> int:
        if first_match is None:
            return POLICY_COUNTER
        return self.compiled.counter_of[("INPUT", first_match)]


def load(source: str, count: int, mix_spec: dict) -> Loaded:
    table = load_source(source, count)
    mix = traffic_mix(table, mix_spec["rule_packets"], mix_spec["policy_packets"])
    start = time.monotonic()
    compiled = compile_chain(table, "INPUT", interfaces_here())
    build = time.monotonic() - start
    prog = LoadedProgram(compiled.shape)
    try:
        prog.install(compiled)
        maps, memlock = map_memlock(prog.maps.values())
        loaded = Loaded(count, source_name(source), len(table.chains["INPUT"].rules), compiled,
                        build, prog, maps, memlock, [], mix)
        loaded.probes = [ProbeRun(p, frame(p.packet), loaded.slot(p.first_match))
                         for p in source_probes(source, table)]
        return loaded
    except BaseException:
        prog.close()
        raise


def measure_probes(loaded: list[Loaded], repeat: int, runs: int) -> None:
    """Every probe's samples, interleaved over probes and N (module doc)."""
    for one in loaded:
        one.prog.zero_counters()
        for pr in one.probes:
            pr.run(one.prog, 1)           # the verdict, and a warm-up
    positions = max((len(one.probes) for one in loaded), default=0)
    for k in range(runs):
        # position-major: the compared probes (the same position at each N)
        # are a few ms apart
        for i in range(positions):
            for one in alternating(sample_order(loaded), k):
                if i < len(one.probes):
                    pr = one.probes[i]
                    pr.samples.append(pr.run(one.prog, repeat))


def measure_mixes(loaded: list[Loaded], repeat: int) -> list[dict | None]:
    """Each N's traffic mix, packet i of every N before packet i + 1 of any."""
    per_packet: list[list[int]] = [[] for _ in loaded]
    expected: list[Counter] = [Counter() for _ in loaded]
    verdicts_ok = [True] * len(loaded)
    for one in loaded:
        one.prog.zero_counters()
    frames = [[frame(p.packet) for p in one.mix] for one in loaded]
    for i in range(max((len(one.mix) for one in loaded), default=0)):
        for j, one in alternating(sample_order(list(enumerate(loaded))), i):
            if i >= len(one.mix):
                continue
            probe, data = one.mix[i], frames[j][i]
            first = test_run(one.prog.fd, data)
            per_packet[j].append(test_run(one.prog.fd, data, repeat=repeat).duration_ns)
            expected[j][probe.first_match] += 1 + repeat
            verdicts_ok[j] &= XDP_TO_VERDICT.get(first.verdict, first.name) == probe.verdict
    out: list[dict | None] = []
    for j, one in enumerate(loaded):
        if not one.mix:
            out.append(None)
            continue
        got: Counter = Counter({None: one.prog.policy_counters().packets})
        for (chain, index), c in one.prog.rule_counters().items():
            if chain == "INPUT" and c.packets:
                got[index] += c.packets
        got = +got   # drop zero entries, as in expected
        mix, ns = one.mix, per_packet[j]
        out.append({"packets": len(mix), "rule_packets": sum(p.first_match is not None
                                                                for p in mix),
                    "policy_packets": sum(p.first_match is None for p in mix),
                    "repeat": repeat, "per_packet_ns": ns, "mean_ns": statistics.fmean(ns),
                    "p90_ns": percentile(ns, 0.9), "sent": sum(expected[j].values()),
                    "counted": sum(got.values()), "counters_match": got == +expected[j],
                    "verdicts_match": verdicts_ok[j],
                    "distinct_rules": len({p.first_match for p in mix} - {None})})
    return out


def measure_job(source: str, counts: list[int], repeat: int, runs: int,
                mix_spec: dict) -> list[dict]:
    """One workload at every N: all loaded first, then measured interleaved."""
    loaded: list[Loaded] = []
    try:
        for count in counts:
            loaded.append(load(source, count, mix_spec))
            print(f"bench: test-run {loaded[-1].ruleset} N={count} loaded", file=sys.stderr,
                  flush=True)
        measure_probes(loaded, repeat, runs)
        mixes = measure_mixes(loaded, mix_spec["repeat"])
        print(f"bench: test-run {source_name(source)} N={counts} done", file=sys.stderr,
              flush=True)
        return [{"ruleset": one.ruleset, "rules": one.rules,
                 "entries": len(one.compiled.entries), "build_s": one.build_s,
                 "bcc_s": one.prog.compile_seconds, "maps": one.maps,
                 "memlock_bytes": one.memlock, "probes": [p.result() for p in one.probes],
                 "mix": mixed, "requested": one.requested}   # a set may have fewer rules
                for one, mixed in zip(loaded, mixes)]
    finally:
        for one in loaded:
            one.prog.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out = []
    for job in spec["jobs"]:        # {"source": path or SYNTHETIC, "counts": [...]}
        out += measure_job(job["source"], job["counts"], spec["repeat"], spec["runs"],
                           spec["mix"])
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
