"""TEST_RUN of ClassBench rule sets only, by the bench's own code path
(bench/datapath.run_testrun: the worker in a namespace the bench makes and
deletes, pinned to the last CPU, counters and verdicts checked against the
reference), without the rest of ``python -m bench``:

    python -m bench.fw1_testrun [--counts 10 10000] [--ruleset classbench-fw1-10k.rules] [--json OUT]

Prints per N the probes' minimum and median ns (7 samples of 100,000 runs,
as the full bench) and the traffic mix's mean and p90 (64 rule packets and
16 policy packets, 20,000 runs each), and the ratios the aims use."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace

from .datapath import Settings, run_testrun, shared_dir
from .frontend import env_for_children


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 10_000])
    ap.add_argument("--ruleset", default="classbench-fw1-10k.rules")
    ap.add_argument("--json", help="also write the worker's raw results here")
    args = ap.parse_args()
    settings = replace(Settings.for_mode(False), counts=tuple(args.counts),
                       rulesets=(args.ruleset,), synthetic_counts=())
    cpu = max(os.sched_getaffinity(0))
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    out = run_testrun(settings, [shared_dir() / "rulesets" / args.ruleset], cpu,
                      env_for_children(), lambda s: print(s, file=sys.stderr))
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh)
    base = None
    for e in out:
        mix = e["mix"]
        ok = all(p["counted"] == p["sent"] and p["verdict"] == p["reference_verdict"]
                 for p in e["probes"]) and mix["counters_match"] and mix["verdicts_match"]
        probes = ", ".join(f"{p['position']} {min(p['samples_ns']):.0f}/"
                           f"{statistics.median(p['samples_ns']):.0f}" for p in e["probes"])
        print(f"{e['ruleset']} N={e['requested']} ({e['entries']} entries, "
              f"{e['memlock_bytes'] / 2**20:.1f} MiB maps): min/median ns {probes}; "
              f"mix mean {mix['mean_ns']:.1f} p90 {mix['p90_ns']:.0f}; checks {'ok' if ok else 'FAILED'}")
        if base is None:
            base = mix["mean_ns"]
        else:
            print(f"  mix mean ratio to N={out[0]['requested']}: {mix['mean_ns'] / base:.2f}x")


if __name__ == "__main__":
    main()
