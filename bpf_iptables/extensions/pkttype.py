"""-m pkttype --pkt-type: link-layer packet type (libxt_pkttype, xt_pkttype)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import XtablesError
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..reference.packet import Packet

# PACKET_* values (linux/if_packet.h)
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = 0, 1, 2, 3
PACKET_LOOPBACK = 5

# supported_types[]: names first, then aliases; printing takes the first hit.
PKT_TYPES = (("unicast", PACKET_HOST), ("broadcast", PACKET_BROADCAST),
             ("multicast", PACKET_MULTICAST), ("otherhost", PACKET_OTHERHOST),
             ("bcast", PACKET_BROADCAST), ("mcast", PACKET_MULTICAST), ("host", PACKET_HOST))

# Packet.pkttype names -> skb->pkt_type
_PACKET_KIND = {"host": PACKET_HOST, "unicast": PACKET_HOST, "broadcast": PACKET_BROADCAST,
                "multicast": PACKET_MULTICAST, "otherhost": PACKET_OTHERHOST,
                "loopback": PACKET_LOOPBACK, "outgoing": 4}


@dataclass(frozen=True)
class PkttypeData:
    pkttype: int
    invert: bool = False


def pkttype_name(value: int) -> str:
    return next((name for name, v in PKT_TYPES if v == value), str(value))


class PkttypeMatch(XtOptionsExtension, MatchExtension):
    name = "pkttype"
    help_text = (
        'pkttype match options:\n'
        '[!] --pkt-type packettype    match packet type\n'
        'Valid packet types:\n'
        '\tunicast       \t\tto us\n'
        '\tbroadcast     \t\tto all\n'
        '\tmulticast     \t\tto group\n'
        '\totherhost     \t\tto someone else\n'
        '\n')
    xt_options = (XtOption("pkt-type", T.STRING, invert=True, mand=True),)

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        text = arg or ""
        hit = next((v for name, v in PKT_TYPES if name.lower() == text.lower()), None)
        if hit is None:
            raise XtablesError(f"Bad packet type '{text}'")
        state.values["type"] = hit

    def build(self, state: XtState, ctx: ParseContext) -> PkttypeData:
        return PkttypeData(state.values["type"], state.inverted.get("pkt-type", False))

    def save(self, data: PkttypeData) -> str:
        return f"{' !' if data.invert else ''} --pkt-type {pkttype_name(data.pkttype)}"

    def print(self, data: PkttypeData, numeric: bool) -> str:
        return f" PKTTYPE {'!' if data.invert else ''}= {pkttype_name(data.pkttype)}"

    def matches(self, data: PkttypeData, packet: "Packet") -> bool:
        kind = _PACKET_KIND.get(packet.pkttype.lower(), PACKET_HOST)
        if kind == PACKET_LOOPBACK:
            # pkttype_mt(): looped-back packets count as multicast when the
            # destination is a multicast address, else as broadcast.
            kind = PACKET_MULTICAST if (packet.dst >> 28) == 0xE else PACKET_BROADCAST
        return (kind == data.pkttype) != data.invert

    def lower(self, data: PkttypeData, rule: Any) -> list[Any]:
        """The packet type on the pkttype field: host, broadcast or
        multicast from the destination MAC, as eth_type_trans() decides.
        ``otherhost`` never matches at INPUT/FORWARD (ip_rcv() drops those
        frames before any chain); at OUTPUT the type is host (decided at
        compile time)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        return [dp.PkttypeConstraint(data.pkttype, data.invert)]


EXTENSIONS = [PkttypeMatch()]
