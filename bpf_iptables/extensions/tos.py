"""-m tos --tos value[/mask]|symbol (libxt_tos revision 1, kernel xt_dscp)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import XtablesError
from ..numbers import UINT8_MAX, parse_prefix
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..reference.packet import Packet

# tos_values.c; a symbolic name implies the revision's default mask (0x3f).
TOS_SYMBOLS = (("Minimize-Delay", 0x10), ("Maximize-Throughput", 0x08),
               ("Maximize-Reliability", 0x04), ("Minimize-Cost", 0x02),
               ("Normal-Service", 0x00))
SYMBOL_MASK = 0x3F


@dataclass(frozen=True)
class TosData:
    value: int
    mask: int
    invert: bool = False


def parse_tosmask(text: str) -> tuple[int, int]:
    """xtopt_parse_tosmask(): a number (prefix) 0-255 with an optional
    "/mask", else a symbol name (case-insensitive)."""
    value, end = parse_prefix(text, 0, UINT8_MAX)
    if value is not None:
        mask = UINT8_MAX
        if text[end:end + 1] == "/":
            mask, n = parse_prefix(text[end + 1:], 0, UINT8_MAX)
            if mask is None:
                raise XtablesError(f'Illegal value: "{text}"')
            end += 1 + n
        if end != len(text):
            raise XtablesError(f'Illegal value: "{text}"')
        return value, mask
    for name, sym in TOS_SYMBOLS:
        if name.lower() == text.lower():
            return sym, SYMBOL_MASK
    raise XtablesError(f'Symbolic name "{text}" is unknown')


class TosMatch(XtOptionsExtension, MatchExtension):
    name = "tos"
    help_text = (
        "tos match options:\n"
        "[!] --tos value[/mask]    Match Type of Service/Priority field value\n"
        "[!] --tos symbol          Match TOS field (IPv4 only) by symbol\n"
        "                          Accepted symbolic names for value are:\n"
        "                          (0x10) 16 Minimize-Delay\n"
        "                          (0x08)  8 Maximize-Throughput\n"
        "                          (0x04)  4 Maximize-Reliability\n"
        "                          (0x02)  2 Minimize-Cost\n"
        "                          (0x00)  0 Normal-Service\n"
        "\n")
    xt_options = (XtOption("tos", T.STRING, invert=True, mand=True),)

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        state.values["tos"] = parse_tosmask(arg or "")

    def build(self, state: XtState, ctx: ParseContext) -> TosData:
        value, mask = state.values["tos"]
        return TosData(value, mask, state.inverted.get("tos", False))

    def save(self, data: TosData) -> str:
        return f"{' !' if data.invert else ''} --tos 0x{data.value:02x}/0x{data.mask:02x}"

    def print(self, data: TosData, numeric: bool) -> str:
        # tos_mt_print(): no space before the value unless it is a symbol.
        out = " tos match" + ("!" if data.invert else "")
        if not numeric and data.mask == SYMBOL_MASK:
            for name, sym in TOS_SYMBOLS:
                if sym == data.value:
                    return out + f" {name}"
        return out + f"0x{data.value:02x}/0x{data.mask:02x}"

    def matches(self, data: TosData, packet: "Packet") -> bool:
        return ((packet.tos & data.mask) == data.value) != data.invert

    def lower(self, data: TosData, rule: Any) -> list[Any]:
        """The TOS byte under the mask, on the tos field (256 values)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.TosConstraint(data.mask, data.value, data.invert)]


EXTENSIONS = [TosMatch()]
