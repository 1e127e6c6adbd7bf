"""TEST_RUN of one rule set only, by the bench's own code path
(bench/datapath.run_testrun: the worker in a namespace the bench makes and
deletes, pinned to the last CPU, counters and verdicts checked against the
reference), without the rest of ``python -m bench``:

    python -m bench.fw1_testrun [RULESET] [--counts 10 10000] [--rounds 3] [--json OUT]

RULESET: a file name under the shared rule sets (classbench-acl1-10k.rules)
or a path, or ``synthetic-worst`` (bench/workload.py); default
classbench-fw1-10k.rules (``--ruleset`` also names it).
Prints per round and N the probes' minimum and median ns (7 samples of
100,000 runs, as the full bench) and the traffic mix's mean and p90 (64
rule packets and 16 policy packets, 20,000 runs each), and the ratios the
aims use (mix mean and slowest probe median over the first N's). Within a
round the worker interleaves the samples of every N (bench/testrun_worker.py);
the 10-rule cost still moves between runs on a loaded machine, so with
``--rounds`` above 1 every N is measured again in each round and the summary
gives per N the minimum and median over the rounds and the per-round ratios."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from .datapath import SYNTHETIC, Settings, median_ns, run_testrun, shared_dir, worst_probe
from .frontend import env_for_children


def ruleset_path(name: str) -> Path:
    """A shared rule set by file name, or any path."""
    path = Path(name)
    return path if path.exists() else shared_dir() / "rulesets" / name


def checks_ok(e: dict) -> bool:
    mix = e["mix"]
    return (all(p["counted"] == p["sent"] and p["verdict"] == p["reference_verdict"]
                for p in e["probes"]) and mix["counters_match"] and mix["verdicts_match"])


def print_round(out: list[dict]) -> list[tuple[float, float]]:
    """One run's lines; returns per N (mix mean ratio, slowest ratio) to the first N."""
    ratios = []
    base = out[0]
    for e in out:
        mix = e["mix"]
        probes = ", ".join(f"{p['position']} {min(p['samples_ns']):.0f}/"
                           f"{statistics.median(p['samples_ns']):.0f}" for p in e["probes"])
        print(f"{e['ruleset']} N={e['requested']} ({e['entries']} entries, "
              f"{e['memlock_bytes'] / 2**20:.1f} MiB maps): min/median ns {probes}; "
              f"mix mean {mix['mean_ns']:.1f} p90 {mix['p90_ns']:.0f}; "
              f"checks {'ok' if checks_ok(e) else 'FAILED'}")
        r = (mix["mean_ns"] / base["mix"]["mean_ns"],
             median_ns(worst_probe(e)) / median_ns(worst_probe(base)))
        if e is not base:
            print(f"  ratio to N={base['requested']}: mix mean {r[0]:.2f}x, slowest probe "
                  f"{r[1]:.2f}x")
        ratios.append(r)
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ruleset_arg", nargs="?", metavar="RULESET")
    ap.add_argument("--ruleset", default="classbench-fw1-10k.rules")
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 10_000])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", help="also write the worker's raw results here (a list per round)")
    args = ap.parse_args()
    name = args.ruleset_arg or args.ruleset
    if name == SYNTHETIC:
        sources: list[Path] = []
        settings = replace(Settings.for_mode(False), counts=(), rulesets=(),
                           synthetic_counts=tuple(args.counts))
    else:
        sources = [ruleset_path(name)]
        settings = replace(Settings.for_mode(False), counts=tuple(args.counts),
                           rulesets=(sources[0].name,), synthetic_counts=())
    cpu = max(os.sched_getaffinity(0))
    rounds: list[list[dict]] = []
    ratios: list[list[tuple[float, float]]] = []
    for r in range(args.rounds):
        print(f"round {r + 1}: load average before: {os.getloadavg()}", file=sys.stderr)
        out = run_testrun(settings, sources, cpu, env_for_children(),
                          lambda s: print(s, file=sys.stderr))
        rounds.append(out)
        ratios.append(print_round(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rounds if args.rounds > 1 else rounds[0], fh)
    if args.rounds > 1:
        print(f"over {args.rounds} rounds (min / median):")
        for i, n in enumerate(args.counts):
            mixes = [rd[i]["mix"]["mean_ns"] for rd in rounds]
            worst = [median_ns(worst_probe(rd[i])) for rd in rounds]
            line = (f"  N={n}: mix mean {min(mixes):.1f} / {statistics.median(mixes):.1f}, "
                    f"slowest probe {min(worst):.0f} / {statistics.median(worst):.0f}")
            if i:
                line += ("; ratios per round: mix "
                         + " ".join(f"{rt[i][0]:.2f}" for rt in ratios)
                         + ", slowest " + " ".join(f"{rt[i][1]:.2f}" for rt in ratios))
            print(line)


if __name__ == "__main__":
    main()
