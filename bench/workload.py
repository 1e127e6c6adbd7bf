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


# -- the synthetic worst case ------------------------------------------------

SYNTHETIC = "synthetic-worst"
SYN_SRC, SYN_DST = "10.99.0.1", "10.98.0.2"     # the live client's frame, the server
SYN_SPORT, SYN_FINAL_DPORT, SYN_POLICY_DPORT = 4000, 65000, 65001


def synthetic_text(count: int) -> str:
    """``count`` rules: ``count - 1`` that a packet to port 65000 matches in
    every field but the destination port (the last field iptables checks:
    the IP header first, then ``-m udp``'s source and destination port),
    then the rule it matches (DROP). Policy ACCEPT, so only that final rule
    drops. Ports 1..count-1 are distinct, so each rule's box holds packets
    that first-match it, and count <= 65000."""
    if not 1 <= count <= SYN_FINAL_DPORT:
        raise ValueError(f"synthetic rule count {count} not in 1..{SYN_FINAL_DPORT}")
    head = f"-A INPUT -s {SYN_SRC}/32 -d {SYN_DST}/32 -p udp -m udp --sport {SYN_SPORT}"
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f"{head} --dport {port} -j ACCEPT" for port in range(1, count)]
    lines += [f"{head} --dport {SYN_FINAL_DPORT} -j DROP", "COMMIT"]
    return "\n".join(lines) + "\n"


def source_text(source: str, count: int) -> str:
    """The restore text of a workload: SYNTHETIC, or a ClassBench file's
    first ``count`` rules."""
    return synthetic_text(count) if source == SYNTHETIC else subset_text(Path(source), count)


def load_source(source: str, count: int) -> Table:
    return table_from_save(source_text(source, count))


def source_name(source: str) -> str:
    return SYNTHETIC if source == SYNTHETIC else Path(source).name


def _synthetic_packet(dport: int) -> Packet:
    from bpf_iptables.netaddr import ip_to_int

    return Packet(in_iface="", src=ip_to_int(SYN_SRC), dst=ip_to_int(SYN_DST), proto=UDP,
                  sport=SYN_SPORT, dport=dport, tcp_flags=0, length=IP_LENGTH)


def synthetic_probes(table: Table) -> list[Probe]:
    """First, middle and last rule, and the policy, each checked against the
    reference (no search: the boxes are known)."""
    n = len(table.chains["INPUT"].rules)
    want = [("first", 1 if n > 1 else SYN_FINAL_DPORT),
            ("middle", n // 2 if n > 2 else SYN_FINAL_DPORT),
            ("last", SYN_FINAL_DPORT), ("policy", SYN_POLICY_DPORT)]
    out = []
    for position, dport in want:
        pkt = _synthetic_packet(dport)
        hit, verdict = first_match(table, pkt)
        out.append(Probe(position, pkt, hit, verdict))
    return out


def source_probes(source: str, table: Table) -> list[Probe]:
    return synthetic_probes(table) if source == SYNTHETIC else probes(table)


def deepest_dropped(table: Table, seed: int = 11) -> Probe:
    """The dropped packet that walks the most rules: the policy one when the
    policy drops and some packet reaches it, else one first-matching the
    latest DROP rule a drawn packet reaches. A live frame must be dropped:
    an accepted one goes on into the stack (socket lookup, an ICMP port
    unreachable back through OUTPUT), which then dominates its cost and is
    not the classifier's (a catch-all ACCEPT ends fw1-10k and acl1-10k)."""
    rng = random.Random(seed)
    pol = policy_probe(table, rng)
    if pol is not None and pol.verdict == "DROP":
        return pol
    rules = table.chains["INPUT"].rules
    for index in range(len(rules) - 1, -1, -1):
        if rules[index].target.name != "DROP":
            continue
        probe = probe_for(table, index, "deepest-drop", rng)
        if probe.verdict == "DROP":
            return probe
    return deepest(table, seed)


def live_probe(source: str, table: Table) -> Probe:
    """The live frame: for the synthetic set the one that misses N-1 rules
    on their last field and matches the final rule; for ClassBench the
    dropped one walking the most rules (deepest_dropped)."""
    if source == SYNTHETIC:
        return next(p for p in synthetic_probes(table) if p.position == "last")
    return deepest_dropped(table)


# -- the traffic mix -------------------------------------------------------

def traffic_mix(table: Table, rule_packets: int, policy_packets: int,
                seed: int = 23) -> list[Probe]:
    """Traffic drawn from the rules' match boxes, uniformly over rules (one
    rule drawn per packet, a point in its box: `packet_in`), plus packets no
    rule matches (the default policy's traffic). Each packet's actual first
    match comes from the reference (a box may be shadowed by earlier rules).
    Fewer policy packets when no packet reaches the policy (a catch-all rule)."""
    rng = random.Random(seed)
    rules = table.chains["INPUT"].rules
    out: list[Probe] = []
    for _ in range(rule_packets if rules else 0):
        pkt = packet_in(rng, rng.choice(rules))
        hit, verdict = first_match(table, pkt)
        out.append(Probe("mix-rule", pkt, hit, verdict))
    for _ in range(policy_packets):
        pol = policy_probe(table, rng)
        if pol is None:
            break
        out.append(Probe("mix-policy", pol.packet, None, pol.verdict))
    return out
