"""-m limit in the eBPF data path (bpf/lib/limit.h, compiler.rule_limit).

Packet trains through BPF_PROG_TEST_RUN against xt_limit's arithmetic
(extensions/limit.py, the reference model), and real traffic on lo in two
namespaces, one under iptables-legacy, one under bpf-iptables, sent at the
same time: accepted counts equal for bursts, within 5% for paced trains.
Refusals: a limit that is not the rule's last match, or in a chain two
hooks reach (a limit on a jump rule: tests/test_recent_*.py)."""
from __future__ import annotations

import re
import sys
import threading
import time

import pytest

from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.extensions.limit import LimitMatch
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import bpf_command, entered, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

LIMITED = ["-A INPUT -p udp -m limit --limit 10/s --limit-burst 5 -j ACCEPT",
           "-A INPUT -p udp -j DROP"]


def udp_frame() -> bytes:
    p = Packet(hook="INPUT", in_iface="lo", src=ip_to_int("10.0.0.1"),
               dst=ip_to_int("10.0.0.2"), proto=17, sport=1000, dport=2000)
    p.length = 28
    return frame(p)


@pytest.fixture(scope="module")
def harness():
    with entered("bpflim"):
        h = Harness()
        yield h
        h.close()


def test_burst_is_exact_and_refills_at_the_rate(harness):
    table = table_from_lines(LIMITED)
    prog, c = harness.load(table)
    assert c.limits and [e.limit for e in c.entries] == [1, 0, 0]
    f = udp_frame()
    first = [run_frame(prog.fd, f).name for _ in range(20)]
    assert first == ["PASS"] * 5 + ["DROP"] * 15          # the burst, exactly
    time.sleep(0.25)                                        # 10/s: 2.5 tokens
    again = [run_frame(prog.fd, f).name for _ in range(10)]
    passed = again.count("PASS")
    assert passed in (2, 3) and again[:passed] == ["PASS"] * passed
    counters = prog.rule_counters()
    assert counters[("INPUT", 0)].packets == 5 + again.count("PASS")
    assert counters[("INPUT", 1)].packets == 30 - counters[("INPUT", 0)].packets


def test_a_rewrite_restarts_the_buckets_full(harness):
    # iptables-legacy replaces the table on every change and limit_mt_check()
    # gives every rule a full bucket then; a map rewrite does the same
    table = table_from_lines(LIMITED)
    prog, _ = harness.load(table)
    f = udp_frame()
    assert [run_frame(prog.fd, f).name for _ in range(6)].count("PASS") == 5
    prog, _ = harness.load(table)
    assert [run_frame(prog.fd, f).name for _ in range(6)].count("PASS") == 5


def test_paced_train_follows_xt_limit_within_5_percent(harness):
    table = table_from_lines(["-A INPUT -p udp -m limit --limit 50/s --limit-burst 3 -j ACCEPT",
                              "-A INPUT -p udp -j DROP"])
    prog, _ = harness.load(table)
    f = udp_frame()
    model, rule = LimitMatch(), table.chains["INPUT"].rules[0]
    data = rule.matches[-1].data
    ours = expected = 0
    start = time.monotonic()
    for i in range(400):                                    # ~200/s for ~2 s
        while time.monotonic() < start + i * 0.005:
            pass
        now = time.monotonic()
        ours += run_frame(prog.fd, f).name == "PASS"
        pkt = Packet(hook="INPUT", proto=17)
        pkt.time = now
        expected += model.matches(data, pkt)
    assert expected > 90
    assert abs(ours - expected) <= max(1, 0.05 * expected), (ours, expected)


def test_limit_with_other_matches_is_checked_only_when_they_hold(harness):
    # a packet the rule's other matches reject must not take a token
    table = table_from_lines(["-A INPUT -p udp --dport 2000 -m limit --limit 1/h "
                              "--limit-burst 2 -m comment --comment x -j ACCEPT",
                              "-A INPUT -j DROP"])
    prog, _ = harness.load(table)
    other = bytearray(udp_frame())
    other[14 + 20 + 2:14 + 20 + 4] = (2001).to_bytes(2, "big")
    for _ in range(5):
        assert run_frame(prog.fd, bytes(other)).name == "DROP"
    f = udp_frame()
    assert [run_frame(prog.fd, f).name for _ in range(4)] == ["PASS", "PASS", "DROP", "DROP"]


@pytest.mark.parametrize("lines, why", [
    (["-A INPUT -m limit --limit 1/s -p tcp -m tcp --dport 22 -j ACCEPT"], "last match"),
    (["-N c", "-A c -m limit -j ACCEPT", "-A INPUT -j c", "-A OUTPUT -j c"], "both reach"),
])
def test_what_cannot_be_exact_is_refused(lines, why):
    table = table_from_lines(lines)
    with pytest.raises(NotSupported, match=why):
        for hook in ("INPUT", "OUTPUT"):
            compile_chain(table, hook, {"lo": 1})


# -- real traffic against iptables-legacy ---------------------------------------

SENDER = """
import socket, sys, time
n, gap = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(n):
    while time.monotonic() < start + i * gap:
        pass
    s.sendto(b"x", ("127.0.0.1", 9999))
"""

ON = {"BPF_IPTABLES_DATAPATH": "on"}


def accepted(ns, ours: bool) -> list[int]:
    argv = (bpf_command("iptables", "-L", "INPUT", "-v", "-x", "-n") if ours
            else ["iptables-legacy", "-L", "INPUT", "-v", "-x", "-n"])
    out = ns.run(argv, env=ON).stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


def send_both(real, ours, n: int, gap: float) -> None:
    """The same train in both namespaces at the same time."""
    argv = [sys.executable, "-c", SENDER, str(n), str(gap)]
    t = threading.Thread(target=real.run, args=(argv,))
    t.start()
    ours.run(argv)
    t.join()


def test_real_traffic_matches_iptables_legacy():
    ensure_bpffs()
    with namespace("limr") as real, namespace("limo") as ours:
        try:
            for ns in (real, ours):
                ns.run(["ip", "link", "set", "lo", "up"])
            rules = [["-A", "INPUT", "-p", "udp", "--dport", "9999", "-m", "limit",
                      "--limit", "10/s", "--limit-burst", "5", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP"]]
            for r in rules:
                assert real.iptables(*r).returncode == 0
                res = ours.run(bpf_command("iptables", *r), env=ON)
                assert res.returncode == 0, res.stderr
            # a burst: exactly the same
            send_both(real, ours, 20, 0)
            assert accepted(real, False) == accepted(ours, True) == [5, 15]
            # a change replaces the table: every bucket starts full again
            for ns, argv in ((real, ["iptables-legacy"]), (ours, bpf_command("iptables"))):
                assert ns.run([*argv, "-A", "INPUT", "-p", "icmp"],
                              env=ON).returncode == 0
                assert ns.run([*argv, "-Z"], env=ON).returncode == 0
            send_both(real, ours, 20, 0)
            assert accepted(real, False)[:2] == accepted(ours, True)[:2] == [5, 15]
            # a paced train: 150/s for 2 s, 10/s accepted
            for ns, argv in ((real, ["iptables-legacy"]), (ours, bpf_command("iptables"))):
                assert ns.run([*argv, "-Z"], env=ON).returncode == 0
            send_both(real, ours, 300, 1 / 150)
            r, o = accepted(real, False)[0], accepted(ours, True)[0]
            assert r >= 20 and abs(r - o) <= max(1, 0.05 * r), (r, o)
        finally:
            ours.run(datapath_command("detach"))


def test_refused_on_the_command_line_with_exit_2():
    ensure_bpffs()
    with namespace("limx") as ns:
        try:
            r = ns.run(bpf_command("iptables", "-A", "INPUT", "-m", "limit", "-p", "tcp",
                                   "-m", "tcp", "--dport", "22", "-j", "ACCEPT"), env=ON)
            assert r.returncode == 2 and re.search("last match", r.stderr), r
            assert ns.run(bpf_command("iptables", "-S", "INPUT")).stdout == "-P INPUT ACCEPT\n"
        finally:
            ns.run(datapath_command("detach"))


# -- against the reference model: chains, copies, LOG ------------------------------

def test_user_chains_log_and_limit_against_the_reference():
    """Every verdict and counter as reference.evaluate: a limit rule in a
    chain called from two places keeps one bucket (the kernel's one per
    rule), LOG rules count and continue, RETURN and -g around them. (1/h
    refills nothing while the test runs: the outcome does not depend on
    timing.)"""
    from bpf_iptables.datapath.compiler import FIELD_ORDER, Shape

    lines = ["-N LIM", "-N G",
             "-A LIM -p udp -j LOG --log-prefix lim",
             "-A LIM -p udp -m limit --limit 1/h --limit-burst 3 -j ACCEPT",
             "-A LIM -p udp --dport 7 -j RETURN",
             "-A LIM -j DROP",
             "-A G -p tcp -m limit --limit 1/h --limit-burst 2 -m comment --comment g -j RETURN",
             "-A G -j LOG",
             "-A G -p tcp -j DROP",
             "-A INPUT -p udp --dport 1:10 -j LIM",
             "-A INPUT -p udp --dport 11:20 -j LIM",
             "-A INPUT -p tcp -g G",
             "-A INPUT -p udp -m limit --limit 1/h --limit-burst 1 -j LOG",
             "-P INPUT DROP"]
    shape = Shape(nwords=1, steps=60, ncounters=32,
                  fields=frozenset({"proto", "flags", "sport", "dport"}), proto_max=8,
                  sport_bsize=16, dport_bsize=16, nlimits=8, nlogs=8)
    assert set(shape.fields) <= set(FIELD_ORDER)
    with entered("bpflimr"):
        h = Harness(shape)
        try:
            table = table_from_lines(lines)
            packets = []
            for i in range(30):
                proto = (17, 6, 17)[i % 3]
                packets.append(Packet(in_iface="lo", src=ip_to_int("10.1.1.1"),
                                      dst=ip_to_int("10.1.1.2"), proto=proto, sport=999,
                                      dport=1 + i % 20, length=60))
            report = h.check(table, packets)
            assert report.mismatches == []
            counts = [r.counters.packets for r in table.chains["LIM"].rules]
            assert counts[1] == 3   # one bucket for both call sites
        finally:
            h.close()
