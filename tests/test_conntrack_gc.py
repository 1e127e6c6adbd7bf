"""Expired conntrack entries are garbage-collected without traffic or
commands: the namespace's daemon (datapath/watch.py) sweeps the table
every few seconds, as netfilter's gc worker does, and counts what it
swept (``bpf-iptables-conntrack -S``: swept=)."""
from __future__ import annotations

import sys
import time

from tests.support.netns import bpf_command
from tests.test_conntrack_traffic import conntrack_command
from tests.test_datapath_traffic import datapath_command, ensure_bpffs, topology, udp

RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m conntrack --ctstate NEW
COMMIT
"""
# the table as the data path left it: read without the sweep every
# bpf-iptables-conntrack command does first
RAW_STATS = """\
from bpf_iptables import state
from bpf_iptables.conntrack import table as T
from bpf_iptables.datapath import attachment as A
s = T.stats(T.conntrack_dir(A.ns_pins(state.namespace_dir())))
print(s.entries, s.swept)
"""
BOUND = 12.0   # seconds after the expiry: the sweep interval (5 s) and slack


def raw_stats(ns) -> tuple[int, int]:
    r = ns.run([sys.executable, "-c", RAW_STATS])
    assert r.returncode == 0, r.stderr
    entries, swept = r.stdout.split()
    return int(entries), int(swept)


def test_idle_entries_are_swept_by_the_daemon():
    ensure_bpffs()
    with topology("ctgc") as ours:
        r = ours.server.run(conntrack_command("--set", "nf_conntrack_udp_timeout=1"))
        assert r.returncode == 0, r.stderr
        r = ours.server.run(bpf_command("iptables-restore"), input=RULES)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        assert udp(ours, 5000, 1) == 1
        assert raw_stats(ours.server) == (1, 0)
        expired = time.monotonic() + 1.0
        while raw_stats(ours.server) != (0, 1):
            assert time.monotonic() < expired + BOUND, "the expired entry is still there"
            time.sleep(0.5)
        took = time.monotonic() - expired
        assert ours.server.run(conntrack_command("-C")).stdout.strip() == "0"
        r = ours.server.run(conntrack_command("-L"))
        assert r.stdout == "" and "0 flow entries" in r.stderr
        assert "swept=1" in ours.server.run(conntrack_command("-S")).stdout
        print(f"swept {took:.1f} s after the expiry")
