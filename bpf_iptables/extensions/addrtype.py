"""-m addrtype: routing type of the source/destination address (libxt_addrtype
revision 1, kernel xt_addrtype)."""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TableOpError, XtablesError
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

# RTN_* in enum order: bit i of a type mask is rtn_names[i].
RTN_NAMES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
             "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")

INVERT_SOURCE = 0x1
INVERT_DEST = 0x2
LIMIT_IFACE_IN = 0x4
LIMIT_IFACE_OUT = 0x8

# The kernel's addrtype_mt_checkentry_v1: where each interface limit is valid.
IFACE_IN_HOOKS = frozenset({"PREROUTING", "INPUT", "FORWARD"})
IFACE_OUT_HOOKS = frozenset({"FORWARD", "OUTPUT", "POSTROUTING"})


@dataclass(frozen=True)
class AddrtypeData:
    """struct xt_addrtype_info_v1."""

    source: int = 0
    dest: int = 0
    flags: int = 0


def _type_bit(token: str) -> int | None:
    """parse_type(): the first name the token is a case-insensitive prefix of."""
    for i, name in enumerate(RTN_NAMES):
        if len(token) <= len(name) and name[:len(token)].lower() == token.lower():
            return 1 << i
    return None


def parse_types(arg: str) -> int:
    mask = 0
    rest = arg
    while "," in rest:
        head, _, tail = rest.partition(",")
        bit = _type_bit(head) if head else None
        if bit is None:
            raise XtablesError(f"addrtype: bad type `{rest}'")
        mask |= bit
        rest = tail
    bit = _type_bit(rest) if rest else None
    if bit is None:
        raise XtablesError(f'addrtype: bad type "{rest}"')
    return mask | bit


def types_text(mask: int) -> str:
    return ",".join(name for i, name in enumerate(RTN_NAMES) if mask & (1 << i))


class AddrtypeMatch(XtOptionsExtension, MatchExtension):
    name = "addrtype"
    help_text = (
        'Address type match options:\n'
        ' [!] --src-type type[,...]      Match source address type\n'
        ' [!] --dst-type type[,...]      Match destination address type\n'
        "     --limit-iface-in           Match only on the packet's incoming device\n"
        "     --limit-iface-out          Match only on the packet's outgoing device\n"
        '\n'
        'Valid types:           \n'
        '                                UNSPEC\n'
        '                                UNICAST\n'
        '                                LOCAL\n'
        '                                BROADCAST\n'
        '                                ANYCAST\n'
        '                                MULTICAST\n'
        '                                BLACKHOLE\n'
        '                                UNREACHABLE\n'
        '                                PROHIBIT\n'
        '                                THROW\n'
        '                                NAT\n'
        '                                XRESOLVE\n')
    xt_options = (
        XtOption("src-type", T.STRING, invert=True),
        XtOption("dst-type", T.STRING, invert=True),
        XtOption("limit-iface-in", excl=("limit-iface-out",)),
        XtOption("limit-iface-out", excl=("limit-iface-in",)),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        flags = state.values.setdefault("_flags", 0)
        if opt.name == "src-type":
            state.values["_source"] = parse_types(arg or "")
            flags |= INVERT_SOURCE if invert else 0
        elif opt.name == "dst-type":
            state.values["_dest"] = parse_types(arg or "")
            flags |= INVERT_DEST if invert else 0
        elif opt.name == "limit-iface-in":
            flags |= LIMIT_IFACE_IN
        else:
            flags |= LIMIT_IFACE_OUT
        state.values["_flags"] = flags

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not {"src-type", "dst-type"} & state.flags:
            raise XtablesError("addrtype: you must specify --src-type or --dst-type")

    def build(self, state: XtState, ctx: ParseContext) -> AddrtypeData:
        return AddrtypeData(state.values.get("_source", 0), state.values.get("_dest", 0),
                            state.values.get("_flags", 0))

    def save(self, d: AddrtypeData) -> str:
        out = ""
        if d.source:
            out += f"{' !' if d.flags & INVERT_SOURCE else ''} --src-type {types_text(d.source)}"
        if d.dest:
            out += f"{' !' if d.flags & INVERT_DEST else ''} --dst-type {types_text(d.dest)}"
        if d.flags & LIMIT_IFACE_IN:
            out += " --limit-iface-in"
        if d.flags & LIMIT_IFACE_OUT:
            out += " --limit-iface-out"
        return out

    def print(self, d: AddrtypeData, numeric: bool) -> str:
        out = " ADDRTYPE match"
        if d.source:
            out += f" src-type {'!' if d.flags & INVERT_SOURCE else ''}{types_text(d.source)}"
        if d.dest:
            out += f" dst-type {'!' if d.flags & INVERT_DEST else ''}{types_text(d.dest)}"
        if d.flags & LIMIT_IFACE_IN:
            out += " limit-in"
        if d.flags & LIMIT_IFACE_OUT:
            out += " limit-out"
        return out

    def kernel_check(self, d: AddrtypeData, rule: "Rule", hooks: frozenset[str]) -> bool:
        if d.flags & LIMIT_IFACE_IN and d.flags & LIMIT_IFACE_OUT:
            raise TableOpError(errno.EINVAL)
        if d.flags & LIMIT_IFACE_IN and not hooks <= IFACE_IN_HOOKS:
            return False
        if d.flags & LIMIT_IFACE_OUT and not hooks <= IFACE_OUT_HOOKS:
            return False
        return True

    def matches(self, d: AddrtypeData, packet: "Packet") -> bool:
        """addrtype_mt_v1(). The packet's src_type/dst_type are the address
        types as seen from the device the rule limits to (any device when
        it does not limit); an address has one type, given as a set here."""
        if d.source and self._hit(d.source, packet.src_type) == bool(d.flags & INVERT_SOURCE):
            return False
        if d.dest and self._hit(d.dest, packet.dst_type) == bool(d.flags & INVERT_DEST):
            return False
        return True

    def lower(self, d: AddrtypeData, rule: "Rule") -> list[Any]:
        """The addresses of the types asked for, from the namespace's
        routes when the rule set was compiled (``datapath.addrtypes``), as
        prefix constraints on the address: the smallest block holding
        them, less the blocks of it that hold none. ``!`` takes the other
        types. With --limit-iface-in/out the type depends on the device
        too (a route on another device gives UNICAST): decided here when
        the rule's own ``-i``/``-o`` names that one device, otherwise a
        per-candidate test against the routes' LPM trie with the packet's
        device (``_check``)."""
        from ..datapath import addrtypes as at  # only when compiling for the data path
        from ..datapath import fields as dp

        types = at.current()
        if d.flags & (LIMIT_IFACE_IN | LIMIT_IFACE_OUT):
            device = self._device(d, rule)
            if device is None:
                return [self._check(d)]
            types = at.current_for(device)
        out: list[Any] = []
        for which, mask, inv in (("src", d.source, d.flags & INVERT_SOURCE),
                                 ("dst", d.dest, d.flags & INVERT_DEST)):
            if not mask:
                continue
            if inv:
                mask = ~mask & ((1 << len(RTN_NAMES)) - 1)
            shape = at.as_prefixes(types.ranges(mask))
            if shape is None:
                return [dp.Never()]
            positive, holes = shape
            if positive is not None:
                out.append(dp.AddrConstraint(which, at.net(*positive)))
            out += [dp.AddrConstraint(which, at.net(*h), True) for h in holes]
        return out

    @staticmethod
    def _device(d: AddrtypeData, rule: "Rule") -> str | None:
        """The one device the limit refers to when the rule's own -i (in)
        or -o (out) names it (no wildcard, not inverted): then the types
        are decided at compile time. None: checked per packet."""
        name, inv = ((rule.in_iface, rule.in_inv) if d.flags & LIMIT_IFACE_IN
                     else (rule.out_iface, rule.out_inv))
        if not name or inv or name.endswith("+"):
            return None
        return name

    @staticmethod
    def _check(d: AddrtypeData) -> Any:
        """The per-candidate test of the types as the packet's device sees
        them (datapath filter.c FIELD_ATCHECK): the types that miss."""
        from ..datapath import fields as dp

        every = (1 << len(RTN_NAMES)) - 1

        def miss(mask: int, inv: int) -> int:
            if not mask:
                return 0
            return mask if inv else every & ~mask

        return dp.AddrtypeCheck(miss(d.source, d.flags & INVERT_SOURCE),
                                miss(d.dest, d.flags & INVERT_DEST),
                                bool(d.flags & LIMIT_IFACE_OUT))

    @staticmethod
    def _hit(mask: int, types: frozenset[str]) -> bool:
        return any(mask & (1 << RTN_NAMES.index(t.upper())) for t in types
                   if t.upper() in RTN_NAMES)


EXTENSIONS = [AddrtypeMatch()]
