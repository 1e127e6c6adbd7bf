"""Ethernet/IPv4/TCP/UDP/ICMP frames from reference packets.

The frame carries exactly what the classifier reads: MACs (source, and a
destination that gives the packet type), addresses, protocol, TOS, TTL,
IP options, fragment offset and flags, ports, TCP flags and options, ICMP
type and code. The IP total length is ``packet.length`` (payload zeros pad
it), so byte counters can be compared with the reference's. Checksums are
filled in correctly, though the data path does not check them.

A reference packet is what netfilter sees at its hook; the frame is what
arrives on the wire. They differ in one field: the kernel lowers the TTL
before FORWARD (ip_forward), so a FORWARD packet with ``ttl`` t arrived
with TTL t + 1 (the FORWARD classifier, at XDP ingress, sees t + 1)."""
from __future__ import annotations

import struct

from ..reference.packet import ICMP, TCP, UDP, Packet

ETH_P_IP = 0x0800
DEFAULT_DST_MAC = bytes.fromhex("020000000001")
DEFAULT_SRC_MAC = bytes.fromhex("020000000002")
BROADCAST_MAC = b"\xff" * 6
MULTICAST_MAC = bytes.fromhex("01005e000001")
OTHERHOST_MAC = bytes.fromhex("020000000009")   # not the receiver's


def dst_mac(pkt: Packet) -> bytes:
    """A destination MAC that eth_type_trans() turns into ``pkt.pkttype``."""
    kind = pkt.pkttype.lower()
    if kind == "loopback":   # xt_pkttype: multicast by address, else broadcast
        kind = "multicast" if pkt.dst >> 28 == 0xE else "broadcast"
    return {"broadcast": BROADCAST_MAC, "multicast": MULTICAST_MAC,
            "otherhost": OTHERHOST_MAC}.get(kind, DEFAULT_DST_MAC)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pad4(options: bytes) -> bytes:
    return options + b"\0" * (-len(options) % 4)


def l4_header(pkt: Packet) -> bytes:
    """The transport header, or nothing for a non-first fragment."""
    if pkt.is_fragment:
        return b""
    if pkt.proto == TCP:
        opts = pad4(pkt.tcp_options)
        offset = (20 + len(opts)) // 4
        return struct.pack("!HHIIBBHHH", pkt.sport, pkt.dport, 0, 0, offset << 4,
                           pkt.tcp_flags & 0xFF, 65535, 0, 0) + opts
    if pkt.proto == UDP:
        return struct.pack("!HHHH", pkt.sport, pkt.dport, 8, 0)
    if pkt.proto == ICMP:
        head = struct.pack("!BBHHH", pkt.icmp_type, pkt.icmp_code, 0, pkt.icmp_id, 0)
        if pkt.icmp_inner is not None:
            # an error quotes the offending packet's IP header and the
            # first 8 bytes of its transport header (conntrack reads them)
            head += quoted(pkt.icmp_inner)
        return head
    return b""


def quoted(inner: Packet) -> bytes:
    """What an ICMP error carries of ``inner``: its IP header, 8 bytes of L4."""
    l4 = l4_header(inner)[:8]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, inner.tos, max(inner.length, 20 + len(l4)),
                     inner.ip_id, 0, inner.ttl, inner.proto, 0,
                     inner.src.to_bytes(4, "big"), inner.dst.to_bytes(4, "big"))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + l4 + b"\0" * (8 - len(l4))


def header_length(pkt: Packet) -> int:
    """The smallest IP total length that holds the headers."""
    return 20 + len(pad4(pkt.ip_options)) + len(l4_header(pkt))


def wire_ttl(pkt: Packet) -> int:
    """The TTL on the wire for what netfilter sees at ``pkt.hook``."""
    if pkt.hook != "FORWARD":
        return pkt.ttl
    if not 1 <= pkt.ttl <= 254:
        # the kernel forwards only frames with TTL > 1
        raise ValueError(f"FORWARD never sees TTL {pkt.ttl}")
    return pkt.ttl + 1


def frame(pkt: Packet) -> bytes:
    options = pad4(pkt.ip_options)
    ihl = (20 + len(options)) // 4
    l4 = l4_header(pkt)
    payload_len = pkt.length - 20 - len(options) - len(l4)
    if payload_len < 0 or ihl > 15:
        raise ValueError(f"packet length {pkt.length} cannot hold its headers")
    payload = b"\0" * payload_len
    if pkt.proto == UDP and l4:
        l4 = l4[:4] + struct.pack("!H", len(l4) + payload_len) + l4[6:]
    if pkt.proto == ICMP and l4:
        l4 = l4[:2] + struct.pack("!H", checksum(l4 + payload)) + l4[4:]
    frag = (pkt.frag_offset & 0x1FFF) | (0x2000 if pkt.more_fragments else 0) \
        | (0x4000 if pkt.dont_fragment else 0)
    ttl = wire_ttl(pkt)
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, pkt.tos, pkt.length, pkt.ip_id, frag,
                     ttl, pkt.proto, 0, pkt.src.to_bytes(4, "big"),
                     pkt.dst.to_bytes(4, "big")) + options
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = dst_mac(pkt) + (pkt.src_mac or DEFAULT_SRC_MAC) + struct.pack("!H", ETH_P_IP)
    return eth + ip + l4 + payload
