"""Candidate words of the classifier's scan, counted in Python from a
compiled chain (no kernel): how many bitvector words the scan loads per
packet, and how many of them are *false* candidates (every field's summary
names the word, yet no entry in it matches all fields).

    python -m bench.candidates [RULESET] [--count N] [--rule-packets 64] [--policy-packets 16]

For every packet of the bench's traffic mix (workload.traffic_mix, the
same draw as bench/testrun_worker.py) and its probes (first / middle / last
rule, policy): each field's bitvector as filter.c looks it up, the AND of
the summaries under each scheme (SCHEMES: the fields' own summaries, as
before the pair summary; filter.c's pair summary, image.pair_parts; that
and the source x ports summary, filter.c PORTS_PAIR, as the program runs
now where both port fields are compiled in; exact tables over field
groups, for comparison), and the words the scan loads
before its first match (the rule sets measured here have no continuing
entries: the first candidate that matches ends the scan). Note: the mix
draws fewer policy packets when none reaches the policy (fw1 has a
catch-all rule)."""
from __future__ import annotations

import argparse
import statistics
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from bpf_iptables.datapath.compiler import PAIR_BITS, PROTO_DEFAULT, Compiled, compile_chain
from bpf_iptables.datapath.image import PairParts, pair_parts, ports_wild
from bpf_iptables.reference.packet import Packet

from .datapath import shared_dir
from .workload import Probe, load_source, source_probes, traffic_mix


def address_vector(iv, addr: int) -> int:
    return iv.vectors[iv.index[bisect_right(iv.bounds, addr) - 1]]


def port_vector(bounds: list[int], vectors: list[int], port: int, l4: bool) -> int:
    # vectors: one per interval, then "no L4 header", then "evil fragment"
    return vectors[bisect_right(bounds, port) - 1] if l4 else vectors[-2]


def field_vectors(c: Compiled, pkt: Packet) -> dict[str, int]:
    """Each compiled-in field's bitvector for ``pkt`` (the fields the
    ClassBench sets use; another field makes this raise)."""
    l4 = pkt.proto in (6, 17)
    out = {"live": c.live}
    for name in c.shape.fields:
        if name == "src":
            out[name] = address_vector(c.src_iv, pkt.src)
        elif name == "dst":
            out[name] = address_vector(c.dst_iv, pkt.dst)
        elif name == "proto":
            out[name] = c.proto.get(pkt.proto, c.proto[PROTO_DEFAULT])
        elif name == "sport":
            out[name] = port_vector(c.sport_bounds, c.sport, pkt.sport, l4)
        elif name == "dport":
            out[name] = port_vector(c.dport_bounds, c.dport, pkt.dport, l4)
        else:
            raise ValueError(f"field {name} not modelled here")
    return out


def words_of(v: int, nwords: int) -> list[int]:
    return [(v >> (64 * j)) & ((1 << 64) - 1) for j in range(nwords)]


def summary(v: int, nwords: int) -> int:
    """Bit j: word j of v is not zero (image.bitvector's summary)."""
    return sum(1 << j for j, w in enumerate(words_of(v, nwords)) if w)


@dataclass
class Count:
    loaded: int      # candidate words the scan loads up to its first match
    false: int       # of those, words whose full AND is zero
    named: int       # candidate words the summary AND names in all


def scan_count(vectors: list[int], summaries: list[int], nwords: int) -> Count:
    full = -1
    for v in vectors:
        full &= v
    named = -1
    for s in summaries:
        named &= s
    first = (full & -full).bit_length() - 1          # the first matching entry
    stop = first // 64
    loaded = false = 0
    for j in range(nwords):
        if named >> j & 1:
            if j <= stop:
                loaded += 1
                false += ((full >> (64 * j)) & ((1 << 64) - 1)) == 0
    return Count(loaded, false, bin(named).count("1"))


# fields: one summary per field (the program before the pair summary);
# pair: filter.c's PAIR (image.pair_parts) in place of src's and dst's;
# pair+ports: and filter.c's PORTS_PAIR term (image.ports_pair_table);
# the others: an exact summary of the AND of the grouped fields' vectors
# (what a full pair table would give), "exact": of all fields
SCHEMES = ("fields", "pair", "pair+ports", "src*dst", "proto*ports", "both", "exact")


def pair_term(parts: PairParts, pkt: Packet, vec: dict[str, int], nwords: int) -> int:
    """filter.c's TERM_PAIR_summary for this packet."""
    s, d = vec["src"], vec["dst"]
    shift = 32 - PAIR_BITS
    table = summary(parts.src_buckets[pkt.src >> shift] & parts.dst_buckets[pkt.dst >> shift],
                    nwords)
    return (summary(s & parts.dst_wild, nwords)
            | summary(d & parts.src_wild & ~parts.dst_wild, nwords)
            | (summary(s & parts.spec, nwords) & summary(d & parts.spec, nwords) & table))


def scheme_summaries(vec: dict[str, int], nwords: int, scheme: str,
                     pair: int | None = None) -> list[int]:
    """The summaries the program would AND under ``scheme``: one per field,
    or a pair table's exact summary (of the AND of its fields' vectors)
    in place of its fields' own."""
    groups: list[list[str]] = [[n] for n in vec]
    if scheme in ("pair", "pair+ports"):
        assert pair is not None
        return [summary(vec[n], nwords) for n in vec if n not in ("src", "dst")] + [pair]
    if scheme in ("src*dst", "both"):
        groups = [g for g in groups if g[0] not in ("src", "dst")] + [["src", "dst"]]
    if scheme in ("proto*ports", "both"):
        ports = [n for n in ("proto", "sport", "dport") if n in vec]
        groups = [g for g in groups if g[0] not in ports] + [ports]
    if scheme == "exact":
        groups = [list(vec)]
    out = []
    for g in groups:
        v = -1
        for n in g:
            v &= vec[n]
        out.append(summary(v, nwords))
    return out


def ports_term(c: Compiled, vec: dict[str, int], nwords: int) -> int:
    """filter.c's TERM_PPAIR for this packet: src.pw | ports_pair[slots]."""
    pw = ports_wild(c)
    return (summary(vec["src"] & pw, nwords)
            | summary(vec["sport"] & vec["dport"] & ~pw & c.live, nwords))


def count_one(c: Compiled, parts: PairParts, pkt: Packet, scheme: str) -> Count:
    nw = c.shape.nwords
    vec = field_vectors(c, pkt)
    pair = pair_term(parts, pkt, vec, nw) if scheme.startswith("pair") else None
    sums = scheme_summaries(vec, nw, scheme, pair)
    if scheme == "pair+ports" and "sport" in vec and "dport" in vec:
        sums.append(ports_term(c, vec, nw))
    return scan_count(list(vec.values()), sums, nw)


def report(c: Compiled, parts: PairParts, packets: list[Probe], scheme: str) -> dict:
    counts = [count_one(c, parts, p.packet, scheme) for p in packets]
    loaded = [x.loaded for x in counts]
    false = [x.false for x in counts]
    return {"scheme": scheme, "mean_loaded": statistics.fmean(loaded), "max_loaded": max(loaded),
            "mean_false": statistics.fmean(false), "max_false": max(false)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ruleset", nargs="?",
                    default=str(shared_dir() / "rulesets" / "classbench-fw1-10k.rules"))
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--rule-packets", type=int, default=64)
    ap.add_argument("--policy-packets", type=int, default=16)
    args = ap.parse_args()
    table = load_source(str(Path(args.ruleset)), args.count)
    mix = traffic_mix(table, args.rule_packets, args.policy_packets)
    probes = source_probes(args.ruleset, table)
    start = time.process_time()
    c = compile_chain(table, "INPUT", {"lo": 1})
    print(f"{Path(args.ruleset).name} N={args.count}: {len(c.entries)} entries, "
          f"{c.shape.nwords} words, fields {sorted(c.shape.fields)}, "
          f"compile {time.process_time() - start:.2f} s")
    parts = pair_parts(c)
    for scheme in SCHEMES:
        r = report(c, parts, mix, scheme)
        print(f"  mix ({len(mix)} packets) {scheme:12s}: loaded mean {r['mean_loaded']:.1f} "
              f"max {r['max_loaded']}, false mean {r['mean_false']:.1f} max {r['max_false']}")
    for p in probes:
        line = []
        for scheme in SCHEMES:
            n = count_one(c, parts, p.packet, scheme)
            line.append(f"{scheme} {n.loaded}/{n.false}")
        print(f"  probe {p.position:7s} (rule {p.first_match}): loaded/false " + ", ".join(line))


if __name__ == "__main__":
    main()
