"""The /16 table's depth bits and dense blocks (image.top_with_depth,
image.dense_blocks, bpf/lib/ranges.h).

Each /16 table value carries, above TOP_DEPTH_SHIFT, the bit length of
the number of interval starts inside that /16; the program skips the
search steps whose probes all lie past them. A /16 of depth DENSE_DEPTH
or more gets a dense block instead when the program has a slot for it
(its value: TOP_DENSE and the slot): a bit per address where an interval
starts, and per 64-address word the interval at its start. Checked here:
the bits and slots against a plain count, a model of the lookup (search
with the skips, or block) against a bisection over every interval start
(and the addresses next to them), with slots for every crowded /16 and
with fewer, and the program itself under BPF_PROG_TEST_RUN on a rule set
with crowded /16s beside sparse ones, verdicts and counters against the
reference."""
from __future__ import annotations

import bisect
import random
import struct

import pytest

from bpf_iptables.datapath.compiler import (DENSE_DEPTH, DENSE_SLOTS_MAX, bsize_of,
                                            compile_chain, dense_slots)
from bpf_iptables.datapath.harness import Harness, table_from_lines, table_from_save
from bpf_iptables.datapath.image import (DENSE_WORDS, TOP_DENSE, TOP_DEPTH_SHIFT, dense_blocks,
                                         joined, map_image)
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


def search(bounds: list[int], probes: int, top: int, addr: int, blocks: bytes = b"") -> int:
    """bpf/lib/ranges.h NAME_search, step for step, skips included; a
    dense /16 by its block (``blocks``: the dense map's value)."""
    idx, depth = top & INDEX_MASK, top >> TOP_DEPTH_SHIFT
    if depth == TOP_DENSE:
        slots = len(blocks) // (12 * DENSE_WORDS)
        w = idx * DENSE_WORDS + ((addr >> 6) & (DENSE_WORDS - 1))
        base = struct.unpack_from("<I", blocks, 4 * w)[0]
        bits = struct.unpack_from("<Q", blocks, 4 * slots * DENSE_WORDS + 8 * w)[0]
        return base + bin(bits & ((2 << (addr & 63)) - 1)).count("1")
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


def starts_inside(iv) -> list[int]:
    inside = [0] * (1 << 16)
    for start in iv.bounds:
        if start & 0xFFFF:
            inside[start >> 16] += 1
    return inside


@pytest.mark.parametrize("field", ["src", "dst"])
def test_depth_bits_count_the_starts_inside_each_slash16(acl1, field):
    iv = getattr(acl1, f"{field}_iv")
    top = u32s(images(acl1, field)["top_map"])
    inside = starts_inside(iv)
    crowded = [h for h, c in enumerate(inside) if c.bit_length() >= DENSE_DEPTH]
    # every crowded /16 of acl1-10k has its block: slots for all of them
    slots = getattr(acl1.shape, f"{field}_dense")
    assert 0 < len(crowded) <= slots == dense_slots(iv) <= DENSE_SLOTS_MAX
    assert [h for h, v in enumerate(top) if v >> TOP_DEPTH_SHIFT == TOP_DENSE] == crowded
    assert sorted(top[h] & INDEX_MASK for h in crowded) == list(range(len(crowded)))
    rest = [h for h in range(1 << 16) if h not in set(crowded)]
    assert [top[h] & INDEX_MASK for h in rest] == [iv.top[h] for h in rest]
    assert [top[h] >> TOP_DEPTH_SHIFT for h in rest] == [inside[h].bit_length() for h in rest]
    assert max(c.bit_length() for c in inside) == iv.probes
    # the point of the bits: most /16s need fewer steps than the most crowded
    assert sum(1 for c in inside if 0 < c.bit_length() < iv.probes) > 0


def every_start_and_around(iv) -> list[int]:
    rng = random.Random(5)
    addrs = {0, 0xFFFFFFFF}
    for start in iv.bounds:
        addrs.update(a for a in (start - 1, start, start + 1) if 0 <= a <= 0xFFFFFFFF)
        addrs.add((start & ~0xFFFF) | 0xFFFF)
        # the block word's edges around it
        addrs.update((start & ~63) + d for d in (-1, 0, 63, 64))
    addrs.update(rng.getrandbits(32) for _ in range(2000))
    return sorted(a for a in addrs if 0 <= a <= 0xFFFFFFFF)


@pytest.mark.parametrize("field", ["src", "dst"])
def test_the_search_with_skips_finds_every_interval(acl1, field):
    iv = getattr(acl1, f"{field}_iv")
    maps = images(acl1, field)
    top, bounds, index = u32s(maps["top_map"]), u32s(maps["bounds_map"]), u32s(maps["index_map"])
    blocks = maps["dense_map"]
    assert len(bounds) == bsize_of(iv)
    assert len(blocks) == 12 * DENSE_WORDS * getattr(acl1.shape, f"{field}_dense")
    for addr in every_start_and_around(iv):
        want = iv.index[bisect.bisect_right(iv.bounds, addr) - 1]
        got = index[search(bounds, iv.probes, top[addr >> 16], addr, blocks)]
        assert got == want, f"{int_to_ip(addr)}: vector {got}, want {want}"


@pytest.mark.parametrize("slots", [1, 2])
def test_crowded_slash16s_beyond_the_slots_are_searched(acl1, slots):
    """A program with fewer slots than crowded /16s (one loaded for an
    earlier rule set): the most crowded get the blocks, the others keep
    their depth and are searched, and every address still finds its
    interval."""
    iv = acl1.src_iv
    top, blocks = dense_blocks(iv, slots)
    top = [int(v) for v in top]
    inside = starts_inside(iv)
    dense = [h for h, v in enumerate(top) if v >> TOP_DEPTH_SHIFT == TOP_DENSE]
    crowded = [h for h, c in enumerate(inside) if c.bit_length() >= DENSE_DEPTH]
    assert len(dense) == slots < len(crowded)
    # the deepest first (the steps a block saves)
    assert min(inside[h].bit_length() for h in dense) >= \
        max(inside[h].bit_length() for h in crowded if h not in dense)
    bounds = list(iv.bounds) + [0xFFFFFFFF] * (1 << iv.probes)
    for addr in every_start_and_around(iv):
        i = bisect.bisect_right(iv.bounds, addr) - 1
        assert search(bounds, iv.probes, top[addr >> 16], addr, blocks) == i, int_to_ip(addr)


def assert_the_program_agrees(table, packets) -> None:
    """Every packet through the compiled program (TEST_RUN): verdicts and
    counters as the reference's."""
    h = Harness()
    try:
        report = h.check(table, packets)
    finally:
        h.close()
    assert report.packets == len(packets)
    assert report.mismatches == []


@pytest.mark.usefixtures("private_netns")
def test_crowded_and_sparse_slash16s_through_the_program():
    """60 hosts in one /24 (the /16's depth 6: a dense block), a few
    prefixes elsewhere (depth 0-2: none or one search step), as sources
    and as destinations, every host and its neighbours sent through
    TEST_RUN."""
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
    assert compiled.shape.src_dense == compiled.shape.dst_dense == 1
    assert_the_program_agrees(table, packets)


@pytest.mark.usefixtures("private_netns")
def test_a_dense_slash16_at_its_edges_through_the_program():
    """Prefixes spread over one /16 (its first address a start, blocks of
    the 64-address words ending and beginning at a start, the last
    address a start) as sources, and the same /16 nested in wider ones:
    every start, its neighbours and the words' edges through TEST_RUN."""
    rng = random.Random(11)
    lines = ["-P INPUT ACCEPT", "-A INPUT -s 10.5.0.0/24 -p udp --dport 7 -j DROP",
             "-A INPUT -s 10.5.255.255/32 -j DROP", "-A INPUT -s 10.5.0.64/26 -j DROP",
             "-A INPUT -s 10.5.1.0/25 -p udp --dport 9 -j ACCEPT"]
    starts = set()
    for i, off in enumerate(sorted(rng.sample(range(0, 1 << 16, 16), 40))):
        lines.append(f"-A INPUT -s {int_to_ip(0x0A050000 | off)}/28 -p udp --dport {100 + i % 5} "
                     f"-j {'DROP' if i % 3 else 'ACCEPT'}")
        starts.update((off, off + 16))
    lines += ["-A INPUT -s 10.0.0.0/8 -p udp --dport 103 -j DROP", "-A INPUT -s 10.5.0.0/16 -j DROP"]
    table = table_from_lines(lines)
    compiled = compile_chain(table, "INPUT", {})
    assert compiled.shape.src_dense == 1
    offsets = {0, 1, 63, 64, 65, 127, 128, 255, 256, 0xFFFE, 0xFFFF}
    for off in starts:
        offsets.update(o for o in (off - 1, off, off + 1, off | 63, (off | 63) + 1) if 0 <= o < 1 << 16)
    packets = [Packet(src=0x0A050000 | off, dst=0x0A630001, proto=17, sport=5,
                      dport=rng.choice((7, 9, 100, 101, 102, 103, 104, 5)), length=60)
               for off in sorted(offsets)]
    packets += [Packet(src=a, dst=0x0A630001, proto=17, sport=5, dport=103, length=60)
                for a in (0x0A04FFFF, 0x0A060000, 0x0AFFFFFF)]
    assert_the_program_agrees(table, packets)
