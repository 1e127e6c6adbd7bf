"""The newcomer's path: README's two commands, CI, the demo, the test runner
and the benchmark's report."""
from __future__ import annotations

import os
import re
import subprocess
import sys
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
    for script in ("scripts/setup.sh", "scripts/test.sh", "scripts/demo.sh",
                   "scripts/demo-traffic.sh", ".ci/run"):
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


def _leftovers() -> dict[str, set[str]]:
    """What a demo could leave behind: its namespaces, our per-namespace
    state and pins, XDP programs and TC filters in the root namespace."""
    links = subprocess.run(["ip", "-d", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    tc = set()
    for name in (line.split(":")[1].strip().split("@")[0]
                 for line in links.splitlines() if line[:1].isdigit()):
        for kind in ("ingress", "egress"):
            out = subprocess.run(["tc", "filter", "show", "dev", name, kind],
                                 capture_output=True, text=True).stdout
            if "bpf" in out:
                tc.add(f"{name} {kind}")
    return {
        "namespaces": {n for n in _namespaces() if n.startswith("bpft-demo-")},
        "root xdp": {line for line in links.splitlines() if "xdp" in line},
        "root tc": tc,
    }


def _traffic_demo(*args: str, lock: Path) -> subprocess.CompletedProcess[str]:
    # its own xtables lock: /run/xtables.lock is shared by every namespace of
    # the machine, and the demo need not wait for unrelated work
    env = dict(os.environ, BPF_IPTABLES_PYTHON=sys.executable, XTABLES_LOCKFILE=str(lock))
    env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run(["bash", str(REPO / "scripts" / "demo-traffic.sh"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _assert_nothing_left(before: dict[str, set[str]], out: str) -> None:
    after = _leftovers()
    assert {k: after[k] - before[k] for k in after} == {k: set() for k in after}
    # the server's own state and pins, which the demo names (other sessions'
    # namespaces may come and go meanwhile: only ours are checked)
    m = re.search(r"^\(state (\S+), pins (\S+)\)$", out, re.M)
    assert m, out
    assert not Path(m[1]).exists() and not Path(m[2]).exists()


def test_traffic_demo_enforces_counts_and_cleans_up(tmp_path: Path) -> None:
    before = _leftovers()
    proc = _traffic_demo(lock=tmp_path / "xtables.lock")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "traffic demo OK" in out and "WRONG" not in out and "FAILED" not in out
    # the listing of the server's rule set, with the counters of the traffic
    listing = out.split("server$ bpf-iptables -L -v -n\n")[1]
    assert listing.startswith("Chain INPUT (policy DROP 2 packets, 120 bytes)\n")
    assert "    3   252 ACCEPT     1    --" in listing      # 3 pings of 84 bytes
    assert "    4   240 ACCEPT     17   --" in listing      # 4 datagrams of 60 bytes
    assert "TCP connect 10.200.0.2:8081          tried 1, established 0" in out
    assert "TCP connect 10.200.0.2:8080          tried 2, established 2" in out
    _assert_nothing_left(before, proc.stdout)


def test_traffic_demo_fails_when_the_rules_drop_what_must_pass(tmp_path: Path) -> None:
    # The demo's checks must be able to fail: the same rule set with UDP to
    # 5001 dropped first (the demo expects those datagrams delivered).
    rules = (REPO / "examples" / "traffic.rules").read_text().replace(
        "-A INPUT -i lo -j ACCEPT\n",
        "-A INPUT -i lo -j ACCEPT\n-A INPUT -p udp -m udp --dport 5001 -j DROP\n")
    path = tmp_path / "drops-5001.rules"
    path.write_text(rules)
    before = _leftovers()
    proc = _traffic_demo(str(path), lock=tmp_path / "xtables.lock")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "traffic demo FAILED" in proc.stdout
    assert "udp5001: 0 of 4 arrived, expected 4" in proc.stdout
    assert ("not part of the demo's rule set: -A INPUT -p udp -m udp --dport 5001 -j DROP [4:240]"
            in proc.stdout)
    _assert_nothing_left(before, proc.stdout)


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
