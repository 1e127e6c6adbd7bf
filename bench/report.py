"""Writing benchmark results: a CSV for machines, Markdown for the README."""
from __future__ import annotations

import csv
import datetime
import os
import platform
from pathlib import Path

from .frontend import Measurement, Results, ratio

TARGET_RATIO = 5.0   # the project's aim: within 5x of iptables-legacy
OPERATIONS = {
    "restore": "restore of the rule set (`*-restore < file`)",
    "append": "one `-A INPUT` with the rule set loaded",
}


def write_csv(results: Results, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["operation", "tool", "runs", "median_s", "min_s", "max_s",
                    "ratio_to_legacy", "ruleset", "rules", "note"])
        for m in results.measurements:
            r = ratio(results, m.operation) if m.tool == "bpf-iptables" else None
            w.writerow([m.operation, m.tool, len(m.times),
                        *((f"{v:.6f}" for v in _stats(m)) if m.available else ("", "", "")),
                        f"{r:.2f}" if r is not None else "",
                        results.ruleset.name, results.rule_count, m.note])


def _stats(m: Measurement) -> tuple[float, float, float]:
    return m.median, min(m.times), max(m.times)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _cell(m: Measurement) -> str:
    if not m.available:
        return f"n/a ({m.note})" if m.note else "n/a"
    med, lo, hi = _stats(m)
    return f"{_fmt(med)} ({_fmt(lo)}–{_fmt(hi)})"


def markdown(results: Results) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick" if results.quick else "full"
    lines = [
        "# Front-end benchmark: bpf-iptables vs iptables-legacy",
        "",
        f"Measured {now} by `python -m bench{' --quick' if results.quick else ''}` ({mode} mode) "
        f"on Linux {platform.release()}, {os.cpu_count()} CPUs; rule set "
        f"`{results.ruleset.name}` ({results.rule_count} rules); {results.runs} runs each, "
        "each in private network namespaces, the two tools alternating. "
        "Cells: median (min–max) wall-clock time of the whole command, process start included. "
        "Ratio: bpf-iptables median / iptables-legacy median, same run.",
        "",
        "| operation | iptables-legacy | bpf-iptables | ratio | within 5x |",
        "|---|---|---|---|---|",
    ]
    for op, label in OPERATIONS.items():
        legacy = results.find(op, "iptables-legacy")
        ours = results.find(op, "bpf-iptables")
        r = ratio(results, op)
        ratio_cell = f"{r:.1f}x" if r is not None else "n/a"
        ok = "n/a" if r is None else ("yes" if r <= TARGET_RATIO else "no")
        lines.append(f"| {label} | {_cell(legacy)} | {_cell(ours)} | {ratio_cell} | {ok} |")
    lines += ["", "Fixed costs contained in the times above (same machine, same run):", "",
              "| what | median (min–max) |", "|---|---|"]
    for m in results.measurements:
        if m.tool == "-":
            lines.append(f"| {m.operation} | {_cell(m)} |")
    notes = [m for m in results.measurements if m.note and m.available]
    if notes:
        lines += [""] + [f"Note ({m.operation}, {m.tool}): {m.note}." for m in notes]
    for p in results.profiles:
        lines += ["", f"## cProfile: {p.title}", "",
                  "Top 10 by own time (tottime):", "", "```", p.by_tottime, "```", "",
                  "Top 10 by cumulative time:", "", "```", p.by_cumulative, "```"]
    return "\n".join(lines) + "\n"


def summary_table(md: str) -> str:
    """The first table of the Markdown report (what the README embeds)."""
    first: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            first.append(line)
        elif first:
            break
    return "\n".join(first)
