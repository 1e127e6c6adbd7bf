"""-m dscp: the DiffServ code point (libxt_dscp, kernel xt_dscp)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import XtablesError
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..reference.packet import Packet

XT_DSCP_MAX = 0x3F
# dscp_helper.c's table; class_to_dscp() takes the first entry whose name is
# a case-insensitive prefix of the argument.
DS_CLASSES = (("CS0", 0x00), ("CS1", 0x08), ("CS2", 0x10), ("CS3", 0x18), ("CS4", 0x20),
              ("CS5", 0x28), ("CS6", 0x30), ("CS7", 0x38), ("BE", 0x00), ("AF11", 0x0A),
              ("AF12", 0x0C), ("AF13", 0x0E), ("AF21", 0x12), ("AF22", 0x14), ("AF23", 0x16),
              ("AF31", 0x1A), ("AF32", 0x1C), ("AF33", 0x1E), ("AF41", 0x22), ("AF42", 0x24),
              ("AF43", 0x26), ("EF", 0x2E))


def class_to_dscp(name: str) -> int:
    for cls, value in DS_CLASSES:
        if name[:len(cls)].lower() == cls.lower():
            return value
    raise XtablesError(f"Invalid DSCP value `{name}'")


@dataclass(frozen=True)
class DscpData:
    dscp: int
    invert: bool = False


class DscpMatch(XtOptionsExtension, MatchExtension):
    name = "dscp"
    help_text = (
        "dscp match options\n"
        "[!] --dscp value\t\tMatch DSCP codepoint with numerical value\n"
        "  \t\t                This value can be in decimal (ex: 32)\n"
        "               \t\tor in hex (ex: 0x20)\n"
        "[!] --dscp-class name\t\tMatch the DiffServ class. This value may\n"
        "\t\t\t\tbe any of the BE,EF, AFxx or CSx classes\n"
        "\n"
        "\t\t\t\tThese two options are mutually exclusive !\n")
    xt_options = (
        XtOption("dscp", T.UINT8, invert=True, min=0, max=XT_DSCP_MAX, excl=("dscp-class",)),
        XtOption("dscp-class", T.STRING, invert=True, excl=("dscp",)),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        if opt.name == "dscp":
            state.values["value"] = value
        else:
            state.values["value"] = class_to_dscp(arg or "")
        if invert:
            state.values["invert"] = True

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not state.flags:
            raise XtablesError("DSCP match: Parameter --dscp is required")

    def build(self, state: XtState, ctx: ParseContext) -> DscpData:
        return DscpData(state.values["value"], state.values.get("invert", False))

    def save(self, data: DscpData) -> str:
        return f"{' !' if data.invert else ''} --dscp 0x{data.dscp:02x}"

    def print(self, data: DscpData, numeric: bool) -> str:
        return f" DSCP match {'!' if data.invert else ''}0x{data.dscp:02x}"

    def matches(self, data: DscpData, packet: "Packet") -> bool:
        return ((packet.tos >> 2) == data.dscp) != data.invert

    def lower(self, data: DscpData, rule: Any) -> list[Any]:
        """The upper six bits of the TOS byte, on the tos field."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.TosConstraint(0xFC, data.dscp << 2, data.invert)]


EXTENSIONS = [DscpMatch()]
