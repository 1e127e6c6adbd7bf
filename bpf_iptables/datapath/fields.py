"""Field decomposition: a rule (or a chain of guarding rules) as per-field constraints.

An entry of the compiled chain matches a packet when every rule on its path
matches: the jump rules that lead into an inlined user chain, then the rule
itself. Each rule contributes constraints on independent header fields; an
entry's constraints on one field are a conjunction, normalised here to at
most one positive constraint plus a list of negated ones, which is what
the field tables in compiler.py need to give every field value one
bitvector. Address masks that are not prefixes are the exception: they
become a per-candidate check after the bitvector step.

Fields: source and destination prefix, protocol, input interface, fragment
flag, TCP flags, source and destination port (tcp/udp matches; those also
require an L4 header). The output interface is known statically at INPUT
(none), so it is decided here. Anything else is NotSupported for now."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NotSupported
from ..model import Rule
from ..netaddr import IPv4Net, iface_matches, mask_to_cidr

PORT_MATCHES = ("tcp", "udp")
ALWAYS_TRUE_MATCHES = ("comment",)  # xt_comment matches every packet


@dataclass(frozen=True)
class Prefix:
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


@dataclass
class PrefixField:
    """A conjunction of prefix constraints on one address."""

    positive: Prefix | None = None
    negative: list[Prefix] = field(default_factory=list)
    # a non-contiguous mask has no place in an LPM trie: it is checked per
    # candidate after the bitvector step (one such constraint per entry)
    residual: tuple[int, int, bool] | None = None   # (addr, mask, invert)

    def add(self, net: IPv4Net, invert: bool) -> bool:
        """Add one constraint; False when the conjunction became empty."""
        if net.mask == 0:
            return not invert  # "0/0" always holds, "! 0/0" never
        if mask_to_cidr(net.mask) < 0:
            if self.residual is not None:
                raise NotSupported("two non-contiguous masks on one address "
                                   "along a chain path in the eBPF data path")
            self.residual = (net.addr & net.mask, net.mask, invert)
            return True
        p = Prefix.of(net)
        if invert:
            self.negative.append(p)
            return True
        if self.positive is None or p.contains(self.positive):
            self.positive = self.positive or p
            return True
        if self.positive.contains(p):
            self.positive = p
            return True
        return False  # two disjoint prefixes


@dataclass
class RangeField:
    """A conjunction of port-range constraints (ranges inclusive)."""

    positive: tuple[int, int] | None = None
    negative: list[tuple[int, int]] = field(default_factory=list)

    def add(self, lo: int, hi: int, invert: bool) -> bool:
        if invert:
            if lo > hi:
                return True  # "! empty range" always holds
            if lo == 0 and hi == 0xFFFF:
                return False
            self.negative.append((lo, hi))
            return True
        if lo == 0 and hi == 0xFFFF:
            return True
        if self.positive is not None:
            lo, hi = max(lo, self.positive[0]), min(hi, self.positive[1])
        if lo > hi:
            return False
        self.positive = (lo, hi)
        return True


@dataclass
class EntryFields:
    """Everything the field tables need to know about one entry."""

    never: bool = False                 # statically false: no bit anywhere
    src: PrefixField = field(default_factory=PrefixField)
    dst: PrefixField = field(default_factory=PrefixField)
    proto: int | None = None            # required protocol
    proto_not: list[int] = field(default_factory=list)
    iif: list[tuple[str, bool]] = field(default_factory=list)  # (pattern, invert)
    fragment: bool | None = None        # required non-first-fragment state
    l4: bool = False                    # needs ports (a tcp/udp match)
    sport: RangeField = field(default_factory=RangeField)
    dport: RangeField = field(default_factory=RangeField)
    flags: list[tuple[int, int, bool]] = field(default_factory=list)  # (mask, cmp, invert)

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
        if self.fragment is not None:
            used.add("frag")
        if self.flags:
            used.add("flags")
        if self.sport.positive or self.sport.negative:
            used.add("sport")
        if self.l4 or self.dport.positive or self.dport.negative:
            used.add("dport")  # the dport table also encodes "has an L4 header"
        return used


def decompose(path: list[Rule], hook: str = "INPUT") -> EntryFields:
    """The constraints of an entry reached through ``path`` (guards, then the rule)."""
    f = EntryFields()
    for rule in path:
        if not add_rule(f, rule, hook):
            f.never = True
    return f


def add_rule(f: EntryFields, rule: Rule, hook: str) -> bool:
    """Add one rule's matches; False when the entry can never match."""
    ok = f.src.add(rule.src, rule.src_inv) and f.dst.add(rule.dst, rule.dst_inv)
    if rule.proto:
        if rule.proto_inv:
            f.proto_not.append(rule.proto)
        elif f.proto not in (None, rule.proto):
            ok = False
        else:
            f.proto = rule.proto
    elif rule.proto_inv:
        ok = False  # "! -p all"
    if rule.in_iface or rule.in_inv:
        if hook in ("INPUT", "FORWARD"):
            f.iif.append((rule.in_iface, rule.in_inv))
        elif iface_matches(rule.in_iface, "") == rule.in_inv:
            ok = False
    if rule.out_iface or rule.out_inv:
        if hook == "OUTPUT":
            # the OUTPUT program runs at egress: its "iif" field is the output device
            f.iif.append((rule.out_iface, rule.out_inv))
        elif hook != "INPUT":
            raise NotSupported("-o in the eBPF data path")
        # INPUT has no output device: the kernel compares against ""
        elif iface_matches(rule.out_iface, "") == rule.out_inv:
            ok = False
    if rule.fragment:
        want = not rule.frag_inv
        if f.fragment not in (None, want):
            ok = False
        f.fragment = want
    for match in rule.matches:
        if match.name in ALWAYS_TRUE_MATCHES:
            continue
        if match.name not in PORT_MATCHES:
            raise NotSupported(f"match `{match.name}' in the eBPF data path")
        data = match.data
        f.l4 = True
        ok = f.sport.add(data.sport.lo, data.sport.hi, data.sport.invert) and ok
        ok = f.dport.add(data.dport.lo, data.dport.hi, data.dport.invert) and ok
        if match.name == "tcp":
            if data.option or data.option_inv:
                raise NotSupported("--tcp-option in the eBPF data path")
            if data.flg_mask or data.flags_inv:
                f.flags.append((data.flg_mask, data.flg_cmp, data.flags_inv))
    return ok
