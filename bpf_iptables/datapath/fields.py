"""Field decomposition: a rule (or a chain of guarding rules) as per-field constraints.

An entry of the compiled chain matches a packet when every rule on its path
matches: the jump rules that lead into an inlined user chain, then the rule
itself. Each rule contributes constraints on independent header fields; an
entry's constraints on one field are a conjunction, normalised here to at
most one positive constraint plus a list of negated ones, which is what
the field tables in compiler.py need to give every field value one
bitvector. Address masks that are not prefixes are the exception: they
become a per-candidate check after the bitvector step.

Fields: source and destination prefix, protocol, input interface, output
interface (FORWARD: the egress device of the kernel's route), fragment
flag, TCP flags, source and destination port (tcp/udp matches; those also
require an L4 header), ICMP type/code, IP total length, TTL, TOS byte,
"source or destination port" (multiport --ports), source MAC, packet
type. The output interface is known statically at INPUT (none), so it is
decided here.

Extension matches are lowered by their own module: ``MatchExtension.lower()``
returns a conjunction of the constraint objects below, which ``add_rule``
folds into the entry. A match without a lowering is NotSupported."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from ..errors import NotSupported
from ..extensions import find_match
from ..model import Rule
from ..netaddr import IPv4Net, cidr_blocks, cidr_to_mask, iface_matches, mask_to_cidr



# contiguous mask -> prefix length (mask_to_cidr without its loop; ~26k calls at 10k rules)
PREFIX_LENGTHS = {cidr_to_mask(n): n for n in range(33)}


class Prefix(NamedTuple):
    """An address prefix (a tuple: built ~13k times per 10k rules, and
    hashed; a frozen dataclass costs several times more for both)."""

    addr: int
    length: int

    @classmethod
    def of(cls, net: IPv4Net) -> "Prefix":
        length = mask_to_cidr(net.mask)
        if length < 0:
            raise NotSupported("non-contiguous address mask in the eBPF data path")
        return cls(net.addr & net.mask, length)

    @property
    def mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.length)) & 0xFFFFFFFF

    def contains(self, other: "Prefix") -> bool:
        return self.length <= other.length and (other.addr & self.mask) == self.addr


@dataclass(slots=True)   # slots: two per entry, ~10k entries
class PrefixField:
    """A conjunction of prefix constraints on one address."""

    positive: Prefix | None = None
    negative: tuple[Prefix, ...] = ()
    # a non-contiguous mask has no place in an LPM trie: it is checked per
    # candidate after the bitvector step (one such constraint per entry)
    residual: tuple[int, int, bool] | None = None   # (addr, mask, invert)

    def add(self, net: IPv4Net, invert: bool) -> bool:
        """Add one constraint; False when the conjunction became empty."""
        if net.mask == 0:
            return not invert  # "0/0" always holds, "! 0/0" never
        length = PREFIX_LENGTHS.get(net.mask, -1)
        if length < 0:
            if self.residual is not None:
                raise NotSupported("two non-contiguous masks on one address "
                                   "along a chain path in the eBPF data path")
            self.residual = (net.addr & net.mask, net.mask, invert)
            return True
        p = Prefix(net.addr & net.mask, length)
        if invert:
            self.negative += (p,)
            return True
        if self.positive is None or p.contains(self.positive):
            self.positive = self.positive or p
            return True
        if self.positive.contains(p):
            self.positive = p
            return True
        return False  # two disjoint prefixes


@dataclass(slots=True)
class RangeField:
    """A conjunction of range constraints (inclusive) on a value in [0, top]:
    ports, the IP total length, the TTL."""

    positive: tuple[int, int] | None = None
    negative: tuple[tuple[int, int], ...] = ()
    top: int = 0xFFFF

    def add(self, lo: int, hi: int, invert: bool) -> bool:
        lo, hi = max(lo, 0), min(hi, self.top)
        if invert:
            if lo > hi:
                return True  # "! empty range" always holds
            if lo == 0 and hi == self.top:
                return False
            self.negative += ((lo, hi),)
            return True
        if lo == 0 and hi == self.top:
            return True
        if self.positive is not None:
            lo, hi = max(lo, self.positive[0]), min(hi, self.positive[1])
        if lo > hi:
            return False
        self.positive = (lo, hi)
        return True


# --- what an extension's lower() may return (a conjunction) ------------------

@dataclass(frozen=True)
class AddrConstraint:
    """The source ("src") or destination ("dst") address in (or not in) ``net``."""
    which: str
    net: IPv4Net
    invert: bool = False


@dataclass(frozen=True)
class PortConstraint:
    """The source ("sport") or destination ("dport") port in [lo, hi] (or not)."""
    which: str
    lo: int
    hi: int
    invert: bool = False


@dataclass(frozen=True)
class RangeConstraint:
    """A value with a range-compressed field ("length": IP total length,
    "ttl": IP TTL as netfilter sees it) in [lo, hi] (or not)."""
    which: str
    lo: int
    hi: int
    invert: bool = False


@dataclass(frozen=True)
class TosConstraint:
    """(TOS byte & mask) == value, or not (xt_tos; xt_dscp with mask 0xFC)."""
    mask: int
    value: int
    invert: bool = False


@dataclass(frozen=True)
class PortsEither:
    """The source port or the destination port in one of ``ranges``
    (multiport --ports): a disjunction across the two port fields."""
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class MacConstraint:
    """The Ethernet source address is ``addr`` (48 bits), or not. Never
    holds without an Ethernet header (xt_mac: loopback), even inverted."""
    addr: int
    invert: bool = False


PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = 0, 1, 2, 3


@dataclass(frozen=True)
class PkttypeConstraint:
    """skb->pkt_type is ``pkttype`` (PACKET_*), or not."""
    pkttype: int
    invert: bool = False


@dataclass(frozen=True)
class NeedsL4:
    """The packet has a TCP/UDP header (a first fragment, not truncated)."""


NEEDS_L4 = NeedsL4()


@dataclass(frozen=True)
class NotFragment:
    """The packet is not a non-first fragment."""


@dataclass(frozen=True)
class TcpFlagsConstraint:
    mask: int
    cmp: int
    invert: bool = False


ICMP_ANY = 0xFF   # "--icmp-type any": every ICMP packet with a header


@dataclass(frozen=True)
class IcmpConstraint:
    """The ICMP type (ICMP_ANY: any) with its code in [code_min, code_max], or not."""
    type: int
    code_min: int
    code_max: int
    invert: bool = False


# the ctstate field's slots: state + 4 * direction + 8 * status bits
# (SEEN_REPLY, ASSURED, CONFIRMED as bits 0-2; bpf/lib/conntrack_defs.h CT_SLOT)
CT_SLOTS = 64
CT_INVALID, CT_NEW, CT_ESTABLISHED, CT_RELATED = 0, 1, 2, 3
# --mode netfilter (nfmode.py): the kernel's own conntrack entry gives more,
# so the slot is wider: state (0-4, 4 UNTRACKED) + 8 * direction + 16 * the
# low six IPS_* bits (EXPECTED ... DST_NAT); filter.c NF_CT_SLOT
NF_CT_SLOTS = 1024
_ct_layout: contextvars.ContextVar[str] = contextvars.ContextVar("ct_layout", default="xdp")


def nf_conntrack() -> bool:
    """Whether rules are being lowered for --mode netfilter's conntrack."""
    return _ct_layout.get() == "nf"


def ct_slots() -> int:
    return NF_CT_SLOTS if nf_conntrack() else CT_SLOTS


@contextmanager
def netfilter_layout() -> Iterator[None]:
    """Lower conntrack matches for --mode netfilter while the block runs."""
    token = _ct_layout.set("nf")
    try:
        yield
    finally:
        _ct_layout.reset(token)


@dataclass(frozen=True)
class CtstateConstraint:
    """The packet's conntrack slot (CT_SLOTS) is one of those whose bit is
    set in ``slots``."""
    slots: int


CT_CHECKS_MAX = 4   # per entry (filter.c follows ct_check.next this often)


@dataclass(frozen=True)
class CtCheck:
    """xt_conntrack's tuple and --ctexpire tests, checked per candidate
    against the packet's connection (struct ct_check, lib/conntrack_defs.h;
    ``flags``/``inv`` use xt_conntrack's match/invert bits: proto 1<<1,
    addresses 1<<2.. (origsrc, origdst, replsrc, repldst), expires 1<<7,
    ports 1<<8..). Skipped for packets without a connection."""
    flags: int = 0
    inv: int = 0
    addr: tuple[int, int, int, int] = (0, 0, 0, 0)
    mask: tuple[int, int, int, int] = (0, 0, 0, 0)
    plo: tuple[int, int, int, int] = (0, 0, 0, 0)
    phi: tuple[int, int, int, int] = (0, 0, 0, 0)
    proto: int = 0
    exp_lo: int = 0
    exp_hi: int = 0

    def merge(self, other: "CtCheck") -> "CtCheck | None":
        """Both checks as one (two conntrack matches on one entry's path),
        or None when they test the same option (then both are kept)."""
        if self.flags & other.flags:
            return None
        pick = lambda a, b, i, bit: b[i] if other.flags & (bit << i) else a[i]  # noqa: E731
        return CtCheck(self.flags | other.flags, self.inv | other.inv,
                       tuple(pick(self.addr, other.addr, i, 4) for i in range(4)),
                       tuple(pick(self.mask, other.mask, i, 4) for i in range(4)),
                       tuple(pick(self.plo, other.plo, i, 256) for i in range(4)),
                       tuple(pick(self.phi, other.phi, i, 256) for i in range(4)),
                       other.proto if other.flags & 2 else self.proto,
                       other.exp_lo if other.flags & 128 else self.exp_lo,
                       other.exp_hi if other.flags & 128 else self.exp_hi)


@dataclass(frozen=True)
class AddrtypeCheck:
    """-m addrtype --limit-iface-in/out: the types of the source and
    destination address that fail the match (bit t: RTN_* t), as the
    packet's device sees them; checked per candidate against the routes'
    LPM trie (filter.c FIELD_ATCHECK). ``out``: the device is the output
    one (OUTPUT's, the egress device at TC egress)."""
    src_miss: int
    dst_miss: int
    out: bool = False


ATYPE_ALL = 0xFFF   # the twelve RTN_* types


MARK_CHECKS_MAX = 2   # per entry (struct mark_check in filter.c)


@dataclass(frozen=True)
class MarkConstraint:
    """(skb->mark & mask) == value, or not (xt_mark); checked per
    candidate (filter.c FIELD_MARK: the mark at TC hooks, 0 at XDP)."""
    mask: int
    value: int
    invert: bool = False


@dataclass(frozen=True)
class SetCheck:
    """-m set: the packet is (``invert``: is not) in the set ``name`` under
    the directions ``dirs``; checked per candidate (bpf/lib/set.h). The set
    is resolved to its type and id when the chain is compiled
    (datapath/sets.py): its contents are the set's maps, not the rules'."""
    name: str
    dirs: tuple[str, ...]
    invert: bool = False
    return_nomatch: bool = False    # hash:net: a nomatch element is what matches


@dataclass(frozen=True)
class ProtoConstraint:
    """The packet's protocol is ``proto``, or not."""
    proto: int
    invert: bool = False


@dataclass(frozen=True)
class Never:
    """The match never holds (e.g. a reversed iprange)."""


Constraint = (AddrConstraint | PortConstraint | RangeConstraint | TosConstraint | PortsEither
              | MacConstraint | PkttypeConstraint | NeedsL4 | NotFragment
              | TcpFlagsConstraint | IcmpConstraint | CtstateConstraint | ProtoConstraint
              | CtCheck | MarkConstraint | AddrtypeCheck | SetCheck | Never)


def prefixes_of_range(lo: int, hi: int) -> list[IPv4Net]:
    """The inclusive address range [lo, hi] as the fewest CIDR blocks."""
    return [IPv4Net(addr, cidr_to_mask(length)) for addr, length in cidr_blocks(lo, hi)]


def complement_ranges(ranges: list[tuple[int, int]], top: int) -> list[tuple[int, int]]:
    """The gaps of [0, top] not covered by ``ranges`` (inclusive bounds)."""
    gaps, nxt = [], 0
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if lo > nxt:
            gaps.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= top:
        gaps.append((nxt, top))
    return gaps


# Shared by every EntryFields until it gets a constraint of that kind
# (copy on write, ``EntryFields.own``): ~10k entries per compile, most
# with a few kinds of constraint, would otherwise each carry six such
# objects (and the collector would walk them all). Never mutated.
NO_PREFIX = PrefixField()
NO_RANGE = RangeField()
NO_TTL = RangeField(top=0xFF)


@dataclass(slots=True)
class EntryFields:
    """Everything the field tables need to know about one entry. Lists of
    constraints are tuples (the empty one is shared); the prefix and range
    fields start as the shared NO_* objects, replaced by ``own()`` before
    a constraint is added. Not changed once ``decompose`` returned it."""

    never: bool = False                 # statically false: no bit anywhere
    # (default_factory: dataclasses refuse a mutable default, though never mutated)
    src: PrefixField = field(default_factory=lambda: NO_PREFIX)
    dst: PrefixField = field(default_factory=lambda: NO_PREFIX)
    proto: int | None = None            # required protocol
    proto_not: tuple[int, ...] = ()
    iif: tuple[tuple[str, bool], ...] = ()  # (pattern, invert)
    oif: tuple[tuple[str, bool], ...] = ()  # FORWARD's -o
    fragment: bool | None = None        # required non-first-fragment state
    l4: bool = False                    # needs ports (a tcp/udp match)
    sport: RangeField = field(default_factory=lambda: NO_RANGE)
    dport: RangeField = field(default_factory=lambda: NO_RANGE)
    flags: tuple[tuple[int, int, bool], ...] = ()  # (mask, cmp, invert)
    icmp: tuple[tuple[int, int, int, bool], ...] = ()  # (type, lo, hi, invert)
    length: RangeField = field(default_factory=lambda: NO_RANGE)   # IP total length
    ttl: RangeField = field(default_factory=lambda: NO_TTL)
    tos: tuple[tuple[int, int, bool], ...] = ()  # (mask, value, invert)
    # sport or dport in one of these ranges (multiport --ports); one per entry
    either: tuple[tuple[int, int], ...] | None = None
    mac: tuple[tuple[int, bool], ...] = ()        # (source MAC, invert)
    pkttype: tuple[tuple[int, bool], ...] = ()    # (PACKET_*, invert)
    ctstate: tuple[int, ...] = ()    # CtstateConstraint.slots, all must hold
    ctcheck: tuple[CtCheck, ...] = ()   # per-candidate conntrack tuple/expiry tests, all must hold
    # per-candidate mark tests (mask, value, invert), all must hold; the
    # positive ones merged into the first (MarkConstraint)
    mark: tuple[tuple[int, int, bool], ...] = ()
    # -m addrtype --limit-iface-*: (source, destination) types that miss
    atcheck: tuple[int, int] | None = None
    sets: tuple[SetCheck, ...] = ()     # per-candidate set membership tests, all must hold
    # uses(), fixed once decompose() has built the entry
    used: frozenset[str] | None = field(default=None, compare=False, repr=False)
    # has_checks(), fixed with ``used`` (the compiler asks for every entry)
    checks: bool | None = field(default=None, compare=False, repr=False)

    def has_checks(self) -> bool:
        """Whether a candidate is checked after the bitvector step (address
        residuals, conntrack tuples, marks, addrtype), which can fail."""
        return bool(self.src.residual or self.dst.residual or self.ctcheck or self.mark
                    or self.atcheck)

    def own(self, which: str) -> "PrefixField | RangeField":
        """This entry's own (writable) prefix or range field ``which``."""
        current = getattr(self, which)
        if current is NO_PREFIX:
            current = PrefixField()
        elif current is NO_RANGE:
            current = RangeField()
        elif current is NO_TTL:
            current = RangeField(top=0xFF)
        else:
            return current
        setattr(self, which, current)
        return current

    def range_field(self, which: str) -> RangeField:
        return {"sport": self.sport, "dport": self.dport, "length": self.length,
                "ttl": self.ttl}[which]

    def uses(self) -> set[str]:
        """The fields this entry constrains."""
        used = set()
        if self.src.positive or self.src.negative:
            used.add("src")
        if self.dst.positive or self.dst.negative:
            used.add("dst")
        if self.proto is not None or self.proto_not:
            used.add("proto")
        if self.iif:
            used.add("iif")
        if self.oif:
            used.add("oif")
        if self.fragment is not None:
            used.add("frag")
        if self.flags:
            used.add("flags")
        if self.icmp:
            used.add("icmp")
        if self.sport.positive or self.sport.negative:
            used.add("sport")
        if self.l4 or self.dport.positive or self.dport.negative:
            used.add("dport")  # the dport table also encodes "has an L4 header"
        if self.tos:
            used.add("tos")
        if self.mac:
            used.add("mac")
        if self.pkttype:
            used.add("pkttype")
        if self.ctstate:
            used.add("ctstate")
        if self.ctcheck:
            used.add("ctcheck")
        if self.mark:
            used.add("mark")
        if self.atcheck is not None:
            used.add("atcheck")
        if self.either is not None:
            used |= {"ports", "sport", "dport"}
        if self.length is not NO_RANGE and (self.length.positive or self.length.negative):
            used.add("length")
        if self.ttl is not NO_TTL and (self.ttl.positive or self.ttl.negative):
            used.add("ttl")
        return used


def decompose(path: list[Rule], hook: str = "INPUT") -> EntryFields:
    """The constraints of an entry reached through ``path`` (guards, then the rule)."""
    f = EntryFields()
    for rule in path:
        if not add_rule(f, rule, hook):
            f.never = True
    f.used = frozenset(f.uses())
    f.checks = f.has_checks()
    return f


def add_rule(f: EntryFields, rule: Rule, hook: str) -> bool:
    """Add one rule's matches; False when the entry can never match."""
    # "0/0" always holds and "! 0/0" never: no constraint to keep
    ok = True
    if rule.src.mask:
        if f.src is NO_PREFIX:
            f.src = PrefixField()
        ok = f.src.add(rule.src, rule.src_inv)
    elif rule.src_inv:
        ok = False
    if not ok:
        pass   # as "src and dst": the destination is not looked at
    elif rule.dst.mask:
        if f.dst is NO_PREFIX:
            f.dst = PrefixField()
        ok = f.dst.add(rule.dst, rule.dst_inv)
    elif rule.dst_inv:
        ok = False
    if rule.proto:
        if rule.proto_inv:
            f.proto_not += (rule.proto,)
        elif f.proto not in (None, rule.proto):
            ok = False
        else:
            f.proto = rule.proto
    elif rule.proto_inv:
        ok = False  # "! -p all"
    if rule.in_iface or rule.in_inv:
        if hook in ("INPUT", "FORWARD"):
            f.iif += ((rule.in_iface, rule.in_inv),)
        elif iface_matches(rule.in_iface, "") == rule.in_inv:
            ok = False
    if rule.out_iface or rule.out_inv:
        if hook == "OUTPUT":
            # the OUTPUT program runs at egress: its "iif" field is the output device
            f.iif += ((rule.out_iface, rule.out_inv),)
        elif hook == "FORWARD":
            # the egress device of the kernel's route (filter.c: bpf_fib_lookup)
            f.oif += ((rule.out_iface, rule.out_inv),)
        # INPUT has no output device: the kernel compares against ""
        elif iface_matches(rule.out_iface, "") == rule.out_inv:
            ok = False
    if rule.fragment:
        want = not rule.frag_inv
        if f.fragment not in (None, want):
            ok = False
        f.fragment = want
    for match in rule.matches:
        for c in find_match(match.name).lower(match.data, rule):
            if hook == "FORWARD" and isinstance(c, AddrtypeCheck) and c.out:
                # the output device there is the route's (FIELD_OIF), not the packet's
                raise NotSupported("-m addrtype --limit-iface-out in FORWARD without the "
                                   "rule's own -o in the eBPF data path")
            ok = apply(f, c) and ok
    if hook == "OUTPUT" and f.mac:
        # the kernel refuses xt_mac at OUTPUT (the front end does too)
        raise NotSupported("-m mac in OUTPUT")
    if hook in ("OUTPUT", "FORWARD"):
        # PACKET_HOST for every packet these chains see: a locally generated
        # one at LOCAL_OUT (the frame at TC egress carries the next hop's
        # MAC), and ip_forward() drops any other type before FORWARD
        # (though the dispatcher sends it there): decided here
        if not all((t == PACKET_HOST) != inv for t, inv in f.pkttype):
            ok = False
        f.pkttype = ()
    return ok


def apply(f: EntryFields, c: Constraint) -> bool:
    """Fold one constraint into the entry; False when it can never match."""
    if isinstance(c, AddrConstraint):
        return f.own("src" if c.which == "src" else "dst").add(c.net, c.invert)
    if isinstance(c, (PortConstraint, RangeConstraint)):
        return f.own(c.which).add(c.lo, c.hi, c.invert)
    if isinstance(c, NeedsL4):
        f.l4 = True
        return True
    if isinstance(c, NotFragment):
        if f.fragment:
            return False
        f.fragment = False
        return True
    if isinstance(c, TcpFlagsConstraint):
        f.flags += ((c.mask, c.cmp, c.invert),)
        return True
    if isinstance(c, PortsEither):
        if f.either is not None:
            # (s in A or d in A) and (s in B or d in B) is no single OR of
            # one sport and one dport bitvector
            raise NotSupported("two multiport --ports matches along one chain path "
                               "in the eBPF data path")
        f.either = c.ranges
        return True
    if isinstance(c, MacConstraint):
        f.mac += ((c.addr, c.invert),)
        return True
    if isinstance(c, PkttypeConstraint):
        f.pkttype += ((c.pkttype, c.invert),)
        return True
    if isinstance(c, TosConstraint):
        f.tos += ((c.mask, c.value, c.invert),)
        return True
    if isinstance(c, IcmpConstraint):
        f.icmp += ((c.type, c.code_min, c.code_max, c.invert),)
        return True
    if isinstance(c, ProtoConstraint):
        if c.invert:
            f.proto_not += (c.proto,)
            return f.proto != c.proto
        if f.proto not in (None, c.proto) or c.proto in f.proto_not:
            return False
        f.proto = c.proto
        return True
    if isinstance(c, CtstateConstraint):
        f.ctstate += (c.slots,)
        return c.slots != 0
    if isinstance(c, CtCheck):
        if c in f.ctcheck:
            return True
        for i, k in enumerate(f.ctcheck):
            both = k.merge(c)
            if both is not None:
                f.ctcheck = f.ctcheck[:i] + (both,) + f.ctcheck[i + 1:]
                return True
        if len(f.ctcheck) == CT_CHECKS_MAX:
            # the classifier follows at most this many per candidate (a
            # bounded loop the verifier walks in every scan step)
            raise NotSupported(f"more than {CT_CHECKS_MAX} conntrack matches repeating a "
                               "tuple or --ctexpire option on one rule path in the eBPF "
                               "data path")
        f.ctcheck += (c,)
        return True
    if isinstance(c, MarkConstraint):
        return add_mark(f, c)
    if isinstance(c, AddrtypeCheck):
        s, d = f.atcheck or (0, 0)
        f.atcheck = (s | c.src_miss, d | c.dst_miss)
        return ATYPE_ALL not in f.atcheck
    if isinstance(c, SetCheck):
        if c not in f.sets:
            f.sets += (c,)
        return True
    if isinstance(c, Never):
        return False
    raise TypeError(f"unknown data-path constraint {c!r}")


def add_mark(f: EntryFields, c: MarkConstraint) -> bool:
    """Fold a mark test into the entry's (at most MARK_CHECKS_MAX)."""
    if c.value & ~c.mask & 0xFFFFFFFF:
        # xt_mark does not mask the value: (mark & mask) never equals it
        return c.invert
    if c.mask == 0:
        return not c.invert   # (mark & 0) == 0 always holds
    if not c.invert:
        for i, (m, v, inv) in enumerate(f.mark):
            if not inv:
                if (v ^ c.value) & m & c.mask:
                    return False   # two positive tests no mark meets
                f.mark = f.mark[:i] + ((m | c.mask, v | c.value, False),) + f.mark[i + 1:]
                return True
    elif (c.mask, c.value, c.invert) in f.mark:
        return True
    if len(f.mark) == MARK_CHECKS_MAX:
        raise NotSupported(f"more than {MARK_CHECKS_MAX} -m mark tests (one of them "
                           "positive at most, merged) on one rule path in the eBPF data path")
    f.mark += ((c.mask, c.value, c.invert),)
    return True
