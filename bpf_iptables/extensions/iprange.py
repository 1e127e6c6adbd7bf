"""-m iprange: source/destination address ranges (libxt_iprange, revision 1)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ..errors import NotSupported, XtablesError
from ..netaddr import int_to_ip, numeric_to_ipaddr
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState


@dataclass(frozen=True)
class AddrRange:
    lo: int
    hi: int
    invert: bool = False

    def matches(self, addr: int) -> bool:
        # inclusive at both ends; a reversed range never matches (unless inverted)
        return (self.lo <= addr <= self.hi) != self.invert

    def text(self) -> str:
        return f"{int_to_ip(self.lo)}-{int_to_ip(self.hi)}"


@dataclass(frozen=True)
class IprangeData:
    src: AddrRange | None = None
    dst: AddrRange | None = None


def parse_range(text: str, option: str) -> tuple[int, int]:
    """iprange_parse_range(): "a" or "a-b", numeric IPv4 addresses only."""
    first, dash, second = text.partition("-")
    if not dash:
        second = first
    addrs = []
    for spec in (first, second):
        addr = numeric_to_ipaddr(spec)
        if addr is None:
            raise XtablesError(f'iprange: Bad value for "{option}" option: "{spec}"')
        addrs.append(addr)
    if dash and addrs[0] > addrs[1]:
        # accepted, only warned about
        sys.stderr.write(f"xt_iprange: range {first}-{second} is reversed and will never match\n")
    return addrs[0], addrs[1]


class IprangeMatch(XtOptionsExtension, MatchExtension):
    name = "iprange"
    help_text = (
        "iprange match options:\n"
        "[!] --src-range ip[-ip]    Match source IP in the specified range\n"
        "[!] --dst-range ip[-ip]    Match destination IP in the specified range\n")
    xt_options = (
        XtOption("src-range", T.STRING, invert=True),
        XtOption("dst-range", T.STRING, invert=True),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        lo, hi = parse_range(value, "--" + opt.name)
        state.values[opt.key + ":range"] = AddrRange(lo, hi, invert)

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not state.flags:
            raise XtablesError(
                "iprange match: You must specify `--src-range' or `--dst-range'")

    def build(self, state: XtState, ctx: ParseContext) -> IprangeData:
        return IprangeData(state.values.get("src-range:range"),
                           state.values.get("dst-range:range"))

    def save(self, d: IprangeData) -> str:
        out = ""
        for option, rng in (("src-range", d.src), ("dst-range", d.dst)):
            if rng is not None:
                out += f"{' !' if rng.invert else ''} --{option} {rng.text()}"
        return out

    def print(self, d: IprangeData, numeric: bool) -> str:
        out = ""
        for label, rng in (("source", d.src), ("destination", d.dst)):
            if rng is not None:
                out += f" {label} IP range{' !' if rng.invert else ''} {rng.text()}"
        return out

    def matches(self, d: IprangeData, pkt: Any) -> bool:
        if d.src is not None and not d.src.matches(pkt.src):
            return False
        if d.dst is not None and not d.dst.matches(pkt.dst):
            return False
        return True

    def lower(self, d: IprangeData, rule: Any) -> list[Any]:
        """Ranges as CIDR blocks on the src/dst prefix fields.

        An entry holds one positive prefix per address, so a range that is
        not a single block is written as its complement, negated: "in
        [lo, hi]" is "in none of the blocks below lo or above hi"."""
        from ..datapath import fields as dp  # only when compiling for the data path
        out: list[Any] = []
        for which, rng in (("src", d.src), ("dst", d.dst)):
            if rng is None:
                continue
            if rng.lo > rng.hi:  # reversed: never matches, always when inverted
                if not rng.invert:
                    out.append(dp.Never())
                continue
            blocks = dp.prefixes_of_range(rng.lo, rng.hi)
            if rng.invert:
                out += [dp.AddrConstraint(which, n, True) for n in blocks]
            elif len(blocks) == 1:
                out.append(dp.AddrConstraint(which, blocks[0]))
            else:
                for lo, hi in dp.complement_ranges([(rng.lo, rng.hi)], 0xFFFFFFFF):
                    out += [dp.AddrConstraint(which, n, True)
                            for n in dp.prefixes_of_range(lo, hi)]
        return out


EXTENSIONS = [IprangeMatch()]
