"""Worker: ns/packet of the compiled classifier via BPF_PROG_TEST_RUN.

Run by bench/datapath.py inside a namespace the bench created (nsenter),
pinned to one CPU, so nothing it loads or resolves (interfaces) touches the
root namespace; prints one JSON document on stdout.

    python -m bench.testrun_worker SPEC_JSON

For each workload (a ClassBench file's first N rules, or the synthetic
worst case of N rules, bench/workload.py) and rule count N: the rules are
parsed, compiled and loaded into a program of exactly their shape (no
reuse of a bigger program), then

* each probe frame (first match at the first rule, the middle, the last
  rule, the policy) runs ``repeat`` times per run; the kernel's mean ns per
  run is one sample. After a probe's runs the counter of the rule (or
  policy) it first matches must equal runs x repeat (counted == sent), and
  the verdict must be the reference's;
* the traffic mix (packets drawn uniformly over the rules' match boxes,
  plus policy traffic: workload.traffic_mix) runs ``mix_repeat`` times per
  packet; each packet's kernel mean is one value, the mix is summarised by
  their mean and 90th percentile. Afterwards every rule counter and the
  policy counter must equal what the reference's first matches predict.
The maps' kernel memory is read from
/proc/self/fdinfo (``memlock``) of the map fds this process holds."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections import Counter

from bpf_iptables.datapath.compiler import compile_chain, interfaces_here
from bpf_iptables.datapath.harness import XDP_TO_VERDICT
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run

from .workload import Probe, load_source, source_name, source_probes, traffic_mix


def map_memlock() -> tuple[int, int]:
    """(maps, bytes): every BPF map fd of this process and its memlock."""
    count = total = 0
    for fd in os.listdir("/proc/self/fd"):
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


def measure_probe(prog: LoadedProgram, probe: Probe, repeat: int, runs: int) -> dict:
    data = frame(probe.packet)
    prog.zero_counters()
    first = test_run(prog.fd, data)          # the verdict, and a warm-up
    samples = [test_run(prog.fd, data, repeat=repeat).duration_ns for _ in range(runs)]
    sent = 1 + runs * repeat
    if probe.first_match is None:
        counted = prog.policy_counters().packets
    else:
        counted = prog.rule_counters()[("INPUT", probe.first_match)].packets
    return {"position": probe.position, "first_match": probe.first_match,
            "proto": probe.packet.proto, "frame_bytes": len(data),
            "verdict": XDP_TO_VERDICT.get(first.verdict, first.name),
            "reference_verdict": probe.verdict, "samples_ns": samples,
            "sent": sent, "counted": counted}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a measured value)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def measure_mix(prog: LoadedProgram, mix: list[Probe], repeat: int) -> dict:
    prog.zero_counters()
    expected: Counter = Counter()
    per_packet = []
    verdicts_ok = True
    for probe in mix:
        data = frame(probe.packet)
        first = test_run(prog.fd, data)
        per_packet.append(test_run(prog.fd, data, repeat=repeat).duration_ns)
        expected[probe.first_match] += 1 + repeat
        verdicts_ok &= XDP_TO_VERDICT.get(first.verdict, first.name) == probe.verdict
    got: Counter = Counter({None: prog.policy_counters().packets})
    for (chain, index), c in prog.rule_counters().items():
        if chain == "INPUT" and c.packets:
            got[index] += c.packets
    got = +got   # drop zero entries, as in expected
    return {"packets": len(mix), "rule_packets": sum(p.first_match is not None for p in mix),
            "policy_packets": sum(p.first_match is None for p in mix), "repeat": repeat,
            "per_packet_ns": per_packet, "mean_ns": statistics.fmean(per_packet),
            "p90_ns": percentile(per_packet, 0.9), "sent": sum(expected.values()),
            "counted": sum(got.values()), "counters_match": got == +expected,
            "verdicts_match": verdicts_ok,
            "distinct_rules": len({p.first_match for p in mix} - {None})}


def measure(source: str, count: int, repeat: int, runs: int, mix_spec: dict) -> dict:
    table = load_source(source, count)
    rules = len(table.chains["INPUT"].rules)
    found = source_probes(source, table)
    mix = traffic_mix(table, mix_spec["rule_packets"], mix_spec["policy_packets"])
    start = time.monotonic()
    compiled = compile_chain(table, "INPUT", interfaces_here())
    build = time.monotonic() - start
    prog = LoadedProgram(compiled.shape)
    try:
        prog.install(compiled)
        maps, memlock = map_memlock()
        results = [measure_probe(prog, p, repeat, runs) for p in found]
        mixed = measure_mix(prog, mix, mix_spec["repeat"]) if mix else None
        return {"ruleset": source_name(source), "rules": rules,
                "entries": len(compiled.entries), "build_s": build,
                "bcc_s": prog.compile_seconds, "maps": maps, "memlock_bytes": memlock,
                "probes": results, "mix": mixed}
    finally:
        prog.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out = []
    for job in spec["jobs"]:        # {"source": path or SYNTHETIC, "counts": [...]}
        for count in job["counts"]:
            entry = measure(job["source"], count, spec["repeat"], spec["runs"], spec["mix"])
            entry["requested"] = count   # a rule set may have fewer rules than asked
            out.append(entry)
            print(f"bench: test-run {entry['ruleset']} N={count} done", file=sys.stderr,
                  flush=True)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
