"""-m mark: the packet's netfilter mark under a mask (libxt_mark, revision 1).

``parse_mark_mask`` is libxtables' XTTYPE_MARKMASK32 parser, shared with
other extensions that take "value[/mask]"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import XtablesError
from ..numbers import UINT32_MAX, parse_prefix
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState


def parse_mark_mask(ext_name: str, option: str, arg: str) -> tuple[int, int]:
    """xtables_parse_val_mask() without a name map: "value[/mask]"."""
    bad = XtablesError(f'{ext_name}: bad integer value for option "--{option}", '
                       "or out of range.\n")
    value, end = parse_prefix(arg, 0, UINT32_MAX)
    if value is None:
        raise bad
    if end == len(arg):
        return value, UINT32_MAX
    if arg[end] != "/":
        raise XtablesError(f'{ext_name}: trailing garbage after value for option "--{option}".\n')
    rest = arg[end + 1:]
    mask, end = parse_prefix(rest, 0, UINT32_MAX)
    if mask is None:
        raise bad
    if end != len(rest):
        raise XtablesError(f'{ext_name}: trailing garbage after value for option "--{option}".\n')
    return value, mask


def mark_mask_text(value: int, mask: int) -> str:
    """xtables_print_mark_mask(): " 0xV" or " 0xV/0xM"."""
    if mask != UINT32_MAX:
        return f" 0x{value:x}/0x{mask:x}"
    return f" 0x{value:x}"


@dataclass(frozen=True)
class MarkData:
    mark: int
    mask: int = UINT32_MAX
    invert: bool = False


class MarkMatch(XtOptionsExtension, MatchExtension):
    name = "mark"
    help_text = (
        "mark match options:\n"
        "[!] --mark value[/mask]    Match nfmark value with optional mask\n")
    xt_options = (XtOption("mark", T.MARKMASK32, invert=True, mand=True),)

    def parse_value(self, opt: XtOption, arg: str) -> Any:
        if opt.type is T.MARKMASK32:
            return parse_mark_mask(self.name, opt.name, arg)
        return super().parse_value(opt, arg)

    def build(self, state: XtState, ctx: ParseContext) -> MarkData:
        mark, mask = state.values["mark"]
        return MarkData(mark, mask, state.inverted["mark"])

    def save(self, d: MarkData) -> str:
        return f"{' !' if d.invert else ''} --mark{mark_mask_text(d.mark, d.mask)}"

    def print(self, d: MarkData, numeric: bool) -> str:
        return f" mark match{' !' if d.invert else ''}{mark_mask_text(d.mark, d.mask)}"

    def matches(self, d: MarkData, pkt: Any) -> bool:
        # the value is not masked at parse time: "0xff/0xf" never matches
        return ((pkt.mark & d.mask) == d.mark) != d.invert

    def lower(self, d: MarkData, rule: Any) -> list[Any]:
        """A per-candidate test of the packet's mark (filter.c FIELD_MARK):
        ``skb->mark`` at the TC hooks (OUTPUT; INPUT/FORWARD in --mode tc),
        0 at XDP, which has no skb (see the data path's README)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.MarkConstraint(d.mask, d.mark, d.invert)]


EXTENSIONS = [MarkMatch()]
