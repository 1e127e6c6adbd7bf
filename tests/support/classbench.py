"""ClassBench rule sets as match boxes: a fast first-match reference and
packets drawn inside, at the edges of and just outside the boxes.

A ClassBench rule is a box: a source and a destination prefix, maybe a
protocol, maybe a source and a destination port range (a tcp/udp match).
``reference.evaluate`` walks the model rule by rule through the extension
registry (~2.5 ms a packet at 10k rules); here every rule becomes a tuple
of ints and the first match is found by a plain loop with early exit, so
thousands of packets cost seconds. ``boxes()`` refuses any rule that is
not such a box, and the tests also compare this scan with
``reference.evaluate`` on a sample, so it cannot drift from the reference
semantics unnoticed."""
from __future__ import annotations

import contextlib
import io
import random
from dataclasses import dataclass, field

from bpf_iptables.datapath.packets import header_length
from bpf_iptables.model import Rule, RuleSet, Table
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import ICMP, TCP, UDP, Packet
from bpf_iptables.restore import Output, RestoreOptions, Restorer
from bpf_iptables.restore_input import read_statements

POLICY = -1       # first_match(): no rule matched, the chain's policy decides
HOTDROP = -2      # first_match(): xt_tcpudp dropped an offset-1 TCP fragment
FULL = 0xFFFFFFFF
# ordinary unicast space: what a real packet may carry as source (no
# martians: 0/8, 127/8, multicast, class E) -- for the live tests
UNICAST_FIRST, UNICAST_LAST = 0x01000000, 0xDFFFFFFF


# -- parsing through the real restore path -------------------------------------

class _MemoryStore:
    """The store interface Restorer needs, in memory (nothing attached)."""

    def __init__(self) -> None:
        self.saved: RuleSet | None = None

    def load(self) -> RuleSet:
        return RuleSet()

    def save(self, rules: RuleSet) -> None:
        self.saved = rules


def restore_table(text: str) -> Table:
    """The filter table as ``bpf-iptables-restore`` builds it from ``text``."""
    store = _MemoryStore()
    out = Output("bpf-iptables-restore", "test", stdout=io.StringIO(), stderr=io.StringIO())
    restorer = Restorer(RestoreOptions(), out, lambda wait: contextlib.nullcontext(store))
    status = restorer.run(read_statements(text.encode()))
    if status != 0 or store.saved is None:
        raise AssertionError(f"restore failed ({status}): {out.stderr.getvalue()}")
    return store.saved.tables["filter"]


# -- rules as boxes ------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """One rule's match space; ``l4`` is the protocol of its tcp/udp match
    (0: none), which needs a transport header to match."""

    src: int
    smask: int
    dst: int
    dmask: int
    proto: int          # 0: any
    sport: tuple[int, int]
    dport: tuple[int, int]
    l4: int
    verdict: str

    @property
    def key(self) -> tuple:
        return (self.src, self.smask, self.dst, self.dmask, self.proto, *self.sport,
                *self.dport, self.l4)


def box_of(rule: Rule) -> Box:
    """The box of a ClassBench rule; anything else is refused (ValueError)."""
    if (rule.src_inv or rule.dst_inv or rule.in_iface or rule.out_iface or rule.proto_inv
            or rule.fragment or rule.target.name not in ("ACCEPT", "DROP")
            or not rule.target.is_standard or rule.target.goto):
        raise ValueError(f"not a ClassBench rule: {rule}")
    if rule.src.cidr < 0 or rule.dst.cidr < 0:
        raise ValueError(f"not a prefix: {rule}")
    sport, dport, l4 = (0, 0xFFFF), (0, 0xFFFF), 0
    for m in rule.matches:
        d = m.data
        if m.name not in ("tcp", "udp") or l4 or d.sport.invert or d.dport.invert:
            raise ValueError(f"not a ClassBench match: {rule}")
        if m.name == "tcp" and (d.option or d.flg_mask or d.flags_inv or d.option_inv):
            raise ValueError(f"tcp flags/options: {rule}")
        sport, dport = (d.sport.lo, d.sport.hi), (d.dport.lo, d.dport.hi)
        l4 = TCP if m.name == "tcp" else UDP
    return Box(rule.src.addr, rule.src.mask, rule.dst.addr, rule.dst.mask, rule.proto,
               sport, dport, l4, rule.target.name)


def boxes(table: Table, chain: str = "INPUT") -> list[Box]:
    return [box_of(r) for r in table.chains[chain].rules]


# -- the first-match scan ------------------------------------------------------

class Scanner:
    """First match over boxes: ``match(pkt)`` is a rule index, POLICY or HOTDROP."""

    def __init__(self, bxs: list[Box]):
        self.rows = [(b.src, b.smask, b.dst, b.dmask, b.proto, b.sport[0], b.sport[1],
                      b.dport[0], b.dport[1], b.l4) for b in bxs]

    def match(self, pkt: Packet) -> int:
        src, dst, proto = pkt.src, pkt.dst, pkt.proto
        frag = pkt.frag_offset
        sp, dp = pkt.sport, pkt.dport
        for i, (sa, sm, da, dm, p, slo, shi, dlo, dhi, l4) in enumerate(self.rows):
            if src & sm != sa or dst & dm != da or (p and p != proto):
                continue
            if l4:
                # the tcp/udp match: only whole headers of its own protocol
                # (the rule's -p guarantees that); a non-first fragment has
                # none, and at offset 1 xt_tcpudp drops TCP on the spot
                if frag:
                    if frag == 1 and l4 == TCP:
                        return HOTDROP
                    continue
                if not (slo <= sp <= shi and dlo <= dp <= dhi):
                    continue
            return i
        return POLICY


@dataclass
class Expected:
    """Verdicts and counters the reference gives a packet sequence."""

    verdicts: list[str] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    rules: dict[int, list[int]] = field(default_factory=dict)   # index -> [packets, bytes]
    policy: list[int] = field(default_factory=lambda: [0, 0])


def expect(bxs: list[Box], policy: str, packets: list[Packet],
           first: list[int] | None = None) -> Expected:
    """What the reference does with ``packets``; ``first``: their first
    matches if already known (else the scan finds them)."""
    if first is None:
        scanner = Scanner(bxs)
        first = [scanner.match(pkt) for pkt in packets]
    out = Expected(first=list(first))
    for pkt, i in zip(packets, first):
        if i == HOTDROP:
            out.verdicts.append("DROP")
            continue
        if i == POLICY:
            out.verdicts.append(policy)
            slot = out.policy
        else:
            out.verdicts.append(bxs[i].verdict)
            slot = out.rules.setdefault(i, [0, 0])
        slot[0] += 1
        slot[1] += pkt.length
    return out


def disagreements_with_evaluate(table: Table, bxs: list[Box], packets: list[Packet]) -> list[str]:
    """Where the scan and ``reference.evaluate`` differ (should be nowhere)."""
    scanner, bad = Scanner(bxs), []
    for pkt in packets:
        i = scanner.match(pkt)
        res = evaluate(table, pkt, count=False)
        ref = res.hits[0][1] if res.hits else (POLICY if res.policy_chain else HOTDROP)
        if ref != i:
            bad.append(f"{pkt}: scan {i}, evaluate {ref}")
    return bad


# -- packets -------------------------------------------------------------------

OTHER_PROTOS = (ICMP, 47, 50, 132, 89, 2)


def _in_prefix(rng: random.Random, addr: int, mask: int, edges: bool) -> int:
    """A point of the prefix; with ``edges`` often its first or last address."""
    if edges and rng.random() < 0.4:
        return addr | (rng.choice((0, FULL)) & ~mask & FULL)
    return addr | (rng.getrandbits(32) & ~mask & FULL)


def _in_range(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice((lo, hi, rng.randint(lo, hi), rng.randint(lo, hi)))


def _outside(rng: random.Random, lo: int, hi: int, top: int) -> int | None:
    """A value just below or just above [lo, hi], None if the range is full."""
    candidates = [v for v in (lo - 1, hi + 1) if 0 <= v <= top]
    return rng.choice(candidates) if candidates else None


def _finish(rng: random.Random, pkt: Packet) -> Packet:
    if rng.random() < 0.05:
        # IP options move the transport header: NOPs, or record-route
        pkt.ip_options = rng.choice((b"\x01" * rng.randint(1, 40),
                                     b"\x07\x0b\x04" + bytes(8)))
    if pkt.proto == TCP:
        pkt.tcp_flags = rng.choice((0x02, 0x10, 0x12, 0x11, 0x04, 0x18))
    elif pkt.proto == ICMP:
        pkt.icmp_type, pkt.icmp_code = rng.choice(((8, 0), (0, 0), (3, 3), (11, 0)))
    pkt.length = header_length(pkt) + rng.choice((0, rng.randint(0, 1400)))
    return pkt


def inside(rng: random.Random, box: Box, ifname: str) -> Packet:
    """A packet in ``box`` (edges of prefixes and port ranges included)."""
    proto = box.proto or rng.choice((TCP, UDP, *OTHER_PROTOS))
    pkt = Packet(in_iface=ifname, src=_in_prefix(rng, box.src, box.smask, True),
                 dst=_in_prefix(rng, box.dst, box.dmask, True), proto=proto)
    if proto in (TCP, UDP):
        pkt.sport = _in_range(rng, *box.sport)
        pkt.dport = _in_range(rng, *box.dport)
    return _finish(rng, pkt)


def outside(rng: random.Random, box: Box, ifname: str) -> Packet:
    """A packet of ``box`` moved just out of it along one dimension (if the
    box is full along the one picked, the packet may still be inside)."""
    pkt = inside(rng, box, ifname)
    dim = rng.choice(("src", "dst", "proto", "sport", "dport"))
    if dim == "src" and box.smask:
        size = (~box.smask & FULL) + 1
        pkt.src = _outside(rng, box.src, box.src + size - 1, FULL) or pkt.src
    elif dim == "dst" and box.dmask:
        size = (~box.dmask & FULL) + 1
        pkt.dst = _outside(rng, box.dst, box.dst + size - 1, FULL) or pkt.dst
    elif dim == "proto" and box.proto:
        pkt.proto = rng.choice([p for p in (TCP, UDP, *OTHER_PROTOS) if p != box.proto])
        if pkt.proto in (TCP, UDP):
            pkt.sport, pkt.dport = _in_range(rng, *box.sport), _in_range(rng, *box.dport)
    elif dim in ("sport", "dport") and box.l4:
        value = _outside(rng, *getattr(box, dim), 0xFFFF)
        if value is not None:
            setattr(pkt, dim, value)
    return _finish(rng, pkt)


def uniform(rng: random.Random, ifname: str) -> Packet:
    proto = rng.choice((TCP, TCP, UDP, UDP, *OTHER_PROTOS))
    pkt = Packet(in_iface=ifname, src=rng.getrandbits(32), dst=rng.getrandbits(32), proto=proto)
    if proto in (TCP, UDP):
        pkt.sport, pkt.dport = rng.getrandbits(16), rng.getrandbits(16)
    return _finish(rng, pkt)


def fragment(rng: random.Random, pkt: Packet) -> Packet:
    """``pkt`` as a non-first fragment (offset 1 a third of the time)."""
    pkt.frag_offset = 1 if rng.random() < 0.33 else rng.randint(2, 8191)
    pkt.more_fragments = rng.random() < 0.5
    pkt.length = header_length(pkt) + rng.randint(8, 600)
    return pkt


def draw(bxs: list[Box], count: int, seed: int, ifname: str) -> list[Packet]:
    """``count`` packets: 55% inside a random rule's box, 25% just outside
    one, 15% uniform, 5% non-first fragments of box packets."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        roll = rng.random()
        box = rng.choice(bxs)
        if roll < 0.55:
            out.append(inside(rng, box, ifname))
        elif roll < 0.80:
            out.append(outside(rng, box, ifname))
        elif roll < 0.95:
            out.append(uniform(rng, ifname))
        else:
            out.append(fragment(rng, inside(rng, box, ifname)))
    return out


# -- the data path against the scan --------------------------------------------

XDP_VERDICTS = {1: "DROP", 2: "ACCEPT"}


def datapath_mismatches(prog, ifindex: int, bxs: list[Box], packets: list[Packet],
                        want: Expected) -> list[str]:
    """Run ``packets`` through the loaded program ``prog`` (counters zero)
    with BPF_PROG_TEST_RUN; every verdict, rule counter and the policy
    counter against ``want``."""
    from bpf_iptables.datapath.packets import frame
    from bpf_iptables.datapath.testrun import test_run

    bad = []
    for pkt, verdict, first in zip(packets, want.verdicts, want.first):
        got = test_run(prog.fd, frame(pkt), ifindex=ifindex)
        if XDP_VERDICTS.get(got.verdict) != verdict:
            bad.append(f"{pkt}: data path {got.name}, reference {verdict} (rule {first})")
    for (chain, index), c in sorted(prog.rule_counters().items()):
        ref = want.rules.get(index, [0, 0])
        if chain != "INPUT" or [c.packets, c.bytes] != ref:
            bad.append(f"counters of {chain} rule {index + 1}: data path "
                       f"{c.packets}/{c.bytes}, reference {ref[0]}/{ref[1]}")
    policy = prog.policy_counters()
    if [policy.packets, policy.bytes] != want.policy:
        bad.append(f"policy counters: data path {policy.packets}/{policy.bytes}, "
                   f"reference {want.policy}")
    return bad


# -- packets for a real link ---------------------------------------------------

def clean(addr: int) -> bool:
    """An address the kernel takes as an ordinary unicast source or local
    destination (no martian), outside the test link's 10.99.0.0/24."""
    return (UNICAST_FIRST <= addr <= UNICAST_LAST and addr >> 24 != 127
            and addr >> 8 != 0x0A6300)


def live_packets(bxs: list[Box], rng: random.Random, per_kind: int = 2,
                 extra: int = 2) -> list[Packet]:
    """Packets for a real link, IP ids 1, 2, ...: for each of ACCEPT and
    DROP and each of TCP and UDP, ``per_kind`` rules each with a packet of
    its box that it is the first match of (clean addresses, source !=
    destination); then ``extra`` uniform clean packets."""
    scanner = Scanner(bxs)
    want = {(v, p): per_kind for v in ("ACCEPT", "DROP") for p in (TCP, UDP)}
    out: list[Packet] = []
    order = list(range(len(bxs)))
    rng.shuffle(order)
    for index in order:
        box = bxs[index]
        for _ in range(8):
            pkt = inside(rng, box, "")
            kind = (box.verdict, pkt.proto)
            if want.get(kind, 0) and clean(pkt.src) and clean(pkt.dst) \
                    and pkt.src != pkt.dst and scanner.match(pkt) == index:
                want[kind] -= 1
                out.append(pkt)
                break
        if not any(want.values()):
            break
    assert not any(want.values()), f"no packet found for {want}"
    while extra:
        pkt = uniform(rng, "")
        if pkt.proto in (TCP, UDP) and clean(pkt.src) and clean(pkt.dst):
            out.append(pkt)
            extra -= 1
    for ip_id, pkt in enumerate(out, 1):
        pkt.ip_id = ip_id
        if pkt.proto == TCP:
            pkt.tcp_flags = 0x02
    return out
