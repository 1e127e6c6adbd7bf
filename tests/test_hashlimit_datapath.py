"""-m hashlimit in the eBPF data path (bpf/lib/hashlimit.h,
datapath/hashlimit_tables.py, compiler.rule_hashlimit).

Through BPF_PROG_TEST_RUN: bursts exact per key, independent buckets per
source (mode srcip, srcmask), ports and destination masks against the
reference model, --hashlimit-above, a full table hot-drops (htable-max), a
shared name is one table with its creator's configuration, a paced train
within 5% of xt_hashlimit's arithmetic, hashlimit on jump and goto rules
(once per packet). Refusals. Real traffic is in
tests/test_hashlimit_traffic.py."""
from __future__ import annotations

import time

import pytest

from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.extensions.hashlimit import EXTENSIONS, HashlimitMatch
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import entered

HL = "-m hashlimit --hashlimit-name"


def pkt(src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 1000,
        dport: int = 2000, proto: int = 17) -> Packet:
    p = Packet(hook="INPUT", in_iface="lo", src=ip_to_int(src), dst=ip_to_int(dst),
               proto=proto, sport=sport, dport=dport)
    p.length = 28 if proto == 17 else 40
    return p


def verdicts(prog, p: Packet, n: int) -> list[str]:
    f = frame(p)
    return [run_frame(prog.fd, f).name for _ in range(n)]


@pytest.fixture(scope="module")
def harness():
    with entered("bpfhl"):
        h = Harness()
        yield h
        h.close()


@pytest.fixture(autouse=True)
def fresh_reference():
    """The reference's tables live as long as the process: each test
    starts without any, as a fresh namespace does."""
    EXTENSIONS[0].tables.clear()
    yield
    EXTENSIONS[0].tables.clear()


def test_bursts_are_exact_per_source_and_refill_at_the_rate(harness):
    table = table_from_lines([f"-A INPUT -p udp {HL} t1 --hashlimit-upto 10/s "
                              "--hashlimit-burst 5 --hashlimit-mode srcip -j ACCEPT",
                              "-A INPUT -p udp -j DROP"])
    prog, c = harness.load(table)
    assert [e.hashlimit for e in c.entries] == [1, 0, 0] and c.shape.nhashlimits == 1
    a, b = pkt("10.0.0.1"), pkt("10.0.0.7")
    assert verdicts(prog, a, 8) == ["PASS"] * 5 + ["DROP"] * 3     # the burst, exactly
    assert verdicts(prog, b, 8) == ["PASS"] * 5 + ["DROP"] * 3     # its own bucket
    time.sleep(0.25)                                               # 10/s: 2.5 tokens
    again = verdicts(prog, a, 6)
    n = again.count("PASS")
    assert n in (2, 3) and again[:n] == ["PASS"] * n
    counters = prog.rule_counters()
    assert counters[("INPUT", 0)].packets == 10 + n
    assert counters[("INPUT", 1)].packets == 22 - 10 - n


def test_keys_masks_and_ports_against_the_reference(harness):
    """Verdicts and counters as reference.evaluate for several tables
    (1/hour: no refill while the test runs, so timing does not matter)."""
    table = table_from_lines([
        f"-A INPUT -p udp --dport 2000:2999 {HL} nets --hashlimit-upto 1/h "
        "--hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-srcmask 24 -j ACCEPT",
        f"-A INPUT -p udp --dport 3000:3999 {HL} flows --hashlimit-upto 1/h "
        "--hashlimit-burst 2 --hashlimit-mode srcip,srcport,dstip,dstport "
        "--hashlimit-dstmask 16 -j ACCEPT",
        f"-A INPUT -p tcp {HL} all --hashlimit-upto 1/h --hashlimit-burst 4 -j ACCEPT",
        f"-A INPUT -p udp --dport 4000:4999 {HL} over --hashlimit-above 1/h "
        "--hashlimit-burst 2 --hashlimit-mode dstport -m comment --comment x -j DROP",
        "-A INPUT -p udp --dport 4000:4999 -j ACCEPT",
        "-P INPUT DROP"])
    packets = []
    for i in range(120):
        src = f"10.0.{i % 3}.{1 + i % 5}"
        dst = f"10.{1 + i % 2}.{i % 4}.1"
        dport = (2000, 3000, 4000, 4001)[i % 4] + (i % 3 if i % 4 == 1 else 0)
        proto = 6 if i % 7 == 0 else 17
        packets.append(pkt(src, dst, 1000 + i % 2, dport, proto))
    report = harness.check(table, packets)
    assert report.mismatches == []
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    assert counts[0] == 3 * 3          # three /24s, a burst of 3 each
    assert counts[2] == 4              # one bucket for every tcp packet
    assert counts[3] > 0 and counts[4] > 0   # above: over the limit, dropped


def test_a_full_table_hot_drops_new_keys(harness):
    # htable-size 1, max 2: the kernel's dsthash_alloc_init() refuses a
    # third key and the packet is dropped, no rule counted
    table = table_from_lines([f"-A INPUT -p udp {HL} small --hashlimit-upto 1/h "
                              "--hashlimit-mode srcip --hashlimit-htable-size 1 "
                              "--hashlimit-htable-max 2 -j ACCEPT",
                              "-A INPUT -p udp -j ACCEPT"])
    packets = [pkt(f"10.0.0.{1 + i % 3}") for i in range(9)]
    report = harness.check(table, packets)
    assert report.mismatches == []
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [6, 0]
    assert table.chains["INPUT"].counters.packets == 0


def test_one_name_is_one_table_with_its_creators_configuration(harness):
    # htable_find_get() finds by name: the second rule uses the table the
    # first created (its mode, burst and rate)
    table = table_from_lines([
        f"-A INPUT -p udp --dport 2000 {HL} same --hashlimit-upto 1/h "
        "--hashlimit-burst 3 --hashlimit-mode srcip -j ACCEPT",
        f"-A INPUT -p udp --dport 2001 {HL} same --hashlimit-upto 1/s "
        "--hashlimit-burst 50 -j ACCEPT",
        "-A INPUT -p udp -j DROP"])
    prog, _ = harness.load(table)
    assert verdicts(prog, pkt(dport=2000), 2) == ["PASS"] * 2
    assert verdicts(prog, pkt(dport=2001), 3) == ["PASS", "DROP", "DROP"]
    assert verdicts(prog, pkt("10.9.9.9", dport=2001), 4) == ["PASS"] * 3 + ["DROP"]


def test_paced_train_follows_xt_hashlimit_within_5_percent(harness):
    table = table_from_lines([f"-A INPUT -p udp {HL} paced --hashlimit-upto 50/s "
                              "--hashlimit-burst 3 --hashlimit-mode srcip -j ACCEPT",
                              "-A INPUT -p udp -j DROP"])
    prog, _ = harness.load(table)
    model, data = HashlimitMatch(), table.chains["INPUT"].rules[0].matches[-1].data
    frames = [frame(pkt("10.0.0.1")), frame(pkt("10.0.0.2"))]
    ours = [0, 0]
    expected = [0, 0]
    start = time.monotonic()
    for i in range(400):                                    # ~200/s for ~2 s
        while time.monotonic() < start + i * 0.005:
            pass
        now = time.monotonic()
        k = i % 2                                           # two sources, 100/s each
        ours[k] += run_frame(prog.fd, frames[k]).name == "PASS"
        p = pkt(("10.0.0.1", "10.0.0.2")[k])
        p.time = now
        expected[k] += model.matches(data, p)
    for o, e in zip(ours, expected):
        assert e > 90
        assert abs(o - e) <= max(1, 0.05 * e), (ours, expected)


def test_byte_rates_follow_xt_hashlimit_within_5_percent(harness):
    """--hashlimit-upto 50kb/s --hashlimit-burst 100kb: 16-byte chunks, a
    full second of credit, then two refills from the burst
    (hashlimit_byte_cost()); 1,000-byte datagrams at 200/s for 2 s, mixed
    with 100-byte ones, each source against xt_hashlimit's arithmetic."""
    table = table_from_lines([f"-A INPUT -p udp {HL} bytes --hashlimit-upto 50kb/s "
                              "--hashlimit-burst 100kb --hashlimit-mode srcip -j ACCEPT",
                              "-A INPUT -p udp -j DROP"])
    prog, _ = harness.load(table)
    model, data = HashlimitMatch(), table.chains["INPUT"].rules[0].matches[-1].data
    sizes = (1000, 100)
    frames = {}
    for n in sizes:
        p = pkt("10.0.0.1")
        p.length = n
        frames[n] = frame(p)
    ours = expected = 0
    start = time.monotonic()
    for i in range(400):
        while time.monotonic() < start + i * 0.005:
            pass
        now = time.monotonic()
        n = sizes[1] if i % 5 == 4 else sizes[0]
        ours += run_frame(prog.fd, frames[n]).name == "PASS"
        p = pkt("10.0.0.1")
        p.length, p.time = n, now
        expected += model.matches(data, p)
    assert 150 < expected < 400
    assert abs(ours - expected) <= max(1, 0.05 * expected), (ours, expected)


@pytest.mark.parametrize("lines, why", [
    ([f"-A INPUT {HL} x --hashlimit-upto 1/s -p tcp -m tcp --dport 22 -j ACCEPT"],
     "last match"),
    ([f"-A INPUT -m limit {HL} x --hashlimit-upto 1/s -j ACCEPT"], "more than one"),
    ([f"-A INPUT {HL} x --hashlimit-upto 1/s --hashlimit-rate-match -j ACCEPT"],
     "rate-match"),
    ([f"-A INPUT {HL} a{i} --hashlimit-upto 1/s --hashlimit-htable-max 1048576 -j ACCEPT"
      for i in range(2)], "entries"),
])
def test_what_cannot_be_exact_is_refused(lines, why):
    table = table_from_lines(lines)
    with pytest.raises(NotSupported, match=why):
        compile_chain(table, "INPUT", {"lo": 1})


def test_the_tail_call_budget_counts_the_stateful_programs():
    """Two tail calls per hashlimit/recent entry come out of the scan's 31:
    a loaded program whose steps leave too few (the verifier's E2BIG
    retries cut them) does not cover the rule set, though its scan alone
    would fit; the compiler refuses past the budget."""
    from dataclasses import replace

    lines = [f"-A INPUT -p udp --dport {2000 + i} {HL} b{i % 2} --hashlimit-upto 1/s -j ACCEPT"
             for i in range(5)]
    lines += [f"-A INPUT -p udp --dport {3000 + i} -m recent --set --name r{i}" for i in range(5)]
    c = compile_chain(table_from_lines(lines), "INPUT", {"lo": 1})
    assert c.shape.stateful == 10 and c.shape.invocations(c.shape.steps) == 1 + 20
    one_step = replace(c.shape, steps=1)
    assert -(-c.shape.scan_steps // 1) <= 31 < c.shape.invocations(1)
    assert not one_step.covers(c.shape)
    assert one_step.covers(replace(c.shape, stateful=0))
    with pytest.raises(NotSupported, match="tail calls"):
        compile_chain(table_from_lines(lines + [f"-A INPUT {HL} b0 --hashlimit-upto 1/s"] * 6),
                      "INPUT", {"lo": 1})


def test_on_jump_rules_a_bucket_is_taken_once_per_packet(harness):
    """hashlimit on a jump and on a goto (memo bits, as limit and recent):
    the bucket is taken once, at the jump entry, not once per inlined rule
    of the called chain; a recent match in the same classifier (its own
    program, the other self_map slot) answers alongside. Verdicts and
    every counter as the reference model."""
    from bpf_iptables.extensions import find_match

    find_match("recent").tables.clear()
    table = table_from_lines([
        "-N C", "-A C -p udp --dport 2000 -j DROP", "-A C -j DROP",
        f"-A INPUT -p udp {HL} jump --hashlimit-upto 1/h --hashlimit-burst 3 "
        "--hashlimit-mode srcip -j C",
        "-N G", "-A G -p udp --dport 2001 -m recent --set --name HLR -j DROP",
        f"-A INPUT -p udp {HL} goto --hashlimit-upto 1/h --hashlimit-burst 4 -g G",
        "-A INPUT -m recent --rcheck --name HLR -j DROP",
        "-A INPUT -j ACCEPT"])
    c = compile_chain(table, "INPUT", harness.interfaces, harness.min_shape)
    jumps = [e for e in c.entries if e.set]
    assert c.shape.memo and len(jumps) == 2 and all(e.hashlimit for e in jumps)
    packets = [pkt(f"10.0.0.{1 + i % 2}", dport=(2000, 2001, 2002)[i // 2 % 3])
               for i in range(24)] + [pkt("10.0.0.9", dport=2002) for _ in range(6)]
    report = harness.check(table, packets)
    assert report.mismatches == []
    counts = {n: [r.counters.packets for r in table.chains[n].rules] for n in ("C", "G", "INPUT")}
    assert sum(counts["C"]) == 3 * 3            # a burst of 3 per source, not 3 per rule
    assert counts["INPUT"][1] == 4              # the goto's bucket: 4 packets in all
    assert counts["G"][0] > 0 and counts["INPUT"][2] > 0   # listed by G, then dropped
    assert counts["INPUT"][3] == 3              # 10.0.0.9 past both buckets, never listed


def test_forward_classifier_against_the_reference():
    """The same check in the FORWARD classifier (srcip,dstip with masks)."""
    with entered("bpfhlf"):
        h = Harness(hook="FORWARD")
        try:
            table = table_from_lines([
                f"-A FORWARD -p udp {HL} fwd --hashlimit-upto 1/h --hashlimit-burst 2 "
                "--hashlimit-mode srcip,dstip --hashlimit-srcmask 16 --hashlimit-dstmask 24 "
                "-j ACCEPT",
                "-P FORWARD DROP"])
            packets = [pkt(f"10.{i % 2}.{i % 3}.1", f"192.0.{i // 2 % 2}.{1 + i % 4}")
                       for i in range(24)]
            report = h.check(table, packets)
            assert report.mismatches == []
            assert table.chains["FORWARD"].rules[0].counters.packets == 2 * 2 * 2
        finally:
            h.close()
