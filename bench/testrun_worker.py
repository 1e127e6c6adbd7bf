"""Worker: ns/packet of the compiled classifier via BPF_PROG_TEST_RUN.

Run by bench/datapath.py inside a namespace the bench created (nsenter),
pinned to one CPU, so nothing it loads or resolves (interfaces) touches the
root namespace; prints one JSON document on stdout.

    python -m bench.testrun_worker SPEC_JSON

For each rule count N: the first N rules are parsed, compiled and loaded
into a program of exactly their shape (no reuse of a bigger program), then
each probe frame (first match at the first rule, the middle, the last rule,
the policy) runs ``repeat`` times per run; the kernel's mean ns per run is
one sample. After a probe's runs the counter of the rule (or policy) it
first matches must equal runs x repeat (counted == sent), and the verdict
must be the reference's. The maps' kernel memory is read from
/proc/self/fdinfo (``memlock``) of the map fds this process holds."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bpf_iptables.datapath.compiler import compile_chain, interfaces_here
from bpf_iptables.datapath.harness import XDP_TO_VERDICT
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run

from .workload import Probe, load_table, probes


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


def measure(ruleset: Path, count: int, repeat: int, runs: int) -> dict:
    table = load_table(ruleset, count)
    rules = len(table.chains["INPUT"].rules)
    found = probes(table)
    start = time.monotonic()
    compiled = compile_chain(table, "INPUT", interfaces_here())
    build = time.monotonic() - start
    prog = LoadedProgram(compiled.shape)
    try:
        prog.install(compiled)
        maps, memlock = map_memlock()
        results = [measure_probe(prog, p, repeat, runs) for p in found]
        return {"ruleset": ruleset.name, "rules": rules, "entries": len(compiled.entries),
                "build_s": build, "bcc_s": prog.compile_seconds, "maps": maps,
                "memlock_bytes": memlock, "probes": results}
    finally:
        prog.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out = []
    for name in spec["rulesets"]:
        for count in spec["counts"]:
            entry = measure(Path(name), count, spec["repeat"], spec["runs"])
            entry["requested"] = count   # a rule set may have fewer rules than asked
            out.append(entry)
            print(f"bench: test-run {Path(name).stem} N={count} done", file=sys.stderr,
                  flush=True)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
