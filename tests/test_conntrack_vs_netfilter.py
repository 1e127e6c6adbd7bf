"""The Python model of the tracker against netfilter itself, packet by packet.

A router namespace runs iptables-legacy with one counting rule per
ctstate in FORWARD (so reading and zeroing the counters after each packet
tells which state netfilter gave it); crafted frames of a few flows (TCP
with consistent sequence numbers and any flags, UDP, ICMP echo, ICMP errors
quoting the flows) are injected from both sides with AF_PACKET. The model
must give every packet the same state. Netfilter runs with
nf_conntrack_tcp_be_liberal=1 (the model does no window tracking) and
nf_conntrack_checksum=0 (the frames carry no TCP checksum)."""
from __future__ import annotations

import itertools
import socket
import struct
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.conntrack.reference import flow_of
from bpf_iptables.conntrack.tracker import Tracker
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.wire import mac_of, netns

A, A2, B = ip_to_int("10.1.0.1"), ip_to_int("10.1.0.3"), ip_to_int("10.2.0.1")
FLOWS = [(6, A, B, 40000, 80), (6, A2, B, 40000, 80), (17, A, B, 5000, 53), (1, A, B, 7, 0),
         (6, A, B, 40001, 22)]
FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
TCP_FLAGS = [SYN, SYN, SYN | ACK, SYN | ACK, ACK, ACK, ACK, FIN | ACK, FIN | ACK, RST,
             RST | ACK, ACK | PSH, SYN | FIN, 0, FIN, ACK | URG]
SCRIPT = [(False, SYN), (True, SYN | ACK), (False, ACK), (False, ACK | PSH), (True, ACK),
          (False, FIN | ACK), (True, ACK), (True, FIN | ACK), (False, ACK), (False, SYN)]
RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID
-A FORWARD -m conntrack --ctstate NEW
-A FORWARD -m conntrack --ctstate ESTABLISHED
-A FORWARD -m conntrack --ctstate RELATED
-A FORWARD -s 10.1.0.3 -m conntrack --ctstate NEW -j DROP
COMMIT
"""
STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED")


@dataclass
class Router:
    name: str
    inject: str
    macs: dict[str, bytes] = field(default_factory=dict)   # router side: ra, rb
    sockets: dict[str, socket.socket] = field(default_factory=dict)  # injector: ia, ib

    def run(self, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True,
                              capture_output=True, text=True).stdout

    def state_of_last(self) -> str:
        """The state netfilter gave the last packet (counters read and zeroed)."""
        out = self.run("iptables-legacy", "-L", "FORWARD", "-v", "-x", "-n", "-Z")
        counts = [int(line.split()[0]) for line in out.splitlines()[2:6]]
        hit = [s for s, n in zip(STATES, counts) if n]
        assert len(hit) <= 1, out
        return hit[0] if hit else "NONE"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def router() -> Iterator[Router]:
    """injector ia -- ra router rb -- ib injector; A, A2 behind ra, B behind rb
    (static neighbours: forwarded frames leave without ARP)."""
    tag = uuid.uuid4().hex[:8]
    r, i = f"ctnf-r-{tag}", f"ctnf-i-{tag}"
    made = []
    sockets: list[socket.socket] = []
    try:
        for n in (r, i):
            sh("ip", "netns", "add", n)
            made.append(n)
        sh("ip", "link", "add", "ra", "netns", r, "type", "veth", "peer", "name", "ia", "netns", i)
        sh("ip", "link", "add", "rb", "netns", r, "type", "veth", "peer", "name", "ib", "netns", i)
        for ns, dev in ((r, "ra"), (r, "rb"), (i, "ia"), (i, "ib")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", r, "addr", "add", "10.1.0.254/24", "dev", "ra")
        sh("ip", "-n", r, "addr", "add", "10.2.0.254/24", "dev", "rb")
        for ns in (r, i):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.ra.rp_filter=0", "net.ipv4.conf.rb.rp_filter=0"):
            sh("ip", "netns", "exec", r, "sysctl", "-qw", key)
        ia, ib = mac_of(i, "ia").hex(":"), mac_of(i, "ib").hex(":")
        for addr, dev, mac in (("10.1.0.1", "ra", ia), ("10.1.0.3", "ra", ia), ("10.2.0.1", "rb", ib)):
            sh("ip", "-n", r, "neigh", "add", addr, "lladdr", mac, "dev", dev, "nud", "permanent")
        t = Router(r, i, {"ra": mac_of(r, "ra"), "rb": mac_of(r, "rb")})
        subprocess.run(["ip", "netns", "exec", r, "iptables-legacy-restore"], input=RULES,
                       text=True, check=True)
        for key in ("net.netfilter.nf_conntrack_tcp_be_liberal=1",
                    "net.netfilter.nf_conntrack_checksum=0"):
            sh("ip", "netns", "exec", r, "sysctl", "-qw", key)
        with netns(i):
            for dev in ("ia", "ib"):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                sockets.append(s)
                s.bind((dev, 0))
                t.sockets[dev] = s
        yield t
    finally:
        for s in sockets:
            s.close()
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


class Conversation:
    """Sequence numbers of each TCP flow, both ways, kept consistent."""

    def __init__(self) -> None:
        self.next: dict[tuple[int, bool], int] = {}

    def numbers(self, flow: int, reverse: bool, flags: int) -> tuple[int, int]:
        mine = self.next.setdefault((flow, reverse), 1000 if not reverse else 900000)
        theirs = self.next.setdefault((flow, not reverse), 1000 if reverse else 900000)
        self.next[(flow, reverse)] = mine + bool(flags & SYN) + bool(flags & FIN)
        return mine, theirs if flags & ACK else 0


def packet_of(flow: int, reverse: bool, flags: int, offset: int = 0) -> Packet:
    """A packet of FLOWS[flow]; ``offset`` moves its client port (its echo
    identifier): each example has flows of its own (netfilter's table
    cannot be flushed without conntrack-tools, and entries outlive it)."""
    proto, src, dst, sport, dport = FLOWS[flow]
    sport += offset
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    p = Packet(hook="FORWARD", src=src, dst=dst, proto=proto, ttl=63)
    if proto == 1:
        p.icmp_type, p.icmp_id = (0 if reverse else 8), FLOWS[flow][3] + offset
    else:
        p.sport, p.dport, p.tcp_flags = sport, dport, flags if proto == 6 else 0
    return p


def wire(t: Router, pkt: Packet, seq: int, ack: int) -> tuple[str, bytes]:
    """The frame and the injector's device it leaves from (A's side or B's)."""
    pkt.length = header_length(pkt)
    data = bytearray(frame(pkt))
    if pkt.proto == 6:
        struct.pack_into("!II", data, 14 + 20 + 4, seq, ack)
    side = "ib" if pkt.src == B else "ia"
    data[0:6] = t.macs["rb" if side == "ib" else "ra"]
    return side, bytes(data)


@st.composite
def sequences(draw) -> list[tuple[str, int, bool, int, int, int]]:
    """Steps: ("pkt", flow, reverse, flags, 0, 0) or ("err", flow, reverse,
    flags, icmp type, code): an ICMP error about such a packet, sent back
    to its source by the other end."""
    flows = draw(st.lists(st.integers(0, len(FLOWS) - 1), min_size=1, max_size=3, unique=True))
    step = {f: 0 for f in flows}
    out = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.integers(0, 6))
        f = draw(st.sampled_from(flows))
        if kind <= 3:
            reverse, flags = SCRIPT[step[f] % len(SCRIPT)]
            step[f] += 1
            out.append(("pkt", f, reverse, flags, 0, 0))
        elif kind <= 5:
            out.append(("pkt", f, draw(st.booleans()), draw(st.sampled_from(TCP_FLAGS)), 0, 0))
        else:
            itype, code = draw(st.sampled_from([(3, 3), (11, 0)]))
            out.append(("err", f, draw(st.booleans()), ACK, itype, code))
    return out


@pytest.fixture(scope="module")
def routed():
    with router() as t:
        yield t


EXAMPLES = itertools.count(1)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(seq=sequences())
def test_model_gives_the_states_netfilter_gives(routed, seq):
    t = routed
    offset = next(EXAMPLES) * 16
    t.run("iptables-legacy", "-Z")
    tracker = Tracker()
    talk = Conversation()
    for i, (kind, f, reverse, flags, itype, code) in enumerate(seq):
        pkt = packet_of(f, reverse, flags, offset)
        s, a = talk.numbers(f, reverse, flags) if pkt.proto == 6 else (0, 0)
        if kind == "err":
            inner = pkt
            inner.length = header_length(inner)
            pkt = Packet(hook="FORWARD", src=inner.dst, dst=inner.src, proto=1, ttl=63,
                         icmp_type=itype, icmp_code=code, icmp_inner=inner)
        side, data = wire(t, pkt, s, a)
        t.sockets[side].send(data)
        time.sleep(0.002)
        got = t.state_of_last()
        pkt.time = time.monotonic()
        inner_flow = flow_of(pkt.icmp_inner) if pkt.icmp_inner is not None else None
        seen = tracker.packet(flow_of(pkt), pkt.time, tcp_flags=pkt.tcp_flags, inner=inner_flow)
        dropped = pkt.src == A2 and seen.state == "NEW"
        if not dropped:
            tracker.confirm(seen)
        assert seen.state == got, f"step {i} {seq[i]}: model {seen.state}, netfilter {got}"
