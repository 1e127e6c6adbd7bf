"""What the data-path benchmark feeds the classifiers: the first N rules of
a ClassBench rule set, and packets whose first match is a chosen rule.

Packets are drawn inside a rule's match box (a point in each prefix and
port range) and checked against the reference semantics: the *actual*
first-matching rule is recorded, because a rule's box may be shadowed by
earlier rules. Addresses are kept routable (no 0/8, 127/8, class D/E), so
the same packet is accepted by the kernel's IPv4 input as live traffic."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bpf_iptables.datapath.harness import table_from_save
from bpf_iptables.model import Rule, Table
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet

FRAME_BYTES = 64          # what BPF_PROG_TEST_RUN and the live sender get
IP_LENGTH = FRAME_BYTES - 14
TCP, UDP, GRE = 6, 17, 47
SAMPLES = 40              # draws per position (each is one reference evaluation)


def subset_text(ruleset: Path, count: int) -> str:
    """The restore file with only its first ``count`` -A lines."""
    out, seen = [], 0
    for line in ruleset.read_text().splitlines():
        if line.startswith("-A "):
            seen += 1
            if seen > count:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def rule_count(ruleset: Path) -> int:
    return sum(1 for line in ruleset.read_text().splitlines() if line.startswith("-A "))


def routable(addr: int) -> bool:
    first = addr >> 24
    return first not in (0, 127) and first < 224


def inside(rng: random.Random, addr: int, mask: int) -> int:
    for _ in range(64):
        value = (addr & mask) | (rng.getrandbits(32) & ~mask & 0xFFFFFFFF)
        if routable(value):
            return value
    return value


def uniform_addr(rng: random.Random) -> int:
    while True:
        value = rng.getrandbits(32)
        if routable(value):
            return value


def port_in(rng: random.Random, rule: Rule, which: str) -> int:
    for m in rule.matches:
        r = getattr(m.data, which, None)
        if r is not None:
            return rng.randint(r.lo, r.hi)
    return rng.randint(1024, 65535)


def packet_in(rng: random.Random, rule: Rule) -> Packet:
    proto = rule.proto if rule.proto in (TCP, UDP) else UDP
    return Packet(in_iface="", src=inside(rng, rule.src.addr, rule.src.mask),
                  dst=inside(rng, rule.dst.addr, rule.dst.mask), proto=proto,
                  sport=port_in(rng, rule, "sport"), dport=port_in(rng, rule, "dport"),
                  tcp_flags=0x10, length=IP_LENGTH)


def uniform_packet(rng: random.Random, proto: int) -> Packet:
    return Packet(in_iface="", src=uniform_addr(rng), dst=uniform_addr(rng), proto=proto,
                  sport=rng.randint(1024, 65535), dport=rng.randint(1024, 65535),
                  tcp_flags=0x10, length=IP_LENGTH)


@dataclass
class Probe:
    """A packet and where it first matches (rule index, or None: the policy)."""
    position: str           # first, middle, last, policy
    packet: Packet
    first_match: int | None
    verdict: str


def first_match(table: Table, pkt: Packet) -> tuple[int | None, str]:
    res = evaluate(table, pkt, count=False)
    return (res.hits[0][1] if res.hits else None), res.verdict


def probe_for(table: Table, target: int, position: str, rng: random.Random) -> Probe:
    """The drawn packet whose first match is ``target`` or, failing that,
    the latest rule before it (boxes can be shadowed)."""
    rules = table.chains["INPUT"].rules
    best: Probe | None = None
    candidates = [target] + [max(0, target - d) for d in (1, 2, 4, 8, 16)]
    for index in candidates:
        for _ in range(SAMPLES // len(candidates) + 1):
            pkt = packet_in(rng, rules[index])
            hit, verdict = first_match(table, pkt)
            if hit is not None and hit <= target and (best is None or hit > best.first_match):
                best = Probe(position, pkt, hit, verdict)
            if hit == target:
                return best
    for _ in range(SAMPLES):   # uniform traffic reaches late catch-all rules
        pkt = uniform_packet(rng, rng.choice((UDP, TCP)))
        hit, verdict = first_match(table, pkt)
        if hit is not None and hit <= target and (best is None or hit > best.first_match):
            best = Probe(position, pkt, hit, verdict)
    assert best is not None, f"no packet reaches rule {target} or before"
    return best


def policy_probe(table: Table, rng: random.Random) -> Probe | None:
    """A packet no rule matches (None when e.g. a catch-all rule ends the set).
    UDP first, then GRE, which only protocol-less rules can match."""
    for proto in (UDP, TCP, GRE):
        for _ in range(SAMPLES * 2):
            pkt = uniform_packet(rng, proto)
            hit, verdict = first_match(table, pkt)
            if hit is None:
                return Probe("policy", pkt, None, verdict)
    return None


def probes(table: Table, seed: int = 11) -> list[Probe]:
    """One packet each that first-matches at the first rule, the middle, the
    last rule, and the default policy (when some packet reaches it)."""
    rng = random.Random(seed)
    n = len(table.chains["INPUT"].rules)
    out = [probe_for(table, 0, "first", rng), probe_for(table, n // 2, "middle", rng),
           probe_for(table, n - 1, "last", rng)] if n else []
    pol = policy_probe(table, rng)
    if pol is not None:
        out.append(pol)
    return out


def deepest(table: Table, seed: int = 11) -> Probe:
    """The packet that walks the most rules: the policy one, else the last."""
    found = probes(table, seed)
    return found[-1]


def load_table(ruleset: Path, count: int) -> Table:
    return table_from_save(subset_text(ruleset, count))
