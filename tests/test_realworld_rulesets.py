"""Real-world rule sets (tests/data/realworld/, see scripts/realworld/)
load into bpf-iptables and print back exactly as with iptables-legacy.

Model only (BPF_IPTABLES_DATAPATH=off, tests/conftest.py), except the
test that restores ufw's set into an attached namespace. For each
stored rule set: iptables-restore of the same input in a fresh namespace
per tool, then iptables-save, -S and -L -n -v -x must be identical
(normalised as every comparison test does). fail2ban's action is replayed
command by command: every command's output and exit status (including the
-C checks and the failing ones) must agree."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.netns import REPO, bpf_command, namespace
from tests.support.pair import pair

DATA = Path(__file__).resolve().parent / "data" / "realworld"
RULESETS = ("ufw.rules", "docker.rules", "kube-proxy.rules")
LISTINGS = (("-S",), ("-L", "-n", "-v", "-x"), ("-L", "-n", "--line-numbers"))


def rules_in(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


@pytest.mark.parametrize("name", RULESETS)
def test_ruleset_prints_back_as_iptables(name: str) -> None:
    text = (DATA / name).read_text()
    assert rules_in(text) >= 15, f"{name}: the stored rule set looks truncated"
    with pair("bpfrw", fast=True) as p:
        real = p.assert_same(tool="iptables-restore", input=text)
        assert real.returncode == 0, real
        saved = p.assert_same(tool="iptables-save")
        assert rules_in(saved.stdout) == rules_in(text)
        for listing in LISTINGS:
            p.assert_same(*listing)
        # restoring the saved text again is a fixed point on both sides
        p.assert_same(tool="iptables-restore", input=saved.stdout)
        again = p.assert_same(tool="iptables-save")
        assert again.stdout == saved.stdout


def fail2ban_commands() -> list[tuple[bool, list[str]]]:
    """(failure tolerated, argv) per line of the stored command script."""
    out = []
    for line in (DATA / "fail2ban-sshd.cmds").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        tolerated = line.startswith("? ")
        out.append((tolerated, shlex.split(line[2:] if tolerated else line)))
    return out


def test_fail2ban_multiport_action() -> None:
    commands = fail2ban_commands()
    assert len(commands) > 400
    failures = 0
    with pair("bpfrf", fast=True) as p:
        for i, (tolerated, argv) in enumerate(commands):
            real = p.assert_same(*argv)
            if real.returncode:
                failures += 1
                # fail2ban only ever expects the marked commands to fail
                assert tolerated, f"line {i}: {argv}: {real}"
            if i % 50 == 0 or argv[1] in ("-X",):
                for listing in LISTINGS:
                    p.assert_same(*listing)
        final = p.assert_same(tool="iptables-save")
        assert "f2b-sshd" not in final.stdout
    # the script exercises both outcomes of -C (and the failing -N/-D)
    assert failures > 50


def test_ufw_ruleset_enforced_when_attached() -> None:
    """ufw's rule set (recent, limit on jump rules, addrtype, conntrack,
    LOG) is enforced by the eBPF data path: an attached namespace takes the
    whole restore (exit 0) and prints it back; before, it was refused."""
    env = dict(os.environ, PYTHONPATH=str(REPO), BPF_IPTABLES_DATAPATH="on")
    text = (DATA / "ufw.rules").read_text()
    with namespace("bpfrwa") as ns:
        def run(tool: str, text: str | None = None) -> subprocess.CompletedProcess:
            return subprocess.run(["ip", "netns", "exec", ns.name, *bpf_command(tool)],
                                  input=text, capture_output=True, text=True, env=env,
                                  timeout=120)
        try:
            restore = run("iptables-restore", text)
            assert restore.returncode == 0, restore
            assert rules_in(run("iptables-save").stdout) == rules_in(text)
        finally:
            subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                            "bpf_iptables.cli.datapath", "detach"], env=env,
                           capture_output=True, timeout=60)
