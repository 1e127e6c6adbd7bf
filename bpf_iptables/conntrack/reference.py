"""Netfilter's filter table with connection tracking, for sequences of
packets: the tracker gives each packet its ctstate (``Packet.ct``), the
reference evaluates the rules, an accepted packet confirms a new entry."""
from __future__ import annotations

from ..model import Table
from ..reference.evaluate import Result, evaluate
from ..reference.packet import ICMP, Conntrack, CtTuple, Packet
from .tracker import (IPS_ASSURED, IPS_CONFIRMED, IPS_SEEN_REPLY, REPLY, Flow, Seen,
                      Tracker)

_STATUS_NAMES = ((IPS_SEEN_REPLY, "SEEN_REPLY"), (IPS_ASSURED, "ASSURED"),
                 (IPS_CONFIRMED, "CONFIRMED"))


def flow_of(pkt: Packet) -> Flow:
    if pkt.proto == ICMP:
        return Flow(pkt.src, pkt.dst, ICMP, pkt.icmp_id, pkt.icmp_type << 8 | pkt.icmp_code)
    return Flow(pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport)


def _ct_tuple(f: Flow) -> CtTuple:
    return CtTuple(f.src, f.dst, f.proto, f.sport, f.dport)


def track(tracker: Tracker, pkt: Packet) -> Seen:
    """Run the tracker on ``pkt`` (at ``pkt.time``) and set ``pkt.ct``."""
    inner = flow_of(pkt.icmp_inner) if pkt.icmp_inner is not None else None
    seen = tracker.packet(flow_of(pkt), pkt.time, tcp_flags=pkt.tcp_flags,
                          fragment=pkt.frag_offset != 0 or pkt.more_fragments, inner=inner)
    if seen.entry is None:
        pkt.ct = Conntrack(state="INVALID")
        return seen
    e = seen.entry
    status = frozenset(name for bit, name in _STATUS_NAMES if e.status & bit)
    pkt.ct = Conntrack(state=seen.state, status=status,
                       direction="REPLY" if seen.direction == REPLY else "ORIGINAL",
                       original=_ct_tuple(e.original()), reply=_ct_tuple(e.reply()),
                       expires=tracker.remaining(e, pkt.time) if e.status & IPS_CONFIRMED else 0)
    return seen


def run(table: Table, tracker: Tracker, pkt: Packet, count: bool = True) -> tuple[Result, Seen]:
    """One packet through the hook: track, evaluate, confirm on ACCEPT."""
    seen = track(tracker, pkt)
    result = evaluate(table, pkt, count=count)
    if result.verdict == "ACCEPT":
        tracker.confirm(seen)
    return result, seen
