"""The host's own looped-back multicast/broadcast copies at INPUT, against iptables-legacy.

A namespace that sends to a multicast group it has joined, or to its
subnet's broadcast address, receives its own copy (dev_loopback_xmit():
PACKET_LOOPBACK, no MAC header). Netfilter counts and filters that copy
in INPUT; the data path must too, in every mode (bpf/lib/loopback.h).
Two identical client -- server topologies (test_datapath_traffic), one
server under iptables-legacy, one under the data path: same deliveries,
same ``-L -v -x -n``. In the XDP modes also an Ethernet frame built to
look like a bare IPv4 datagram (which the XDP root leaves to TC ingress)
is classified once, by INPUT."""
from __future__ import annotations

import socket
import struct

import pytest

from bpf_iptables.datapath.logger import (LOG_LOOPED, XT_LOG_MACDECODE, Event,
                                          format_line)
from bpf_iptables.datapath.packets import checksum
from tests.support.netns import Namespace, bpf_command
from tests.test_datapath_traffic import (CLIENT_IP, SERVER_IP, Pair, datapath_command,
                                         ensure_bpffs, inside, received, sockets_in,
                                         topology)

GROUP, BCAST = "224.0.0.251", "10.99.0.255"
MPORT, BPORT = 5353, 5354
RULES = f"""\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -d {GROUP}/32 -p udp
-A INPUT -d {BCAST}/32 -p udp
-A INPUT -d {GROUP}/32 -m limit --limit 1/hour --limit-burst 3
-A INPUT -i s0 -p udp -m udp --dport {MPORT}
-A INPUT -m pkttype --pkt-type multicast
-A INPUT -m pkttype --pkt-type broadcast
-A INPUT -m pkttype --pkt-type host
-A INPUT -m mac ! --mac-source 02:00:00:00:00:01
-A INPUT -m mac --mac-source 00:00:00:00:00:00
-A INPUT -p udp -m state --state NEW
-A INPUT -p udp -m udp --dport 5355 -j DROP
-A OUTPUT -d {GROUP}/32 -p udp
-A OUTPUT -d {BCAST}/32 -p udp
COMMIT
"""
# the looped copies dropped, one of them by REJECT: netfilter answers
# neither (their route is broadcast/multicast), the data path drops
DROPS = [["-I", "INPUT", "1", "-d", f"{GROUP}/32", "-j", "DROP"],
         ["-I", "INPUT", "2", "-d", f"{BCAST}/32", "-p", "udp", "-j", "REJECT"]]
WAIT = 0.5   # local delivery: no wire, no peer


def collect(rx: socket.socket) -> int:
    return received(rx, WAIT)


def own_sends(ns: Namespace, count: int = 3) -> dict[str, int]:
    """``count`` datagrams from the server to the group it joined and to
    its subnet's broadcast address; how many of each its own sockets got."""
    with inside(ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mrx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        brx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, mrx, brx:
        for rx, port in ((mrx, MPORT), (brx, BPORT)):
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rx.bind(("", port))
        mrx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                       socket.inet_aton(GROUP) + socket.inet_aton(SERVER_IP))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(SERVER_IP))
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for i in range(count):
            tx.sendto(b"m%d" % i, (GROUP, MPORT))
            tx.sendto(b"b%d" % i, (BCAST, BPORT))
        return {"multicast": collect(mrx), "broadcast": collect(brx)}


def wire_multicast(pair: Pair, count: int = 2) -> int:
    """``count`` datagrams from the client to the group the server joins
    (received from the wire: XDP's INPUT in the XDP modes); how many the
    server got. Their -m limit tokens come from the same bucket as the
    looped copies' (netfilter has one per rule)."""
    with sockets_in(pair.server, pair.client) as (rx, tx):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("", MPORT))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      socket.inet_aton(GROUP) + socket.inet_aton(SERVER_IP))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(CLIENT_IP))
        for i in range(count):
            tx.sendto(b"w%d" % i, (GROUP, MPORT))
        return collect(rx)


def lookalike(port: int, payload: bytes) -> bytes:
    """An Ethernet frame client -> server (UDP to ``port``) whose first 20
    bytes also form a valid IPv4 header with the frame's length as total
    length: destination MAC 45:00:LL:LL:00:00 (a group address, so the
    veth takes it), the header checksum in the source MAC's last two bytes."""
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0,
                     socket.inet_aton(CLIENT_IP), socket.inet_aton(SERVER_IP))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 40000, port, udp_len, 0) + payload
    size = 14 + len(ip) + len(udp)
    dst = bytes([0x45, 0, size >> 8, size & 0xFF, 0, 0])
    head = dst + bytes([2, 0, 0, 0, 0, 0]) + b"\x08\x00" + ip[:6]
    fix = checksum(head)   # the sum with 0 in bytes 10-11, complemented
    frame = dst + bytes([2, 0, 0, 0]) + struct.pack("!H", fix) + b"\x08\x00" + ip + udp
    assert checksum(frame[:20]) == 0
    return frame


def send_lookalikes(pair: Pair) -> dict[str, int]:
    """One lookalike to a dropped port, one to an open one: received."""
    with inside(pair.server):
        open_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        drop_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(pair.client):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with open_rx, drop_rx, raw:
        open_rx.bind(("", 5356))
        drop_rx.bind(("", 5355))
        raw.bind(("c0", 0))
        raw.send(lookalike(5355, b"x" * 30))
        raw.send(lookalike(5356, b"y" * 30))
        return {"dropped": collect(drop_rx), "open": collect(open_rx)}


def listing(ns: Namespace, ours: bool) -> str:
    r = (ns.bpf_iptables if ours else ns.iptables)("-L", "-v", "-x", "-n")
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("mode", ["xdpgeneric", "xdp", "tc"])
def test_own_multicast_and_broadcast_copies_as_iptables_legacy(mode):
    ensure_bpffs()
    with topology("lpl") as legacy, topology("lpb") as ours:
        for pair in (legacy, ours):
            # no IGMP reports of the server's own (timing-dependent) in OUTPUT
            pair.server.run(["sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0"])
        assert legacy.server.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        r = ours.server.run(bpf_command("iptables-restore"), input=RULES)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach", "--mode", mode, "--no-watch"))
        assert r.returncode == 0, r.stderr
        status = ours.server.run(datapath_command("status"))
        assert status.returncode == 0, status.stdout + status.stderr
        if mode != "tc":
            # INPUT's TC build next to the XDP root, linked on every interface
            assert "INPUT (looped copies) program" in status.stdout, status.stdout

        want = own_sends(legacy.server)
        assert want == {"multicast": 3, "broadcast": 3}
        assert own_sends(ours.server) == want
        # the limit's 3 tokens went to the looped copies: none left for these
        assert wire_multicast(legacy) == wire_multicast(ours) == 2
        if mode != "tc":
            # frames XDP leaves to TC ingress because they look like looped copies
            want = send_lookalikes(legacy)
            assert want == {"dropped": 0, "open": 1}
            assert send_lookalikes(ours) == want
        theirs = listing(legacy.server, ours=False)
        # the group's rule counted the 3 looped copies and the 2 from the wire
        first = theirs.split("Chain INPUT")[1].splitlines()[2]
        assert first.split()[0] == "5", theirs
        assert listing(ours.server, ours=True) == theirs

        for rule in DROPS:
            assert legacy.server.iptables(*rule).returncode == 0
            r = ours.server.bpf_iptables(*rule)
            assert r.returncode == 0, r.stderr
        assert own_sends(legacy.server) == {"multicast": 0, "broadcast": 0}
        assert own_sends(ours.server) == {"multicast": 0, "broadcast": 0}
        theirs = listing(legacy.server, ours=False)
        assert theirs.split("Chain INPUT")[1].splitlines()[2].split()[0] == "3", theirs
        assert listing(ours.server, ours=True) == theirs


def test_log_line_of_a_looped_copy():
    """nf_log on a looped copy: no MAC header to dump ("MAC= "), and
    --log-macdecode decodes the IP header's first bytes as Ethernet."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 30, 7, 0, 1, 17, 0,
                     socket.inet_aton(SERVER_IP), socket.inet_aton(GROUP))
    frame = bytes(12) + b"\x08\x00" + ip + struct.pack("!HHHH", 5353, 5353, 10, 0) + b"hi"
    names = {2: "s0"}.__getitem__
    plain = format_line(Event(0, 2, 0, 4, LOG_LOOPED, "p ", frame, 0), names)
    assert plain.startswith("p IN=s0 OUT= MAC= SRC=10.99.0.2 DST=224.0.0.251 LEN=30 "), plain
    decoded = format_line(Event(0, 2, 0, 4, LOG_LOOPED | XT_LOG_MACDECODE, "p ", frame, 0),
                          names)
    assert decoded.startswith("p IN=s0 OUT= MACSRC=00:00:01:11:00:00 MACDST=45:00:00:1e:00:07 "
                              "MACPROTO=0a63 SRC=10.99.0.2 "), decoded
