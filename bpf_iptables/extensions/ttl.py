"""-m ttl: compare the IP TTL (libipt_ttl)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import XtablesError
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

_ALL = ("eq", "lt", "gt")
# mode -> (save option, -L operator)
MODES = {"eq": ("--ttl-eq", "=="), "ne": ("! --ttl-eq", "!="),
         "lt": ("--ttl-lt", "<"), "gt": ("--ttl-gt", ">")}


@dataclass(frozen=True)
class TtlData:
    mode: str   # "eq", "ne", "lt" or "gt"
    ttl: int


class TtlMatch(XtOptionsExtension, MatchExtension):
    name = "ttl"
    help_text = (
        "ttl match options:\n"
        "[!] --ttl-eq value\tMatch time to live value\n"
        "  --ttl-lt value\tMatch TTL < value\n"
        "  --ttl-gt value\tMatch TTL > value\n")
    # Table order as in libipt_ttl (it decides getopt abbreviations); "--ttl"
    # is a synonym of --ttl-eq, and as it shares its id, "! --ttl" is allowed.
    xt_options = (
        XtOption("ttl-lt", T.UINT8, id="lt", excl=_ALL),
        XtOption("ttl-gt", T.UINT8, id="gt", excl=_ALL),
        XtOption("ttl-eq", T.UINT8, invert=True, id="eq", excl=_ALL),
        XtOption("ttl", T.UINT8, id="eq", excl=_ALL),
    )
    xt_id_order = ("eq", "lt", "gt")  # O_TTL_EQ, O_TTL_LT, O_TTL_GT

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        mode = "ne" if opt.key == "eq" and invert else opt.key
        state.values["mode"] = (mode, value)

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not state.flags:
            raise XtablesError("TTL match: You must specify one of `--ttl-eq', `--ttl-lt', `--ttl-gt")

    def build(self, state: XtState, ctx: ParseContext) -> TtlData:
        mode, ttl = state.values["mode"]
        return TtlData(mode, ttl)

    def save(self, d: TtlData) -> str:
        return f" {MODES[d.mode][0]} {d.ttl}"

    def print(self, d: TtlData, numeric: bool) -> str:
        return f" TTL match TTL {MODES[d.mode][1]} {d.ttl}"

    def matches(self, d: TtlData, pkt: Any) -> bool:
        ttl = pkt.ttl
        if d.mode == "eq":
            return ttl == d.ttl
        if d.mode == "ne":
            return ttl != d.ttl
        if d.mode == "lt":
            return ttl < d.ttl
        return ttl > d.ttl

    def lower(self, d: TtlData, rule: Any) -> list[Any]:
        """A range on the ttl field (the TTL netfilter sees: in FORWARD the
        compiler keys it by the frame's TTL, one higher)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        lo, hi, invert = {"eq": (d.ttl, d.ttl, False), "ne": (d.ttl, d.ttl, True),
                          "lt": (0, d.ttl - 1, False), "gt": (d.ttl + 1, 0xFF, False)}[d.mode]
        if lo > hi:
            return [dp.Never()]   # "--ttl-lt 0", "--ttl-gt 255"
        return [dp.RangeConstraint("ttl", lo, hi, invert)]


EXTENSIONS = [TtlMatch()]
