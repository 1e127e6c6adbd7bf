"""No rule cap below 64k: 65,535 INPUT rules compile, load and classify
like the reference (a slow test: about a minute).

The rules are built as model objects (parsing 64k command lines would only
test the parser); each is a /24 source with a tcp destination-port range,
a few are counting-only."""
from __future__ import annotations

import random

from bpf_iptables.datapath.harness import Harness
from bpf_iptables.datapath.packets import header_length
from bpf_iptables.extensions.tcp import PortRange, TcpData
from bpf_iptables.model import Match, Rule, Table, Target
from bpf_iptables.netaddr import IPv4Net
from bpf_iptables.reference.packet import Packet

RULES = 65535


def big_table(rng: random.Random) -> Table:
    table = Table.empty("filter")
    table.chains["INPUT"].policy = "DROP"
    rules = table.chains["INPUT"].rules
    for i in range(RULES):
        lo = rng.randint(0, 60000)
        rules.append(Rule(
            src=IPv4Net((10 << 24) | (i << 8), 0xFFFFFF00), proto=6,
            matches=(Match("tcp", TcpData(dport=PortRange(lo, lo + rng.randint(0, 5000)))),),
            target=Target(rng.choice(["ACCEPT", "DROP"] * 20 + [""]))))
    return table


def test_65535_rules():
    rng = random.Random(3)
    table = big_table(rng)
    rules = table.chains["INPUT"].rules
    packets = []
    for index in [0, RULES - 1] + [rng.randrange(RULES) for _ in range(18)]:
        rule = rules[index]
        dport = rng.choice((rule.matches[0].data.dport.lo, rng.randint(0, 65535)))
        p = Packet(in_iface="lo", src=rule.src.addr | rng.randint(0, 255), proto=6, dport=dport)
        p.length = header_length(p) + rng.randint(0, 100)
        packets.append(p)
    harness = Harness(interfaces={"lo": 1})
    try:
        report = harness.check(table, packets)
        compiled = harness.cache.programs[0].compiled
    finally:
        harness.close()
    assert compiled.shape.nwords == 1024 and len(compiled.entries) == RULES + 1
    assert report.mismatches == []
    assert rules[-1].counters.packets + table.chains["INPUT"].counters.packets > 0
