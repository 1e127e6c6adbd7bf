"""The source x destination pair summary (filter.c PAIR, image.pair_parts)
and the source x ports summary (filter.c PORTS_PAIR, image.ports_pair_table),
read back from the map image's bytes as the program reads them:

* it names every word in which the source and destination vectors have a
  common live entry (a word it left out would be skipped by the scan, and
  a match in it missed), for ClassBench sets and for random prefixes with
  negations and don't-cares crowded into a few /8s; likewise the ports
  term for every source vector and every pair of port map keys (the
  "no ports" and "offset-1 fragment" keys too);
* at fw1-10k it names few words in which no entry matches every field:
  the false candidate words the per-packet cost at 10k rules depends on
  (bench/candidates.py prints the same counts for the bench's mix), and
  with the ports term few at its last rule's packet (fw1's slowest)."""
from __future__ import annotations

import random
import statistics
from bisect import bisect_right
from dataclasses import replace

import pytest

from bench.candidates import field_vectors, scan_count, summary
from bench.workload import packet_in
from bpf_iptables.datapath.compiler import (PAIR_BITS, FIELD_ORDER, Compiled, Shape,
                                            compile_chain, pair_summary, ports_pair,
                                            summary_words)
from bpf_iptables.datapath import generation
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from bpf_iptables.datapath.image import joined, map_image
from bpf_iptables.reference.packet import Packet
from tests.support.shared import ruleset

INTERFACES = {"lo": 1}


def u64s(blob: bytes, at: int, count: int) -> int:
    """``count`` little-endian words from byte ``at`` as one int (word 0 lowest)."""
    return int.from_bytes(blob[at:at + 8 * count], "little")


class PairView:
    """The maps a packet's pair term comes from, as image.map_image wrote them."""

    def __init__(self, c: Compiled) -> None:
        assert pair_summary(c.shape)
        self.c = c
        self.nw = c.shape.nwords
        self.nsum = summary_words(self.nw)
        self.values = {m.name: joined(m.items)[1] for m in map_image(c, c.shape)}
        self.ports = ports_pair(c.shape)
        self.src_size = (self.nw + (3 if self.ports else 2) * self.nsum) * 8

    def src_record(self, x: int) -> tuple[int, int]:
        """Source vector ``x`` (an id of src_map): (words, pw summary)."""
        at = x * self.src_size
        blob = self.values["src_map"]
        return (u64s(blob, at, self.nw),
                u64s(blob, at + 8 * (self.nw + 2 * self.nsum), self.nsum))

    def ports_slot(self, skey: int, dkey: int) -> int:
        """ports_pair_map at the sport_map key and dport_map key."""
        at = (skey * (self.c.shape.dport_bsize + 2) + dkey) * 8 * self.nsum
        return u64s(self.values["ports_pair_map"], at, self.nsum)

    def record(self, name: str, addr: int) -> tuple[int, int, int]:
        """struct addr_vector of the address's piece: (words, summary, spec)."""
        iv = self.c.src_iv if name == "src" else self.c.dst_iv
        lo, hi = 0, len(iv.bounds)
        while hi - lo > 1:   # the last interval start <= addr
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if iv.bounds[mid] <= addr else (lo, mid)
        size = self.src_size if name == "src" else (self.nw + 2 * self.nsum) * 8
        at = iv.index[lo] * size
        blob = self.values[f"{name}_map"]
        return (u64s(blob, at, self.nw), u64s(blob, at + 8 * self.nw, self.nsum),
                u64s(blob, at + 8 * (self.nw + self.nsum), self.nsum))

    def term(self, src: int, dst: int) -> tuple[int, int]:
        """(filter.c's pair summary term, the summary of src & dst & live)."""
        sw, ssum, sspec = self.record("src", src)
        dw, dsum, dspec = self.record("dst", dst)
        shift = 32 - PAIR_BITS
        key = (src >> shift) << PAIR_BITS | (dst >> shift)
        pair = u64s(self.values["pair_map"], key * 8 * self.nsum, self.nsum)
        return ssum | dsum | (sspec & dspec & pair), summary(sw & dw & self.c.live, self.nw)


def check_covers(c: Compiled, addresses: list[tuple[int, int]]) -> int:
    """Asserts the pair term covers every common word; returns how many
    packets had at least one common word (so the check was not vacuous)."""
    view = PairView(c)
    nonempty = 0
    for src, dst in addresses:
        term, exact = view.term(src, dst)
        assert exact & ~term == 0, (hex(src), hex(dst), bin(exact), bin(term))
        nonempty += exact != 0
    return nonempty


def box_addresses(table, rng: random.Random, count: int) -> list[tuple[int, int]]:
    rules = table.chains["INPUT"].rules
    out = []
    for _ in range(count):
        p = packet_in(rng, rng.choice(rules))
        out.append((p.src, p.dst))
    return out


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_pair_term_covers_common_words_classbench(name):
    table = table_from_save(ruleset(name).read_text())
    c = compile_chain(table, "INPUT", INTERFACES)
    rng = random.Random(5)
    addresses = box_addresses(table, rng, 400) + [(rng.getrandbits(32), rng.getrandbits(32))
                                                  for _ in range(100)]
    assert check_covers(c, addresses) > 300


LENGTHS = (0, 4, 7, 8, 9, 12, 16, 24, 28, 32)


def random_prefix(rng: random.Random, lengths: tuple[int, ...] = LENGTHS) -> tuple[int, int]:
    """(address, length), crowded into three /8s (many rules per pair
    bucket), of every length class (or of ``lengths``)."""
    addr = rng.choice((10, 11, 200)) << 24 | rng.getrandbits(24)
    length = rng.choice(lengths)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return addr & mask, length


def dotted(addr: int) -> str:
    return ".".join(str(addr >> s & 255) for s in (24, 16, 8, 0))


def test_pair_term_covers_common_words_negations():
    """Specific, negated and (rarely: else they fill every word's summary
    alone) don't-care addresses in a forced 8-word shape, the smallest a
    program with the pair summary has; addresses inside the rules'
    prefixes and around them."""
    rng = random.Random(7)
    lines, prefixes = [], []
    for _ in range(480):
        parts = ["-A INPUT"]
        for opt in ("-s", "-d"):
            kind = rng.random()
            if kind < 0.01:
                continue                          # don't care
            addr, length = random_prefix(rng)
            prefixes.append((addr, length))
            parts.append(f"{'! ' if kind > 0.95 else ''}{opt} {dotted(addr)}/{length}")
        parts.append(rng.choice(("-j ACCEPT", "-j DROP")))
        lines.append(" ".join(parts))
    c = compile_chain(table_from_lines(lines), "INPUT", INTERFACES,
                      Shape(8, 100, 8, frozenset({"src", "dst"})))
    assert c.shape.nwords == 8

    def draw() -> int:
        if rng.random() < 0.2:
            return (rng.choice((10, 11, 12, 200)) << 24) | rng.getrandbits(24)
        addr, length = rng.choice(prefixes)
        return addr | (rng.getrandbits(32) & (0xFFFFFFFF >> length))

    assert check_covers(c, [(draw(), draw()) for _ in range(1500)]) > 1000


def false_words(c: Compiled, view: PairView, pkt: Packet) -> tuple[int, int]:
    """False candidate words the scan loads before its first match: with
    the fields' own summaries ANDed (the program before PAIR) and with the
    pair term in place of the two address summaries."""
    vec = field_vectors(c, pkt)
    nw = c.shape.nwords
    plain = [summary(v, nw) for v in vec.values()]
    term, _ = view.term(pkt.src, pkt.dst)
    paired = [summary(v, nw) for n, v in vec.items() if n not in ("src", "dst")] + [term]
    return (scan_count(list(vec.values()), plain, nw).false,
            scan_count(list(vec.values()), paired, nw).false)


def test_pair_summary_cuts_false_words_fw1_10k():
    table = table_from_save(ruleset("classbench-fw1-10k.rules").read_text())
    c = compile_chain(table, "INPUT", INTERFACES)
    assert set(c.shape.fields) <= set(FIELD_ORDER) and pair_summary(c.shape)
    view = PairView(c)
    rng = random.Random(23)
    rules = table.chains["INPUT"].rules
    counts = [false_words(c, view, packet_in(rng, rng.choice(rules))) for _ in range(150)]
    before = statistics.fmean(b for b, _ in counts)
    after = statistics.fmean(a for _, a in counts)
    # measured: 13-14 false words a packet before, about 1.3 after
    assert before > 8
    assert after < 2.5 and after < before / 5, (before, after)


def port_keys(c: Compiled, name: str) -> list[tuple[int, int]]:
    """(map key, vector) of every sport / dport map slot a packet can get:
    the intervals, "no ports" at bsize, "offset-1 fragment" at bsize + 1."""
    bounds, vectors = (c.sport_bounds, c.sport) if name == "sport" else (c.dport_bounds, c.dport)
    bsize = getattr(c.shape, f"{name}_bsize")
    return (list(enumerate(vectors[:len(bounds)]))
            + [(bsize, vectors[-2]), (bsize + 1, vectors[-1])])


def check_ports_covers(c: Compiled, sources: int, rng: random.Random) -> int:
    """For ``sources`` source vectors (all when fewer) and every pair of
    port keys: the summary of src & sport & dport & live lies within the
    ports term src.pw | ports_pair[sport key][dport key]. Returns how many
    of those had a common word (so the check was not vacuous)."""
    import numpy as np

    view = PairView(c)
    assert view.ports
    nw = view.nw
    pairs = [(sk, dk, sv & dv & c.live) for sk, sv in port_keys(c, "sport")
             for dk, dv in port_keys(c, "dport")]
    size = nw * 8
    both = np.frombuffer(b"".join(v.to_bytes(size, "little") for _, _, v in pairs),
                         "<u8").reshape(len(pairs), nw)
    slots = [view.ports_slot(sk, dk) for sk, dk, _ in pairs]
    ids = list(range(len(c.src_iv.vectors)))
    nonempty = 0
    for x in rng.sample(ids, min(sources, len(ids))):
        words, pw = view.src_record(x)
        assert words == c.src_iv.vectors[x]
        mine = np.frombuffer(words.to_bytes(size, "little"), "<u8")
        flags = np.packbits((both & mine) != 0, axis=1, bitorder="little")
        for (sk, dk, _), row, slot in zip(pairs, flags, slots):
            exact = int.from_bytes(row.tobytes(), "little")
            term = pw | slot
            assert exact & ~term == 0, (x, sk, dk, bin(exact), bin(term))
            nonempty += exact != 0
    return nonempty


def test_ports_term_covers_common_words_fw1():
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    c = compile_chain(table, "INPUT", INTERFACES)
    assert check_ports_covers(c, 120, random.Random(3)) > 10_000


PORT_STARTS = (0, 53, 80, 1024, 1521, 8080, 33000)
PORT_SPANS = (1, 10, 1000, 30000)
PORTS_SHAPE = Shape(8, 100, 8, frozenset({"src", "dst", "sport", "dport"}))


def random_ports_lines(rng: random.Random, lengths: tuple[int, ...] = LENGTHS
                       ) -> tuple[list[str], list[tuple[int, int]]]:
    """480 rules: port ranges, single ports, negations and don't-cares on
    TCP, UDP and no protocol (matching packets without ports, whose key is
    "no ports"), sources and destinations of every prefix length crowded
    into three /8s; and the prefixes used."""
    lines, prefixes = [], []
    for _ in range(480):
        parts = ["-A INPUT"]
        if rng.random() < 0.9:
            addr, length = random_prefix(rng, lengths)
            prefixes.append((addr, length))
            parts.append(f"{'! ' if rng.random() < 0.05 else ''}-s {dotted(addr)}/{length}")
        addr, length = random_prefix(rng, lengths)
        prefixes.append((addr, length))
        parts.append(f"-d {dotted(addr)}/{length}")
        kind = rng.random()
        if kind < 0.85:
            proto = rng.choice(("tcp", "udp"))
            parts.append(f"-p {proto} -m {proto}")
            for opt in ("--sport", "--dport"):
                r = rng.random()
                if r < 0.3:
                    continue
                lo = rng.choice(PORT_STARTS)
                hi = lo if r < 0.6 else min(65535, lo + rng.choice(PORT_SPANS))
                neg = "! " if rng.random() < 0.1 else ""
                parts.append(f"{neg}{opt} {lo}" + (f":{hi}" if hi != lo else ""))
        parts.append(rng.choice(("-j ACCEPT", "-j DROP")))
        lines.append(" ".join(parts))
    return lines, prefixes


def test_ports_term_covers_common_words_random_ports():
    """The random port rule set in the 8-word shape, the smallest with
    the ports summary: every source vector x every pair of port keys."""
    rng = random.Random(11)
    lines, _ = random_ports_lines(rng)
    c = compile_chain(table_from_lines(lines), "INPUT", INTERFACES, PORTS_SHAPE)
    assert c.shape.nwords == 8 and ports_pair(c.shape)
    assert check_ports_covers(c, 400, rng) > 1000


@pytest.mark.usefixtures("private_netns")
def test_ports_summary_random_ports_in_the_kernel():
    """The same kind of rule set through the kernel's classifier (the
    8-word program with PORTS_PAIR) against the reference: verdicts and
    every rule's counters, packets inside the prefixes with ports at the
    rules' edges, TCP, UDP and ICMP (the "no ports" key)."""
    from bpf_iptables.datapath.harness import Harness

    rng = random.Random(13)
    # longer prefixes than the coverage test's, so that matches spread
    # over the words instead of stopping at the first broad rules
    lines, prefixes = random_ports_lines(rng, (8, 16, 20, 24, 28, 32))
    table = table_from_lines(lines)
    edges = sorted({p for lo in PORT_STARTS for span in (0,) + PORT_SPANS
                    for p in (lo + span - 1, lo + span, lo + span + 1) if 0 <= p <= 65535})

    def inside(addr: int, mask: int) -> int:
        return (addr & mask) | (rng.getrandbits(32) & ~mask & 0xFFFFFFFF)

    def packet(ifname: str) -> Packet:
        """Inside a rule's addresses (both, else one and the other from
        anywhere in the prefixes), its protocol mostly, ports at edges."""
        rule = rng.choice(rules)
        src, dst = inside(rule.src.addr, rule.src.mask), inside(rule.dst.addr, rule.dst.mask)
        if rng.random() < 0.2:
            a, length = rng.choice(prefixes)
            src = a | (rng.getrandbits(32) & (0xFFFFFFFF >> length))
        proto = rule.proto if rule.proto and rng.random() < 0.8 else rng.choice((6, 17, 1))
        return Packet(in_iface=ifname, src=src, dst=dst, proto=proto,
                      sport=rng.choice(edges), dport=rng.choice(edges),
                      tcp_flags=0x10, length=60)

    rules = table.chains["INPUT"].rules
    h = Harness(min_shape=PORTS_SHAPE)
    try:
        ifname = sorted(h.interfaces)[0]
        pkts = [packet(ifname) for _ in range(800)]
        _, compiled = h.load(table)
        assert ports_pair(compiled.shape) and compiled.shape.nwords == 8
        report = h.check(table, pkts)
    finally:
        h.close()
    assert report.packets == len(pkts) and report.mismatches == []
    # first matches spread over the words (measured: 80 rules, all 8 words)
    hit = [i for i, r in enumerate(table.chains["INPUT"].rules) if r.counters.packets]
    assert len(hit) > 50 and len({i // 64 for i in hit}) >= 6, hit


def test_ports_term_cuts_fw1_10k_last_rule():
    """fw1's slowest probe (its last rule's packet, bench.workload) loaded
    8 words, 7 false, under the pair summary alone; the ports term leaves
    2 (1 false). And the mix's mean false words drop below one."""
    from bench.workload import source_probes

    path = ruleset("classbench-fw1-10k.rules")
    table = table_from_save(path.read_text())
    c = compile_chain(table, "INPUT", INTERFACES)
    view = PairView(c)
    assert view.ports
    nw = view.nw

    def loaded(pkt: Packet, with_ports: bool):
        vec = field_vectors(c, pkt)
        term, _ = view.term(pkt.src, pkt.dst)
        sums = [summary(v, nw) for n, v in vec.items() if n not in ("src", "dst")] + [term]
        if with_ports:
            slot = view.ports_slot(*(port_key(c, name, getattr(pkt, name))
                                     for name in ("sport", "dport")))
            x = c.src_iv.index[bisect_right(c.src_iv.bounds, pkt.src) - 1]
            sums.append(view.src_record(x)[1] | slot)
        return scan_count(list(vec.values()), sums, nw)

    last = [p for p in source_probes(str(path), table) if p.position == "last"][0]
    before, after = loaded(last.packet, False), loaded(last.packet, True)
    assert (before.loaded, before.false) == (8, 7)
    assert after.loaded <= 2 and after.false <= 1, after
    rng = random.Random(29)
    rules = table.chains["INPUT"].rules
    pkts = [packet_in(rng, rng.choice(rules)) for _ in range(150)]
    mean = statistics.fmean(loaded(p, True).false for p in pkts)
    assert mean < 1.0, mean


def port_key(c: Compiled, name: str, port: int) -> int:
    """The sport_map / dport_map key of a TCP / UDP packet's port."""
    bounds = c.sport_bounds if name == "sport" else c.dport_bounds
    return bisect_right(bounds, port) - 1


def test_pinned_maps_follow_the_programs_ports_pair_condition():
    """program.map_names (the maps a loaded program's pins are taken from)
    names ports_pair_map exactly when filter.c compiles it in: with more
    port-slot pairs than PORTS_PAIR_MAX_SLOTS (the synthetic bench set at
    10k rules: one sport, 10k dports) the program has no such map, and
    attaching it failed with KeyError: 'ports_pair_map'."""
    from bpf_iptables.datapath.compiler import PORTS_PAIR_MAX_SLOTS, ports_pair_slots
    from bpf_iptables.datapath.program import map_names

    lines = ["*filter", ":INPUT ACCEPT [0:0]"]
    lines += [f"-A INPUT -s 10.{i >> 8}.{i & 255}.0/24 -d 192.168.{i % 7}.0/24 -p udp "
              f"-m udp --sport {1000 + i % 3} --dport {i + 1} -j ACCEPT" for i in range(600)]
    c = compile_chain(table_from_save("\n".join(lines + ["COMMIT"]) + "\n"), "INPUT", {})
    for dport_bsize in (c.shape.dport_bsize, 1 << 14):
        shape = replace(generation.roomy(c), dport_bsize=dport_bsize)
        assert pair_summary(shape)
        names = map_names(shape)
        assert ("ports_pair_map" in names) == ports_pair(shape), (dport_bsize, names)
        assert ports_pair(shape) == (ports_pair_slots(shape) <= PORTS_PAIR_MAX_SLOTS)
    assert ports_pair(replace(generation.roomy(c), dport_bsize=c.shape.dport_bsize))
    assert not ports_pair(replace(generation.roomy(c), dport_bsize=1 << 14))
