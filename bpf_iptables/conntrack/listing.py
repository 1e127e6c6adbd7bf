"""Entries as conntrack-tools' ``conntrack -L`` prints them (IPv4)."""
from __future__ import annotations

from ..netaddr import int_to_ip
from .tracker import (ICMP, IPS_ASSURED, IPS_SEEN_REPLY, TCP, TCP_STATE_NAMES, UDP, Entry,
                      Flow)

PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}


def _tuple(f: Flow) -> str:
    text = f"src={int_to_ip(f.src)} dst={int_to_ip(f.dst)} "
    if f.proto in (TCP, UDP):
        text += f"sport={f.sport} dport={f.dport} "
    elif f.proto == ICMP:
        text += f"type={f.dport >> 8} code={f.dport & 0xFF} id={f.sport} "
    return text


def line(e: Entry, now: float) -> str:
    """One entry: protocol, number, seconds left, TCP state, the original
    tuple ([UNREPLIED] before a reply), the reply tuple, [ASSURED]."""
    proto = e.proto
    name = PROTO_NAMES.get(proto, "unknown")
    text = f"{name:<8} {proto} {max(0, int(e.expires - now))} "
    if proto == TCP:
        text += f"{TCP_STATE_NAMES[e.tcp_state]} "
    text += _tuple(e.original())
    if not e.status & IPS_SEEN_REPLY:
        text += "[UNREPLIED] "
    text += _tuple(e.reply())
    if e.status & IPS_ASSURED:
        text += "[ASSURED] "
    return text + "mark=0 use=1"
