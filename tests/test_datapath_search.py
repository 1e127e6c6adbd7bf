"""The classifier's address search (bpf/lib/ranges.h: 4-ary, a pointer
checked once against BSIZE - 2^PROBES) and its lowest-bit index (de Bruijn
table, bpf/lib/bitvector.h) against the reference, at the places where an
off-by-one would show: every interval start and the address before it, in
a /16 crowded enough for an odd number of probe bits (a step of 2 and one
of 1), and a first match at every bit position of several words."""
from __future__ import annotations

import pytest

from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.netaddr import int_to_ip, ip_to_int
from bpf_iptables.reference.packet import Packet

pytestmark = pytest.mark.usefixtures("private_netns")


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


def crowded_rules(side: str, base: int) -> list[str]:
    """In base's /16: 40 /32s, 6 /28s and 3 /24s (some nested: 95 interval
    starts, 7 probe bits), ACCEPT and DROP alternating; one /8 around it."""
    prefixes = [(base + 7 * i + 3, 32) for i in range(40)]
    prefixes += [(base + 0x40 * i, 28) for i in range(6)]
    prefixes += [(base + 0x100 * i, 24) for i in (0, 2, 5)]
    prefixes.append((base & 0xFF000000, 8))
    return [f"-A INPUT {side} {int_to_ip(a)}/{n} -p udp -j {'DROP' if i % 2 else 'ACCEPT'}"
            for i, (a, n) in enumerate(prefixes)]


def boundary_addresses(lines: list[str]) -> list[int]:
    """Each prefix's first and last address, and the addresses just
    outside it."""
    out = set()
    for line in lines:
        a, n = line.split()[3].split("/")
        first = ip_to_int(a)
        last = first + (1 << (32 - int(n))) - 1
        out |= {first - 1, first, last, last + 1}
    return sorted(out)


@pytest.mark.parametrize("side", ["-s", "-d"])
def test_every_interval_boundary_of_a_crowded_slash16(harness, side):
    base = ip_to_int("10.1.0.0")
    rules = crowded_rules(side, base)
    table = table_from_lines(rules + ["-P INPUT DROP"])
    c = compile_chain(table, "INPUT", harness.interfaces)
    iv = c.src_iv if side == "-s" else c.dst_iv
    # the search this test is about: several steps, the last one of 1 bit
    assert iv.probes >= 5 and iv.probes % 2 == 1
    other = ip_to_int("192.0.2.1")
    packets = []
    for addr in boundary_addresses(rules):
        src, dst = (addr, other) if side == "-s" else (other, addr)
        packets.append(Packet(proto=17, src=src, dst=dst, sport=1, dport=2, length=40,
                              in_iface=sorted(harness.interfaces)[0]))
    report = harness.check(table, packets)
    assert report.mismatches == []
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    # nearly every prefix is some packet's first match (10.1.0.0/24 is all
    # /28s and /32s at its edges): the search lands in all of its intervals
    assert sum(1 for n in counts if n) >= len(counts) - 1, counts


def test_first_match_at_every_bit_of_three_words(harness):
    # 150 rules, one port each: the first match walks entries 0..149, so
    # every bit index 0..63 of a word is the lowest candidate bit once
    lines = [f"-A INPUT -p udp --dport {1000 + i} -j {'DROP' if i % 3 else 'ACCEPT'}"
             for i in range(150)] + ["-P INPUT DROP"]
    table = table_from_lines(lines)
    packets = [Packet(proto=17, src=ip_to_int("10.0.0.1"), dst=ip_to_int("10.0.0.2"),
                      sport=5, dport=1000 + i, length=40, in_iface=sorted(harness.interfaces)[0])
               for i in range(-1, 151)]
    report = harness.check(table, packets)
    assert report.mismatches == []
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    assert counts == [1] * 150
    assert table.chains["INPUT"].counters.packets == 2
