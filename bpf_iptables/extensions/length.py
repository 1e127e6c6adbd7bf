"""-m length: the IP total length against a value or range (libxt_length)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState


@dataclass(frozen=True)
class LengthData:
    min: int
    max: int
    invert: bool = False

    def text(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}:{self.max}"


class LengthMatch(XtOptionsExtension, MatchExtension):
    name = "length"
    help_text = (
        "length match options:\n"
        "[!] --length length[:length]    Match packet length against value or range\n"
        "                                of values (inclusive)\n")
    # UINT16RC: "a", "a:b", ":b" (0:b), "a:" (a:65535); a > b is accepted
    xt_options = (XtOption("length", T.UINT16RC, invert=True, mand=True),)

    def build(self, state: XtState, ctx: ParseContext) -> LengthData:
        values = state.values["length"]
        hi = values[1] if len(values) >= 2 else values[0]
        return LengthData(values[0], hi, state.inverted["length"])

    def save(self, d: LengthData) -> str:
        return f"{' !' if d.invert else ''} --length {d.text()}"

    def print(self, d: LengthData, numeric: bool) -> str:
        return f" length {'!' if d.invert else ''}{d.text()}"

    def matches(self, d: LengthData, pkt: Any) -> bool:
        # xt_length (IPv4) looks at the header's tot_len
        return (d.min <= pkt.length <= d.max) != d.invert

    def lower(self, d: LengthData, rule: Any) -> list[Any]:
        """A range on the length field (IP total length; a reversed range
        never matches, always when inverted)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.RangeConstraint("length", d.min, d.max, d.invert)]


EXTENSIONS = [LengthMatch()]
