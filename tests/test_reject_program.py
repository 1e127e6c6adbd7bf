"""The REJECT reply the classifier builds, by BPF_PROG_TEST_RUN (XDP, INPUT).

Every reply is compared byte for byte (except the ICMP error's IP id, any
value, and the IP checksum covering it, checked valid) with the reply
modelled here after net/ipv4/netfilter/nf_reject_ipv4.c and
net/ipv4/icmp.c; the cases where the kernel sends nothing are dropped
without a reply, and the rule counts the original either way. The same
replies against iptables-legacy's own, on a real link:
tests/test_reject_traffic.py."""
from __future__ import annotations

import os
import struct

import pytest

from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import checksum, frame, header_length
from bpf_iptables.datapath.testrun import test_run_out as run_out
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet

pytestmark = pytest.mark.usefixtures("private_netns")

XDP_DROP, XDP_TX = 1, 3
TYPES = {"icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2,
         "icmp-port-unreachable": 3, "icmp-net-prohibited": 9, "icmp-host-prohibited": 10,
         "icmp-admin-prohibited": 13}
RULES = [f"-A INPUT -p udp --dport {6000 + i} -j REJECT --reject-with {t}"
         for i, t in enumerate(TYPES)] + [
    "-A INPUT -p tcp --dport 7000 -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp --dport 7001 -j REJECT",
    "-A INPUT -p icmp -j REJECT --reject-with icmp-host-prohibited",
    "-A INPUT -p 47 -j REJECT --reject-with icmp-proto-unreachable",
    "-A INPUT -d 255.255.255.255 -j REJECT",
    "-A INPUT -d 224.0.0.0/4 -j REJECT",
    "-A INPUT -p udp -j REJECT",
]
TTL = 64


@pytest.fixture(scope="module")
def loaded():
    h = Harness()
    try:
        table = table_from_lines(RULES)
        prog, _ = h.load(table)
        yield h, prog
    finally:
        h.close()


def pkt(**kw) -> Packet:
    kw.setdefault("in_iface", "lo")
    kw.setdefault("src", ip_to_int("10.0.0.1"))
    kw.setdefault("dst", ip_to_int("10.0.0.2"))
    p = Packet(**kw)
    p.length = max(p.length, header_length(p))
    return p


def with_payload(f: bytes, ihl: int = 20) -> bytes:
    """Non-zero payload bytes (the checksums must cover real data); the
    UDP checksum left 0 (none), as the frame builder leaves it."""
    head = 14 + ihl + 8
    body = bytes((i * 7 + 3) & 0xFF for i in range(len(f) - head))
    return f[:head] + body


def run(prog, f: bytes) -> tuple[int, bytes]:
    r, out = run_out(prog.fd, f, ifindex=1)
    return r.verdict, out


def icmp_model(orig: bytes, code: int) -> bytes:
    """icmp_send(ICMP_DEST_UNREACH, code) for the frame ``orig`` (id 0)."""
    ip = orig[14:]
    tot = struct.unpack_from("!H", ip, 2)[0]
    quote = ip[:min(tot, 576 - 28)]
    icmp = bytearray(struct.pack("!BBHI", 3, code, 0, 0) + quote)
    struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, (ip[1] & 0x1E) | 0xC0, 20 + len(icmp),
                                0, 0, TTL, 1, 0, ip[16:20], ip[12:16]))
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return orig[6:12] + orig[0:6] + b"\x08\x00" + bytes(hdr) + bytes(icmp)


def rst_model(orig: bytes) -> bytes:
    """nf_send_reset() for the TCP segment in ``orig``."""
    ip = orig[14:]
    ihl = (ip[0] & 0xF) * 4
    tot = struct.unpack_from("!H", ip, 2)[0]
    th = ip[ihl:]
    sport, dport, seq, ack = struct.unpack_from("!HHII", th)
    doff, flags = th[12] >> 4, th[13]
    if flags & 0x10:
        rseq, rack, rflags = ack, 0, 0x04
    else:
        rseq = 0
        rack = (seq + bool(flags & 0x02) + bool(flags & 0x01) + tot - ihl - doff * 4) & 0xFFFFFFFF
        rflags = 0x14
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0))
    pseudo = ip[16:20] + ip[12:16] + struct.pack("!HH", 6, 20)
    struct.pack_into("!H", tcp, 16, checksum(pseudo + bytes(tcp)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, TTL, 6, 0,
                                ip[16:20], ip[12:16]))
    struct.pack_into("!H", hdr, 10, checksum(bytes(hdr)))
    return orig[6:12] + orig[0:6] + b"\x08\x00" + bytes(hdr) + bytes(tcp)


def without_icmp_id(reply: bytes) -> bytes:
    assert checksum(reply[14:34]) == 0
    return reply[:18] + b"\0\0" + reply[20:24] + b"\0\0" + reply[26:]


def model_without_id(model: bytes) -> bytes:
    return model[:18] + b"\0\0" + model[20:24] + b"\0\0" + model[26:]


@pytest.mark.parametrize("index, code", list(enumerate(TYPES.values())))
def test_icmp_reply_per_type(loaded, index, code):
    _, prog = loaded
    f = with_payload(frame(pkt(proto=17, sport=40000, dport=6000 + index, length=61, tos=0xB8)))
    verdict, out = run(prog, f)
    assert verdict == XDP_TX
    assert checksum(out[34:]) == 0
    assert without_icmp_id(out) == model_without_id(icmp_model(f, code))


@pytest.mark.parametrize("length", [28, 29, 547, 548, 549, 1000, 1500])
def test_icmp_quote_is_at_most_548_bytes(loaded, length):
    _, prog = loaded
    f = with_payload(frame(pkt(proto=17, sport=1, dport=9, length=length)))
    verdict, out = run(prog, f)
    assert verdict == XDP_TX
    assert len(out) == 14 + 28 + min(length, 548)
    assert without_icmp_id(out) == model_without_id(icmp_model(f, 3))


def test_ethernet_padding_is_not_quoted(loaded):
    _, prog = loaded
    f = frame(pkt(proto=17, sport=1, dport=9, length=28))
    verdict, out = run(prog, f + b"\xAA" * 18)   # a 60-byte minimum frame
    assert verdict == XDP_TX
    assert without_icmp_id(out) == model_without_id(icmp_model(f, 3))


@pytest.mark.parametrize("flags, seq, ack, payload", [
    (0x02, 1000, 0, 0),               # SYN: ack = seq + 1
    (0x02, 0xFFFFFFFF, 0, 0),         # wraps
    (0x18, 5, 77777, 100),            # PSH ACK with data: seq = its ack, no ACK
    (0x01, 9, 0, 10),                 # FIN with data, no ACK: ack = seq + 10 + 1
    (0x11, 9, 12345, 0),              # FIN ACK
    (0x00, 3, 0, 7),                  # no flags
])
def test_tcp_reset(loaded, flags, seq, ack, payload):
    _, prog = loaded
    p = pkt(proto=6, sport=40001, dport=7000, tcp_flags=flags)
    p.length = header_length(p) + payload
    f = bytearray(frame(p))
    struct.pack_into("!II", f, 14 + 20 + 4, seq, ack)
    verdict, out = run(prog, bytes(f))
    assert verdict == XDP_TX
    assert out == rst_model(bytes(f))


def test_tcp_reset_after_ip_options_and_tcp_options(loaded):
    _, prog = loaded
    p = pkt(proto=6, sport=1, dport=7000, tcp_flags=0x02, ip_options=b"\x01\x01\x01\x01",
            tcp_options=b"\x02\x04\x05\xb4")
    p.length = header_length(p) + 5
    f = frame(p)
    verdict, out = run(prog, f)
    assert verdict == XDP_TX
    assert out == rst_model(f)


def test_default_reject_of_tcp_is_port_unreachable(loaded):
    _, prog = loaded
    f = frame(pkt(proto=6, sport=1, dport=7001, tcp_flags=0x02))
    verdict, out = run(prog, f)
    assert verdict == XDP_TX
    assert without_icmp_id(out) == model_without_id(icmp_model(f, 3))


def test_icmp_query_gets_an_error_an_icmp_error_does_not(loaded):
    _, prog = loaded
    echo = frame(pkt(proto=1, icmp_type=8, length=40))
    verdict, out = run(prog, echo)
    assert verdict == XDP_TX
    assert without_icmp_id(out) == model_without_id(icmp_model(echo, 10))
    for type_ in (3, 4, 5, 11, 12, 19, 40):   # errors, and unknown types (> 18)
        inner = pkt(proto=17, sport=1, dport=2)
        f = frame(pkt(proto=1, icmp_type=type_, icmp_inner=inner if type_ <= 12 else None,
                      length=60))
        assert run(prog, f)[0] == XDP_DROP, type_


@pytest.mark.parametrize("case", ["fragment", "broadcast", "multicast", "bcast-mac",
                                  "mcast-mac", "rst"])
def test_no_reply_where_the_kernel_sends_none(loaded, case):
    h, prog = loaded
    if case == "fragment":
        p = pkt(proto=17, frag_offset=10, length=100)
    elif case == "broadcast":
        p = pkt(proto=6, sport=1, dport=5, dst=ip_to_int("255.255.255.255"), tcp_flags=2)
    elif case == "multicast":
        p = pkt(proto=17, sport=1, dport=5, dst=ip_to_int("239.1.2.3"))
    elif case == "bcast-mac":
        p = pkt(proto=17, sport=1, dport=5, pkttype="broadcast")
    elif case == "mcast-mac":
        p = pkt(proto=17, sport=1, dport=5, pkttype="multicast")
    else:
        p = pkt(proto=6, sport=1, dport=7000, tcp_flags=0x14)
    before = prog.rule_counters()
    assert run(prog, frame(p))[0] == XDP_DROP
    after = prog.rule_counters()
    # the rule counted (and dropped) the original all the same
    assert sum(c.packets for c in after.values()) == sum(c.packets for c in before.values()) + 1


def test_counted_once_with_its_bytes(loaded):
    _, prog = loaded
    f = frame(pkt(proto=47, length=123))
    before = prog.rule_counters()
    verdict, out = run(prog, f)
    assert verdict == XDP_TX and out[14 + 20 + 1] == 2   # protocol unreachable
    after = prog.rule_counters()
    rule = RULES.index("-A INPUT -p 47 -j REJECT --reject-with icmp-proto-unreachable")
    c0, c1 = before[("INPUT", rule)], after[("INPUT", rule)]
    assert (c1.packets - c0.packets, c1.bytes - c0.bytes) == (1, 123)


def test_reply_ttl_is_the_namespace_default(tmp_path):
    """ip_default_ttl as the rules were compiled (this test's namespace)."""
    path = "/proc/sys/net/ipv4/ip_default_ttl"
    old = open(path).read()
    h = Harness()
    try:
        with open(path, "w") as f:
            f.write("99")
        prog, _ = h.load(table_from_lines(["-A INPUT -p udp -j REJECT"]))
        verdict, out = run(prog, frame(pkt(proto=17, sport=1, dport=2)))
        assert verdict == XDP_TX and out[14 + 8] == 99
    finally:
        with open(path, "w") as f:
            f.write(old)
        h.close()


def test_reject_in_user_chains_vs_the_reference():
    """REJECT entries among jumps, gotos and RETURNs: verdicts (XDP_TX for
    a reply) and every counter as reference.evaluate says."""
    lines = ["-N A", "-N B",
             "-A INPUT -p tcp --dport 80 -j ACCEPT",
             "-A INPUT -p udp -j A",
             "-A INPUT -p tcp -g B",
             "-A INPUT -j REJECT --reject-with icmp-admin-prohibited",
             "-A A -p udp --dport 53 -j RETURN",
             "-A A -p udp --dport 1000:2000 -j REJECT --reject-with icmp-net-prohibited",
             "-A A -s 10.0.0.0/8 -j REJECT",
             "-A A -j DROP",
             "-A B -p tcp --dport 22 -j REJECT --reject-with tcp-reset",
             "-A B -p tcp --dport 23 -j DROP",
             "-P INPUT ACCEPT"]
    packets = []
    for src in ("10.1.2.3", "192.168.0.9"):
        for dport in (53, 1500, 3000):
            packets.append(pkt(proto=17, sport=5000, dport=dport, src=ip_to_int(src)))
        for dport in (22, 23, 80, 443):
            packets.append(pkt(proto=6, sport=5000, dport=dport, tcp_flags=0x02,
                               src=ip_to_int(src)))
        packets.append(pkt(proto=1, icmp_type=8, src=ip_to_int(src)))
    h = Harness()
    try:
        report = h.check(table_from_lines(lines), packets)
    finally:
        h.close()
    assert report.packets == len(packets)
    assert report.mismatches == []
