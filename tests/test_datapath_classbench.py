"""The ClassBench fw1 1k rule set through the XDP classifier vs the reference.

The rule file is parsed line by line with the real command parser. Packets
are drawn (fixed seed) mostly inside rules' boxes and at their port edges,
so that many different rules are the first match, plus uniform ones."""
from __future__ import annotations

import random

import pytest

from bpf_iptables.datapath.harness import Harness, table_from_save
from bpf_iptables.datapath.packets import header_length
from bpf_iptables.model import Rule, Table
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from tests.support.shared import ruleset

# interfaces (and so ifindexes) are those of a namespace of the test's own
pytestmark = pytest.mark.usefixtures("private_netns")

RULES = ruleset("classbench-fw1-1k.rules")
PACKETS = 400


def inside(rng: random.Random, addr: int, mask: int) -> int:
    return (addr & mask) | (rng.getrandbits(32) & ~mask & 0xFFFFFFFF)


def port_in(rng: random.Random, rule: Rule, which: str) -> int:
    for m in rule.matches:
        rng_ = getattr(m.data, which)
        edges = [p for p in (rng_.lo - 1, rng_.lo, rng_.hi, rng_.hi + 1) if 0 <= p <= 65535]
        return rng.choice(edges + [rng.randint(rng_.lo, rng_.hi)])
    return rng.randint(0, 65535)


def packets(table: Table, ifname: str, count: int, seed: int = 7) -> list[Packet]:
    rng = random.Random(seed)
    rules = table.chains["INPUT"].rules
    out = []
    for i in range(count):
        rule = rng.choice(rules)
        if i % 5 == 4:  # uniform traffic, mostly hitting the policy
            src, dst = rng.getrandbits(32), rng.getrandbits(32)
            proto = rng.choice((6, 17, 1))
        else:
            src = inside(rng, rule.src.addr, rule.src.mask)
            dst = inside(rng, rule.dst.addr, rule.dst.mask)
            proto = rule.proto or rng.choice((6, 17, 1))
        pkt = Packet(in_iface=ifname, src=src, dst=dst, proto=proto,
                     sport=port_in(rng, rule, "sport"), dport=port_in(rng, rule, "dport"),
                     tcp_flags=rng.choice((0x02, 0x10, 0x12)))
        pkt.length = header_length(pkt) + rng.randint(0, 1400)
        out.append(pkt)
    return out


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


def test_classbench_fw1_1k_matches_reference(harness):
    table = table_from_save(RULES.read_text())
    assert len(table.chains["INPUT"].rules) > 800
    ifname = sorted(harness.interfaces)[0]
    pkts = packets(table, ifname, PACKETS)
    report = harness.check(table, pkts)
    assert report.packets == PACKETS
    assert report.mismatches == []
    # the sample must exercise the classifier, not only the policy
    first_hits = {evaluate(table, p, count=False).hits[0] for p in pkts
                  if evaluate(table, p, count=False).hits}
    assert len(first_hits) > 100
    # ClassBench ends with a catch-all rule: uniform traffic lands there
    assert table.chains["INPUT"].rules[-1].counters.packets > 0


def test_classbench_compiles_ports_to_intervals():
    """Port ranges become a few intervals, not one entry per port."""
    from bpf_iptables.datapath.compiler import compile_chain

    table = table_from_save(RULES.read_text())
    c = compile_chain(table, "INPUT", {"lo": 1})
    ranges = {(getattr(m.data, "dport").lo, getattr(m.data, "dport").hi)
              for r in table.chains["INPUT"].rules for m in r.matches}
    assert any(hi - lo > 1000 for lo, hi in ranges)
    assert len(c.dport) <= 2 * len(ranges) + 2
    assert c.dport_bounds == sorted(set(c.dport_bounds))
