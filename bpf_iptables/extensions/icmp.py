"""-m icmp / -p icmp: ICMP type and code range (libipt_icmp)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import NotSupported, XtablesError
from ..numbers import parse_prefix
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState
from .tcp import ascii_lower

ANY_TYPE = 0xFF  # the type iptables stores for "any": matches every ICMP packet


@dataclass(frozen=True)
class IcmpName:
    name: str
    type: int
    code_min: int
    code_max: int


def _n(name: str, type_: int, lo: int = 0, hi: int = 0xFF) -> IcmpName:
    return IcmpName(name, type_, lo, hi)


# libxt_icmp.h's icmp_codes, in its order: prefix lookups report the first
# two hits when ambiguous, and -L prints the first name of a (type, codes).
ICMP_CODES: tuple[IcmpName, ...] = (
    _n("any", 0xFF), _n("echo-reply", 0), _n("pong", 0),
    _n("destination-unreachable", 3),
    _n("network-unreachable", 3, 0, 0), _n("host-unreachable", 3, 1, 1),
    _n("protocol-unreachable", 3, 2, 2), _n("port-unreachable", 3, 3, 3),
    _n("fragmentation-needed", 3, 4, 4), _n("source-route-failed", 3, 5, 5),
    _n("network-unknown", 3, 6, 6), _n("host-unknown", 3, 7, 7),
    _n("network-prohibited", 3, 9, 9), _n("host-prohibited", 3, 10, 10),
    _n("TOS-network-unreachable", 3, 11, 11), _n("TOS-host-unreachable", 3, 12, 12),
    _n("communication-prohibited", 3, 13, 13), _n("host-precedence-violation", 3, 14, 14),
    _n("precedence-cutoff", 3, 15, 15),
    _n("source-quench", 4),
    _n("redirect", 5), _n("network-redirect", 5, 0, 0), _n("host-redirect", 5, 1, 1),
    _n("TOS-network-redirect", 5, 2, 2), _n("TOS-host-redirect", 5, 3, 3),
    _n("echo-request", 8), _n("ping", 8),
    _n("router-advertisement", 9), _n("router-solicitation", 10),
    _n("time-exceeded", 11), _n("ttl-exceeded", 11),
    _n("ttl-zero-during-transit", 11, 0, 0), _n("ttl-zero-during-reassembly", 11, 1, 1),
    _n("parameter-problem", 12), _n("ip-header-bad", 12, 0, 0),
    _n("required-option-missing", 12, 1, 1),
    _n("timestamp-request", 13), _n("timestamp-reply", 14),
    _n("address-mask-request", 17), _n("address-mask-reply", 18),
)


@dataclass(frozen=True)
class IcmpData:
    type: int = ANY_TYPE
    code_min: int = 0
    code_max: int = 0xFF
    invert: bool = False


def _parse_range(text: str) -> tuple[tuple[int, int], str] | None:
    """parse_range(): "n" or "n:m" (0-255 each), returns the rest."""
    lo, end = parse_prefix(text, 0, 255)
    if lo is None:
        return None
    rest = text[end:]
    hi = lo
    if rest.startswith(":"):
        hi, end = parse_prefix(rest[1:], 0, 255)
        if hi is None:
            return None
        rest = rest[1 + end:]
    return (lo, hi), rest


def parse_icmp(text: str) -> tuple[int, int, int]:
    """ipt_parse_icmp(): a (prefix of a) name, or "type[/code[:code]]"."""
    match: IcmpName | None = None
    wanted = ascii_lower(text)
    for entry in ICMP_CODES:
        if not ascii_lower(entry.name).startswith(wanted):
            continue
        if match is not None:
            raise XtablesError(f"Ambiguous ICMP type `{text}': `{match.name}' or `{entry.name}'?")
        match = entry
    if match is not None:
        return match.type, match.code_min, match.code_max
    parsed = _parse_range(text)
    if parsed is None:
        raise XtablesError(f"Unknown ICMP type `{text}'")
    types, rest = parsed
    codes = (0, 0xFF)
    if rest.startswith("/"):
        parsed = _parse_range(rest[1:])
        if parsed is None:
            raise XtablesError(f"Unknown ICMP code `{text}'")
        codes, rest = parsed
    if rest:
        raise XtablesError(f"unknown character {rest[0]}")
    if types[0] != types[1]:
        raise XtablesError("ICMP type range not supported")
    return types[0], codes[0], codes[1]


def icmp_name(d: IcmpData) -> str | None:
    for entry in ICMP_CODES:
        if (entry.type, entry.code_min, entry.code_max) == (d.type, d.code_min, d.code_max):
            return entry.name
    return None


def icmp_types_text() -> str:
    """xt_print_icmp_types(): aliases in parentheses, codes indented."""
    out = ""
    for i, entry in enumerate(ICMP_CODES):
        prev = ICMP_CODES[i - 1] if i else None
        if prev is not None and entry.type == prev.type:
            if (entry.code_min, entry.code_max) == (prev.code_min, prev.code_max):
                out += f" ({entry.name})"
            else:
                out += f"\n   {entry.name}"
        else:
            out += f"\n{entry.name}"
    return out + "\n"


class IcmpMatch(XtOptionsExtension, MatchExtension):
    name = "icmp"
    help_text = ("icmp match options:\n"
                 "[!] --icmp-type typename\tmatch icmp type\n"
                 "[!] --icmp-type type[/code]\t(or numeric type or type/code)\n"
                 "Valid ICMP Types:" + icmp_types_text())
    required_proto = 1  # ipt_icmp has .proto = IPPROTO_ICMP
    xt_options = (XtOption("icmp-type", T.STRING, invert=True, mand=True),)

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        state.values["parsed"] = parse_icmp(value)

    def build(self, state: XtState, ctx: ParseContext) -> IcmpData:
        type_, lo, hi = state.values["parsed"]
        return IcmpData(type_, lo, hi, state.inverted["icmp-type"])

    def save(self, d: IcmpData) -> str:
        out = " !" if d.invert else ""
        if d.type == ANY_TYPE:
            return out + " --icmp-type any"
        out += f" --icmp-type {d.type}"
        # only the lower code survives: "3/1:2" saves as "3/1"
        if d.code_min != 0 or d.code_max != 0xFF:
            out += f"/{d.code_min}"
        return out

    def print(self, d: IcmpData, numeric: bool) -> str:
        out = " icmp"
        if not numeric:
            name = icmp_name(d)
            if name is not None:
                return f"{out} {'!' if d.invert else ''}{name}"
        # no space before "type": iptables prints "icmptype 3"
        out += (" !" if d.invert else "") + f"type {d.type}"
        if d.code_min == d.code_max:
            out += f" code {d.code_min}"
        elif d.code_min != 0 or d.code_max != 0xFF:
            out += f" codes {d.code_min}-{d.code_max}"
        return out

    def matches(self, d: IcmpData, pkt: Any) -> bool:
        if pkt.is_fragment:
            return False
        hit = d.type == ANY_TYPE or (pkt.icmp_type == d.type
                                     and d.code_min <= pkt.icmp_code <= d.code_max)
        return hit != d.invert

    def lower(self, d: IcmpData, rule: Any) -> list[Any]:
        """Type and code on the icmp field; xt_icmp never matches a
        non-first fragment (even inverted) nor a packet without a header."""
        from ..datapath import fields as dp  # only when compiling for the data path
        if rule.proto != 1 or rule.proto_inv:
            raise NotSupported("icmp match without -p icmp in the eBPF data path")
        return [dp.NotFragment(), dp.IcmpConstraint(d.type, d.code_min, d.code_max, d.invert)]



EXTENSIONS = [IcmpMatch()]
