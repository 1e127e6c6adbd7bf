"""Probe packets drawn from every rule: inside its address box, with its
protocol, at the edges of its port ranges, and the same packet pushed just
outside one field, plus packets from anywhere (which mostly meet the policy)."""
from __future__ import annotations

import random

from ..datapath.packets import header_length
from ..model import Rule, Table
from ..reference.packet import Packet


def _inside(rng: random.Random, addr: int, mask: int) -> int:
    return (addr & mask) | (rng.getrandbits(32) & ~mask & 0xFFFFFFFF)


def _ports(rule: Rule, which: str) -> list[int]:
    """Edge ports of the rule's port matches in direction ``which``."""
    out: list[int] = []
    for m in rule.matches:
        data = m.data
        rng = getattr(data, which, None)
        if rng is not None and hasattr(rng, "lo"):
            out += [rng.lo - 1, rng.lo, rng.hi, rng.hi + 1]
        for spec in getattr(data, "ports", ()) or ():
            if getattr(data, "direction", "") in (which + "s", "ports"):
                hi = spec.lo if spec.hi is None else spec.hi
                out += [spec.lo - 1, spec.lo, hi, hi + 1]
    return [p for p in out if 0 <= p <= 0xFFFF]


def _packet(rng: random.Random, src: int, dst: int, proto: int, sport: int, dport: int,
            iface: str) -> Packet:
    pkt = Packet(in_iface=iface, src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                 tcp_flags=rng.choice((0x02, 0x10, 0x12)), ip_id=rng.randint(1, 0xFFFF))
    pkt.length = header_length(pkt) + rng.randint(0, 200)
    return pkt


def probes(table: Table, interfaces: list[str], per_rule: int = 4, background: int = 64,
           seed: int = 7) -> list[Packet]:
    rng = random.Random(seed)
    ifaces = interfaces or [""]
    out: list[Packet] = []
    for chain in table.ordered_chains():
        for rule in chain.rules:
            sports = _ports(rule, "sport") or [rng.randint(0, 0xFFFF)]
            dports = _ports(rule, "dport") or [rng.randint(0, 0xFFFF)]
            for i in range(per_rule):
                src = _inside(rng, rule.src.addr, rule.src.mask)
                dst = _inside(rng, rule.dst.addr, rule.dst.mask)
                if i == per_rule - 1 and rule.src.mask:  # just outside the source box
                    src ^= rule.src.mask & -rule.src.mask
                proto = rule.proto or rng.choice((6, 17, 1))
                if rule.proto_inv:
                    proto = rng.choice([p for p in (6, 17, 1) if p != rule.proto] or [6])
                out.append(_packet(rng, src, dst, proto, rng.choice(sports), rng.choice(dports),
                                   rng.choice(ifaces)))
    for _ in range(background):
        out.append(_packet(rng, rng.getrandbits(32), rng.getrandbits(32), rng.choice((6, 17, 1)),
                           rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF), rng.choice(ifaces)))
    return out
