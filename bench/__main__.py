"""python -m bench [--quick] [--runs N] [--ruleset FILE] [--readme]

Front-end benchmark of bpf-iptables against iptables-legacy (see
bench/frontend.py). Needs root (it creates network namespaces) and the
project's venv: `.venv/bin/python -m bench`."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from . import frontend, report
from .tools import REPO

RESULTS = REPO / "bench" / "results"
README_START = "<!-- bench:frontend:start -->"
README_END = "<!-- bench:frontend:end -->"


def default_ruleset() -> Path:
    """shared/ lies beside the repository (in CI too)."""
    shared = Path(os.environ.get("BPF_IPTABLES_SHARED_DIR", REPO.parent / "shared"))
    return shared / "rulesets" / "classbench-fw1-10k.rules"


def update_readme(md: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    block = f"{README_START}\n{report.summary_table(md)}\n{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {README_START} ... {README_END} block")
    readme.write_text(pattern.sub(lambda _: block, text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    ap.add_argument("--quick", action="store_true",
                    help="3 runs and one profile (a fast check; default is 7 runs)")
    ap.add_argument("--runs", type=int, help="runs per measurement (at least 3)")
    ap.add_argument("--ruleset", type=Path, default=None,
                    help="iptables-restore file (default: <repo>/../shared/rulesets/"
                         "classbench-fw1-10k.rules)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where frontend.{csv,md} go")
    ap.add_argument("--readme", action="store_true",
                    help="also copy the summary table into README.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root: it creates network namespaces")
    runs = args.runs or (3 if args.quick else 7)
    if runs < 3:
        ap.error("--runs must be at least 3")
    ruleset = args.ruleset or default_ruleset()
    if not ruleset.is_file():
        ap.error(f"rule set {ruleset} not found (set --ruleset or BPF_IPTABLES_SHARED_DIR)")

    results = frontend.run(ruleset, runs, args.quick,
                           progress=lambda s: print(f"bench: {s}", file=sys.stderr, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(results, args.out / "frontend.csv")
    md = report.markdown(results)
    (args.out / "frontend.md").write_text(md)
    if args.readme:
        update_readme(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
