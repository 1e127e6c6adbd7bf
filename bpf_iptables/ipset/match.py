"""Set membership as the kernel decides it: ``ipset test`` (an element) and
xt_set's ``--match-set`` (a packet), for the four set types.

Packet side (ip_set_get_ip4_port() and the types' kadt functions):
- hash:ip / hash:net: the source or destination address (dimension 1);
  hash:net takes the most specific prefix whose element is alive; a
  ``nomatch`` element there means "not in the set";
- hash:ip,port: (address, protocol, port), the port taken from the
  direction of dimension 2: TCP, UDP, SCTP and UDPLITE ports, ICMP
  type << 8 | code, 0 for other protocols; no match for protocol 0, for a
  non-first fragment of TCP/UDP/SCTP/UDPLITE/ICMP, or with fewer
  directions than the set has dimensions;
- bitmap:port: the port of a TCP or UDP packet (other protocols, and
  fragments, never match)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .model import ICMP, PORT_PROTOS, TCP, UDP, Elem, IpSet, mask_of

if TYPE_CHECKING:
    from ..reference.packet import Packet


def net_lookup(s: IpSet, addr: int, now: int, return_nomatch: bool = False) -> bool:
    """hash:net: the most specific live element holding ``addr`` is a plain
    one (``return_nomatch``: a ``nomatch`` one)."""
    best = None
    for (net, cidr), m in s.members.items():
        if not m.alive(now) or (addr & mask_of(cidr)) != net:
            continue
        if best is None or cidr > best[0]:
            best = (cidr, m)
    return best is not None and best[1].nomatch == return_nomatch


def contains_elem(s: IpSet, elem: Elem, now: int) -> bool:
    """``ipset test``: hash:net with a host address looks the address up;
    anything else is the exact element."""
    if s.type == "hash:net" and elem[1] == 32:
        return net_lookup(s, elem[0], now)
    m = s.members.get(elem)
    return m is not None and m.alive(now) and not m.nomatch


def packet_port(pkt: "Packet", src: bool) -> tuple[int, int] | None:
    """(proto, port) as ip_set_get_ip4_port() reads it; None: no match."""
    proto = pkt.proto
    if proto == 0:
        return None
    if pkt.is_fragment:
        return None if proto in PORT_PROTOS + (ICMP,) else (proto, 0)
    if proto in PORT_PROTOS:
        return proto, pkt.sport if src else pkt.dport
    if proto == ICMP:
        return proto, pkt.icmp_type << 8 | pkt.icmp_code
    return proto, 0


def packet_in_set(s: IpSet, dirs: tuple[str, ...], pkt: "Packet", now: int,
                  return_nomatch: bool = False) -> bool:
    """xt_set's test; ``return_nomatch`` (--return-nomatch) reverses hash:net's
    nomatch elements only (the other types have none)."""
    if len(dirs) < s.dimension:
        return False    # ip_set_test(): fewer directions than dimensions
    src = dirs[0] == "src"
    addr = pkt.src if src else pkt.dst
    if s.type == "hash:ip":
        return contains_elem(s, (addr,), now)
    if s.type == "hash:net":
        return net_lookup(s, addr, now, return_nomatch)
    if s.type == "hash:ip,port":
        pp = packet_port(pkt, dirs[1] == "src")
        return pp is not None and contains_elem(s, (addr, pp[0], pp[1]), now)
    # bitmap:port: TCP and UDP only
    pp = packet_port(pkt, src)
    if pp is None or pp[0] not in (TCP, UDP):
        return False
    return contains_elem(s, (pp[1],), now)
