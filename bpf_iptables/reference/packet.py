"""A packet as the filter table sees it, with the metadata netfilter has."""
from __future__ import annotations

from dataclasses import dataclass, field

TCP, UDP, ICMP = 6, 17, 1
# protocols whose first 4 bytes of L4 header are source and destination port
PORT_PROTOCOLS = (6, 17, 33, 132, 136)


@dataclass(frozen=True)
class CtTuple:
    src: int
    dst: int
    proto: int
    sport: int = 0
    dport: int = 0


@dataclass(frozen=True)
class Conntrack:
    """Connection-tracking facts about a packet (given as input here).

    state: NEW, ESTABLISHED, RELATED, INVALID or UNTRACKED; status: a set of
    EXPECTED, SEEN_REPLY, ASSURED, CONFIRMED; direction: ORIGINAL/REPLY."""

    state: str = "NEW"
    status: frozenset[str] = frozenset()
    direction: str = "ORIGINAL"
    original: CtTuple | None = None
    reply: CtTuple | None = None
    expires: int = 0  # seconds left


@dataclass
class Packet:
    hook: str = "INPUT"          # INPUT, FORWARD or OUTPUT
    in_iface: str = ""
    out_iface: str = ""
    src: int = 0
    dst: int = 0
    proto: int = 0
    length: int = 20             # IP total length
    ttl: int = 64
    tos: int = 0
    ip_id: int = 0
    frag_offset: int = 0         # in 8-byte units
    more_fragments: bool = False
    dont_fragment: bool = False
    ip_options: bytes = b""
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    tcp_options: bytes = b""
    icmp_type: int = 0
    icmp_code: int = 0
    icmp_id: int = 0             # echo/timestamp/info identifier (conntrack keys on it)
    icmp_inner: "Packet | None" = None   # an ICMP error's quoted packet (headers only)
    src_mac: bytes | None = None
    pkttype: str = "host"        # host, broadcast, multicast, otherhost
    mark: int = 0
    src_type: frozenset[str] = frozenset({"UNICAST"})   # addrtype of src
    dst_type: frozenset[str] = frozenset({"LOCAL"})     # addrtype of dst
    ct: Conntrack | None = None
    time: float = 0.0            # seconds, for rate limits
    extra: dict = field(default_factory=dict)

    @property
    def is_fragment(self) -> bool:
        """A non-first fragment: no transport header to look at."""
        return self.frag_offset != 0
