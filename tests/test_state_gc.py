"""State of deleted namespaces is removed; live namespaces keep theirs."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.support.netns import namespace

COOKIE = [sys.executable, "-c", "from bpf_iptables.state import netns_cookie; print(netns_cookie())"]


def state_dir(ns) -> Path:
    from bpf_iptables.state import run_dir

    return run_dir() / f"netns-{ns.run(COOKIE).stdout.strip()}"


def test_state_of_deleted_namespace_is_collected_on_next_first_use():
    with namespace("bpfgc") as live:
        assert live.bpf_iptables("-A", "INPUT", "-j", "ACCEPT").returncode == 0
        live_dir = state_dir(live)
        with namespace("bpfgc") as gone:
            assert gone.bpf_iptables("-N", "X").returncode == 0
            gone_dir = state_dir(gone)
            assert (gone_dir / "netns.id").is_file()
        assert gone_dir.is_dir()  # nothing has looked yet
        with namespace("bpfgc") as newcomer:
            assert newcomer.bpf_iptables("-S").returncode == 0
            assert not gone_dir.exists()
            assert state_dir(newcomer).is_dir()
        assert live_dir.is_dir()
        assert live.bpf_iptables("-S", "INPUT").stdout == "-P INPUT ACCEPT\n-A INPUT -j ACCEPT\n"
