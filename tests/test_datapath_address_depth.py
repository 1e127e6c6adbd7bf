"""The /16 table's depth bits (image.top_with_depth, bpf/lib/ranges.h).

Each /16 table value carries, above TOP_DEPTH_SHIFT, the bit length of
the number of interval starts inside that /16; the program skips the
search steps whose probes all lie past them. Checked here: the bits
against a plain count, a model of the search with the skips against a
bisection over every interval start (and the addresses next to them), and
the program itself under BPF_PROG_TEST_RUN on a rule set with a crowded
/16 beside sparse ones, verdicts and counters against the reference."""
from __future__ import annotations

import bisect
import random
import struct

import pytest

from bpf_iptables.datapath.compiler import bsize_of, compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines, table_from_save
from bpf_iptables.datapath.image import TOP_DEPTH_SHIFT, joined, map_image
from bpf_iptables.netaddr import int_to_ip
from bpf_iptables.reference.packet import Packet
from tests.support.shared import ruleset

SEARCH_BITS = 2      # bpf/lib/ranges.h
INDEX_MASK = (1 << TOP_DEPTH_SHIFT) - 1


def images(compiled, field: str) -> dict[str, bytes]:
    return {image.name[len(field) + 1:]: joined(image.items)[1]
            for image in map_image(compiled, compiled.shape) if image.name.startswith(f"{field}_")}


def u32s(blob: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(blob) // 4}I", blob))


def search(bounds: list[int], probes: int, top: int, addr: int) -> int:
    """bpf/lib/ranges.h address_search, step for step, skips included."""
    idx, depth = top & INDEX_MASK, top >> TOP_DEPTH_SHIFT
    p = idx
    for k in range((probes + SEARCH_BITS - 1) // SEARCH_BITS - 1, -1, -1):
        s = k * SEARCH_BITS
        hi = min(s + SEARCH_BITS, probes)
        if depth > s:
            n = sum(1 for j in range(1, 1 << (hi - s)) if bounds[p + (j << s)] <= addr)
            p += n << s
    return p


@pytest.fixture(scope="module")
def acl1():
    table = table_from_save(ruleset("classbench-acl1-10k.rules").read_text())
    return compile_chain(table, "INPUT", {})


@pytest.mark.parametrize("field", ["src", "dst"])
def test_depth_bits_count_the_starts_inside_each_slash16(acl1, field):
    iv = getattr(acl1, f"{field}_iv")
    top = u32s(images(acl1, field)["top_map"])
    inside = [0] * (1 << 16)
    for start in iv.bounds:
        if start & 0xFFFF:
            inside[start >> 16] += 1
    assert [v & INDEX_MASK for v in top] == list(iv.top)
    assert [v >> TOP_DEPTH_SHIFT for v in top] == [c.bit_length() for c in inside]
    assert max(v >> TOP_DEPTH_SHIFT for v in top) == iv.probes
    # the point of the bits: most /16s need fewer steps than the most crowded
    assert sum(1 for c in inside if 0 < c.bit_length() < iv.probes) > 0


@pytest.mark.parametrize("field", ["src", "dst"])
def test_the_search_with_skips_finds_every_interval(acl1, field):
    iv = getattr(acl1, f"{field}_iv")
    maps = images(acl1, field)
    top, bounds, index = u32s(maps["top_map"]), u32s(maps["bounds_map"]), u32s(maps["index_map"])
    assert len(bounds) == bsize_of(iv)
    rng = random.Random(5)
    addrs = {0, 0xFFFFFFFF}
    for start in iv.bounds:
        addrs.update(a for a in (start - 1, start, start + 1) if 0 <= a <= 0xFFFFFFFF)
        addrs.add((start & ~0xFFFF) | 0xFFFF)
    addrs.update(rng.getrandbits(32) for _ in range(2000))
    for addr in sorted(addrs):
        want = iv.index[bisect.bisect_right(iv.bounds, addr) - 1]
        got = index[search(bounds, iv.probes, top[addr >> 16], addr)]
        assert got == want, f"{int_to_ip(addr)}: vector {got}, want {want}"


@pytest.mark.usefixtures("private_netns")
def test_crowded_and_sparse_slash16s_through_the_program():
    """60 hosts in one /24 (the /16's depth 6: 3 search steps), a few
    prefixes elsewhere (depth 0-2: none or one), as sources and as
    destinations, every host and its neighbours sent through TEST_RUN."""
    rng = random.Random(9)
    hosts = sorted(rng.sample(range(1, 255), 60))
    lines = ["-P INPUT ACCEPT"]
    for i, h in enumerate(hosts):
        verdict = "DROP" if i % 2 else "ACCEPT"
        lines.append(f"-A INPUT -s 10.1.7.{h}/32 -p udp --dport {1000 + i} -j {verdict}")
        lines.append(f"-A INPUT -d 10.2.9.{h}/32 -p tcp -j {'ACCEPT' if i % 2 else 'DROP'}")
    lines += ["-A INPUT -s 172.16.0.0/12 -j DROP", "-A INPUT -d 192.168.4.0/24 -j DROP",
              "-A INPUT -s 10.3.0.0/16 -d 10.4.5.0/25 -j DROP"]
    table = table_from_lines(lines)
    packets = []
    for i, h in enumerate(hosts):
        for near in (h - 1, h, h + 1):
            packets.append(Packet(src=0x0A010700 | near, dst=0x0A630001, proto=17,
                                  sport=5, dport=1000 + i, length=60))
            packets.append(Packet(src=0x0A630001, dst=0x0A020900 | near, proto=6,
                                  sport=5, dport=80, tcp_flags=0x10, length=60))
    for _ in range(300):
        packets.append(Packet(src=rng.choice((0xAC100000 | rng.getrandbits(20),
                                              0x0A030000 | rng.getrandbits(16),
                                              rng.getrandbits(32))),
                              dst=rng.choice((0xC0A80400 | rng.getrandbits(8),
                                              0x0A040500 | rng.getrandbits(8),
                                              rng.getrandbits(32))),
                              proto=17, sport=1, dport=rng.randint(999, 1070), length=60))
    compiled = compile_chain(table, "INPUT", {})
    assert compiled.src_iv.probes >= 6 and compiled.dst_iv.probes >= 6
    h = Harness()
    try:
        report = h.check(table, packets)
    finally:
        h.close()
    assert report.packets == len(packets)
    assert report.mismatches == []
