"""python -m bench [--quick] [--runs N] [--ruleset FILE] [--readme] [--only frontend|datapath]

Front-end and data-path benchmarks of bpf-iptables against iptables-legacy
(and, for the data path, iptables-nft and a bare XDP drop program; see
bench/frontend.py and bench/datapath.py). Needs root (it creates
network namespaces) and the project's venv: `.venv/bin/python -m bench`."""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from . import datapath, dpreport, frontend, report
from .tools import REPO

RESULTS = REPO / "bench" / "results"
README_START = "<!-- bench:frontend:start -->"
README_END = "<!-- bench:frontend:end -->"
DATAPATH_START = "<!-- bench:datapath:start -->"
DATAPATH_END = "<!-- bench:datapath:end -->"


def default_ruleset() -> Path:
    """shared/ lies beside the repository (in CI too)."""
    shared = Path(os.environ.get("BPF_IPTABLES_SHARED_DIR", REPO.parent / "shared"))
    return shared / "rulesets" / "classbench-fw1-10k.rules"


def update_readme(table: str, start: str = README_START, end: str = README_END) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    block = f"{start}\n{table}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block")
    readme.write_text(pattern.sub(lambda _: block, text))


_START = time.monotonic()


def progress(s: str) -> None:
    print(f"bench: [{time.monotonic() - _START:5.0f} s] {s}", file=sys.stderr, flush=True)


def run_frontend(args: argparse.Namespace, runs: int, ruleset: Path) -> None:
    results = frontend.run(ruleset, runs, args.quick, progress=progress)
    report.write_csv(results, args.out / "frontend.csv")
    md = report.markdown(results)
    (args.out / "frontend.md").write_text(md)
    if args.readme:
        update_readme(report.summary_table(md))
    print(md)


def run_datapath(args: argparse.Namespace) -> None:
    results = datapath.run(datapath.Settings.for_mode(args.quick), progress=progress)
    dpreport.write_csv(results, args.out / "datapath.csv")
    png = dpreport.plot(results, args.out / "datapath.png")
    md = dpreport.markdown(results, png)
    (args.out / "datapath.md").write_text(md)
    if args.readme:
        update_readme(dpreport.summary(results), DATAPATH_START, DATAPATH_END)
    print(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    ap.add_argument("--quick", action="store_true",
                    help="a fast check, under 3 minutes: front end 3 runs and one profile "
                         "(default 7 runs); data path N up to 1k rules (ClassBench fw1 and "
                         "the synthetic worst case), every live system at synthetic 1k, "
                         "the control plane on classbench-fw1-1k")
    ap.add_argument("--runs", type=int,
                    help="front end: runs per measurement (at least 3)")
    ap.add_argument("--ruleset", type=Path, default=None,
                    help="front end: iptables-restore file (default: <repo>/../shared/"
                         "rulesets/classbench-fw1-10k.rules)")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="where frontend.{csv,md} and datapath.{csv,md,png} go")
    ap.add_argument("--readme", action="store_true",
                    help="also copy the summary tables into README.md")
    ap.add_argument("--only", choices=("frontend", "datapath"),
                    help="run one of the two benchmarks (default: both)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root: it creates network namespaces")
    runs = args.runs or (3 if args.quick else 7)
    if runs < 3:
        ap.error("--runs must be at least 3")
    ruleset = args.ruleset or default_ruleset()
    if not ruleset.is_file():
        ap.error(f"rule set {ruleset} not found (set --ruleset or BPF_IPTABLES_SHARED_DIR)")

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if args.only in (None, "frontend"):
        run_frontend(args, runs, ruleset)
    if args.only in (None, "datapath"):
        run_datapath(args)
    progress(f"done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
