"""-m udp / -p udp: source and destination port ranges (libxt_udp)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState
from .tcp import PortRange, port_constraints, print_ports, save_ports


@dataclass(frozen=True)
class UdpData:
    sport: PortRange = PortRange()
    dport: PortRange = PortRange()


class UdpMatch(XtOptionsExtension, MatchExtension):
    name = "udp"
    help_text = (
        "udp match options:\n"
        "[!] --source-port port[:port]\n"
        " --sport ...\n"
        "\t\t\t\tmatch source port(s)\n"
        "[!] --destination-port port[:port]\n"
        " --dport ...\n"
        "\t\t\t\tmatch destination port(s)\n")
    required_proto = 17  # xt_tcpudp registers "udp" with .proto = IPPROTO_UDP
    # PORTRC goes through getaddrinfo(): "65536" is port 0, "010" is 10,
    # "a:b" with a > b is accepted (and never matches).
    xt_options = (
        XtOption("source-port", T.PORTRC, invert=True, id="sport"),
        XtOption("sport", T.PORTRC, invert=True, id="sport"),
        XtOption("destination-port", T.PORTRC, invert=True, id="dport"),
        XtOption("dport", T.PORTRC, invert=True, id="dport"),
    )

    def build(self, state: XtState, ctx: ParseContext) -> UdpData:
        def ports(key: str) -> PortRange:
            if key not in state.flags:
                return PortRange()
            lo, hi = state.values[key]
            return PortRange(lo, hi, state.inverted[key])

        return UdpData(ports("sport"), ports("dport"))

    def save(self, d: UdpData) -> str:
        return save_ports("sport", d.sport) + save_ports("dport", d.dport)

    def print(self, d: UdpData, numeric: bool) -> str:
        return (" udp" + print_ports("spt", d.sport, numeric, "udp")
                + print_ports("dpt", d.dport, numeric, "udp"))

    def matches(self, d: UdpData, pkt: Any) -> bool:
        # udp_mt(): a non-first fragment has no header, never matches
        # (whatever the inversion).
        if pkt.is_fragment:
            return False
        return d.sport.matches(pkt.sport) and d.dport.matches(pkt.dport)

    def lower(self, d: UdpData, rule: Any) -> list[Any]:
        return port_constraints(d)


EXTENSIONS = [UdpMatch()]
