"""-m mac: source MAC address (libxt_mac); only where a MAC header exists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState


@dataclass(frozen=True)
class MacData:
    addr: bytes
    invert: bool = False


def mac_text(addr: bytes) -> str:
    return ":".join(f"{b:02x}" for b in addr)


class MacMatch(XtOptionsExtension, MatchExtension):
    name = "mac"
    help_text = (
        "mac match options:\n"
        "[!] --mac-source XX:XX:XX:XX:XX:XX\n"
        "\t\t\t\tMatch source MAC address\n")
    # xt_mac's .hooks: the kernel refuses the match in OUTPUT (also via a
    # user chain jumped to from OUTPUT) with EINVAL.
    allowed_hooks = frozenset({"PREROUTING", "INPUT", "FORWARD"})
    xt_options = (XtOption("mac-source", T.ETHERMAC, invert=True, mand=True),)

    def build(self, state: XtState, ctx: ParseContext) -> MacData:
        return MacData(state.values["mac-source"], state.inverted["mac-source"])

    def save(self, d: MacData) -> str:
        return f"{' !' if d.invert else ''} --mac-source {mac_text(d.addr)}"

    def print(self, d: MacData, numeric: bool) -> str:
        return f" MAC {'! ' if d.invert else ''}{mac_text(d.addr)}"

    def matches(self, d: MacData, pkt: Any) -> bool:
        # no Ethernet header (e.g. a tunnel device): no match, even inverted
        if pkt.src_mac is None:
            return False
        return (bytes(pkt.src_mac) == d.addr) != d.invert

    def lower(self, d: MacData, rule: Any) -> list[Any]:
        """The source MAC on the mac field (hash keyed by the 48-bit address)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.MacConstraint(int.from_bytes(d.addr, "big"), d.invert)]


EXTENSIONS = [MacMatch()]
