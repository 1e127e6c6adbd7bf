"""The newcomer's path: README's two commands, CI, the demo, the test runner
and the benchmark's report."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.frontend import Measurement, Profile, Results, ratio
from bench.report import markdown, summary_table, write_csv

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:2]]


def test_readme_starts_with_the_setup_and_test_commands() -> None:
    assert readme_commands() == ["bash scripts/setup.sh", "bash scripts/test.sh"]
    assert (REPO / "README.md").read_text().splitlines()[2] == ""


def test_ci_runs_exactly_the_readme_commands() -> None:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in lines if line and not line.startswith("#")]
    assert "set -euo pipefail" in commands
    assert [c for c in commands if c.startswith("bash ")] == readme_commands()


def test_scripts_parse() -> None:
    for script in ("scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_demo_matches_iptables_legacy_and_removes_its_namespaces() -> None:
    before = _namespaces()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical to iptables-legacy" in proc.stdout
    assert "DIFFERS" not in proc.stdout
    assert "(exit status 2; the rule set is unchanged)" in proc.stdout
    assert {n for n in _namespaces() - before if n.startswith("bpft-demo-")} == set()


def test_demo_fails_when_bpf_iptables_refuses_the_rules(tmp_path: Path) -> None:
    # A rule set that iptables-legacy loads but bpf-iptables refuses must make
    # the demo fail, not print a half-loaded rule set as a success.
    rules = tmp_path / "refused.rules"
    rules.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j QUEUE\nCOMMIT\n")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(rules)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0


def test_test_script_fails_when_no_test_is_collected(tmp_path: Path) -> None:
    # pytest exits 5 when it collects nothing; test.sh must turn that into a
    # failure, so vanished tests cannot pass CI.
    env = dict(os.environ, BPF_IPTABLES_TEST_PATHS=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "test.sh"), "-q", "-p",
                           "no:cacheprovider"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "collected no tests" in proc.stderr


def test_test_script_passes_pytest_status_through(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_fails():\n    assert False\n")
    env = dict(os.environ, BPF_IPTABLES_TEST_PATHS=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "test.sh"), "-q", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout


def _results(legacy: list[float], ours: list[float]) -> Results:
    return Results(
        ruleset=Path("rules.rules"), rule_count=3, runs=3, quick=True,
        measurements=[
            Measurement("restore", "iptables-legacy", legacy),
            Measurement("restore", "bpf-iptables", ours),
            Measurement("append", "iptables-legacy", [0.01, 0.02, 0.03]),
            Measurement("append", "bpf-iptables", [], note="missing"),
            Measurement("python startup", "-", [0.03, 0.04, 0.05]),
        ],
        profiles=[Profile("p", "TOT", "CUM")],
    )


def test_bench_report_ratios_and_table(tmp_path: Path) -> None:
    res = _results([0.1, 0.3, 0.2], [0.4, 1.2, 0.8])
    assert ratio(res, "restore") == 4.0
    assert ratio(res, "append") is None
    md = markdown(res)
    table = summary_table(md).splitlines()
    assert table[0].startswith("| operation |")
    assert "| 200.0 ms (100.0 ms–300.0 ms) | 800.0 ms (400.0 ms–1.20 s) | 4.0x | yes |" in table[2]
    assert "n/a (missing)" in table[3]
    assert "TOT" in md and "CUM" in md
    write_csv(res, tmp_path / "f.csv")
    rows = (tmp_path / "f.csv").read_text().splitlines()
    assert rows[2].startswith("restore,bpf-iptables,3,0.800000,0.400000,1.200000,4.00,")
