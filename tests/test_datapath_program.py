"""Targeted checks of the XDP data path: parsing edge cases, user chains,
interfaces, refusals, range compression and tail-call continuation.

Every packet test runs the program with BPF_PROG_TEST_RUN and compares
verdict and counters with reference.evaluate (Harness.check); a shared
program shape keeps compiles to a few."""
from __future__ import annotations

import struct
import subprocess

import pytest

from bpf_iptables.datapath import compiler
from bpf_iptables.datapath.compiler import Shape, compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet

# interfaces (and so ifindexes) are those of a namespace of the test's own
pytestmark = pytest.mark.usefixtures("private_netns")

# the tracker and its ctstate field: tests/test_conntrack_*.py (a costlier compile)
ALL_FIELDS = frozenset(compiler.FIELD_ORDER) - {"ctstate", "ctcheck", "mark", "atcheck"}
SHAPE = Shape(nwords=4, steps=300, ncounters=64, fields=ALL_FIELDS, src_max=32, dst_max=32,
              src_bsize=128, dst_bsize=128, src_probes=6, dst_probes=6,
              proto_max=8, iif_max=16, sport_bsize=32, dport_bsize=32, length_bsize=32,
              ttl_bsize=32, oif_max=16, mac_max=8)


@pytest.fixture(scope="module")
def harness():
    h = Harness(SHAPE)
    yield h
    h.close()


def pkt(harness, **kw) -> Packet:
    kw.setdefault("in_iface", sorted(harness.interfaces)[0])
    kw.setdefault("hook", harness.hook)
    kw.setdefault("src", ip_to_int("10.0.0.1"))
    kw.setdefault("dst", ip_to_int("10.0.0.2"))
    p = Packet(**kw)
    p.length = max(p.length, header_length(p))
    return p


def check(harness, lines: list[str], packets: list[Packet]):
    table = table_from_lines(lines)
    report = harness.check(table, packets)
    assert report.mismatches == []
    return table


def test_frames_the_filter_never_sees_pass_uncounted(harness):
    table = table_from_lines(["-A INPUT -j DROP", "-P INPUT DROP"])
    prog, _ = harness.load(table)
    good = frame(pkt(harness, proto=17, sport=1, dport=2))
    arp = good[:12] + struct.pack("!H", 0x0806) + good[14:]
    bad_ihl = good[:14] + bytes([0x44]) + good[15:]
    too_long = good[:16] + struct.pack("!H", 1500) + good[18:]
    for f in (arp, bad_ihl, too_long, good[:20]):
        assert run_frame(prog.fd, f).name == "PASS"
    assert all(c.packets == 0 for c in prog.rule_counters().values())
    assert run_frame(prog.fd, good).name == "DROP"  # the same frame, intact
    assert prog.rule_counters()[("INPUT", 0)].packets == 1


def test_ip_options_move_the_transport_header(harness):
    lines = ["-A INPUT -p tcp --dport 80 -j DROP", "-A INPUT -p udp --sport 53 -j DROP"]
    packets = [pkt(harness, proto=6, dport=80, ip_options=b"\x01" * 40),
               pkt(harness, proto=6, dport=81, ip_options=b"\x01" * 4),
               pkt(harness, proto=17, sport=53, ip_options=b"\x01" * 8, length=200)]
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 1]


def test_fragments(harness):
    """Non-first fragments have no ports; offset-1 TCP fragments are
    hot-dropped by a tcp match (uncounted); first fragments have ports."""
    lines = ["-A INPUT -p udp --dport 53 -j ACCEPT", "-A INPUT -p tcp --dport 80 -j ACCEPT",
             "-A INPUT -f", "-A INPUT ! -f -p tcp -j ACCEPT", "-P INPUT DROP"]
    packets = [pkt(harness, proto=6, dport=80, frag_offset=0, more_fragments=True),
               pkt(harness, proto=6, frag_offset=100),
               pkt(harness, proto=6, frag_offset=1),
               pkt(harness, proto=17, frag_offset=1),
               pkt(harness, proto=17, dport=53, frag_offset=0, more_fragments=True)]
    table = check(harness, lines, packets)
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    # udp offset 1 reaches "-f"; the tcp offset-1 fragment stops at rule 2
    assert counts == [1, 1, 2, 0]
    assert table.chains["INPUT"].counters.packets == 2


def test_user_chains_jump_goto_return(harness):
    lines = ["-N WEB", "-N DENY", "-N LOG2",
             "-A DENY -s 10.9.0.0/16 -j DROP", "-A DENY",          # falls off: back to WEB
             "-A LOG2 -p tcp --dport 8080 -j RETURN", "-A LOG2 -j ACCEPT",
             "-A WEB -p tcp --dport 8000:8999 -g LOG2", "-A WEB -j DENY",
             "-A WEB -p tcp --dport 443 -j RETURN", "-A WEB -p tcp -j DROP",
             "-A INPUT -p tcp -j WEB", "-A INPUT -s 10.9.0.0/16", "-A INPUT -p tcp -j ACCEPT",
             "-P INPUT DROP"]
    tcp = dict(proto=6)
    packets = [pkt(harness, dport=8080, **tcp),               # goto LOG2, RETURN -> after WEB
               pkt(harness, dport=8081, **tcp),               # LOG2 ACCEPT
               pkt(harness, dport=443, **tcp),                # DENY falls off, RETURN
               pkt(harness, dport=443, src=ip_to_int("10.9.1.1"), **tcp),  # DENY drops
               pkt(harness, dport=22, **tcp),                 # WEB drops
               pkt(harness, proto=17, sport=1, dport=2)]      # policy
    check(harness, lines, packets)


def test_goto_from_base_chain_falls_to_policy(harness):
    lines = ["-N X", "-A X -p udp -j ACCEPT", "-A INPUT -p tcp -g X", "-A INPUT -j ACCEPT",
             "-P INPUT DROP"]
    packets = [pkt(harness, proto=6, dport=1), pkt(harness, proto=17, dport=1)]
    table = check(harness, lines, packets)
    assert table.chains["INPUT"].counters.packets == 1


def test_out_interface_is_empty_at_input(harness):
    lines = ["-N X", "-A X -o eth0 -j DROP", "-A X ! -o eth0 -j ACCEPT", "-A INPUT -j X",
             "-P INPUT DROP"]
    table = check(harness, lines, [pkt(harness, proto=1)])
    assert [r.counters.packets for r in table.chains["X"].rules] == [0, 1]


def test_in_interface_wildcards_and_unknown_interfaces(harness):
    names = sorted(harness.interfaces)
    name = names[-1]
    lines = [f"-A INPUT -i {name[:-1]}+ -j DROP", f"-A INPUT ! -i {name} -j ACCEPT",
             "-A INPUT -i + -j DROP"]
    check(harness, lines, [pkt(harness, in_iface=n, proto=1) for n in names])
    # compiled without knowing an interface: it matches no -i name
    table = table_from_lines(["-A INPUT -i lo -j DROP", "-A INPUT ! -i lo -j ACCEPT",
                              "-P INPUT DROP"])
    c = compile_chain(table, "INPUT", {"lo": harness.interfaces["lo"]}, SHAPE)
    prog = harness.cache.get(c.shape)
    prog.install(c)
    other = next(n for n in names if n != "lo")
    p = pkt(harness, in_iface=other, proto=1)
    assert run_frame(prog.fd, frame(p), ifindex=harness.interfaces[other]).name == "PASS"
    assert run_frame(prog.fd, frame(p), ifindex=harness.interfaces["lo"]).name == "DROP"


@pytest.mark.parametrize("lines, hook", [
    (["-A INPUT -m limit --limit 1/s -m length --length 1:2 -j ACCEPT"], "INPUT"),
    (["-N X", "-A X -s 10.0.0.0/255.0.255.0", "-A INPUT -s 10.0.0.0/255.0.255.0 -j X",
      "-A INPUT ! -s 10.0.0.0/255.0.0.255 -g X"], "INPUT"),
    (["-A INPUT -p tcp --tcp-option 2 -j DROP"], "INPUT"),
    # (sport OR dport in A) AND (sport OR dport in B): no single OR term
    (["-N X", "-A X -p tcp -m multiport --ports 22", "-A INPUT -p tcp -m multiport --ports 80 -j X"],
     "INPUT"),
    # the data path has ports of TCP and UDP only
    (["-A INPUT -p sctp -m multiport --dports 9 -j DROP"], "INPUT"),
])
def test_refused_with_not_supported(lines, hook):
    table = table_from_lines(lines)
    with pytest.raises(NotSupported):
        compile_chain(table, hook, {"lo": 1})


def test_non_contiguous_masks_are_checked_per_candidate(harness):
    lines = ["-A INPUT -s 10.0.5.0/255.0.255.0 -p udp -j DROP",
             "-A INPUT ! -d 10.0.0.7/255.0.0.255 -p udp",
             "-A INPUT -p udp -s 10.0.0.0/8 -j ACCEPT", "-P INPUT DROP"]
    packets = [pkt(harness, proto=17, src=ip_to_int("10.1.5.1"), dst=ip_to_int("10.0.0.7")),
               pkt(harness, proto=17, src=ip_to_int("10.1.6.1"), dst=ip_to_int("10.9.9.7")),
               pkt(harness, proto=17, src=ip_to_int("10.1.6.1"), dst=ip_to_int("10.9.9.8"))]
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 1, 2]
    c = compile_chain(table, "INPUT", {"lo": 1})
    assert c.entries[0].residual("src") == (ip_to_int("10.0.5.0"), ip_to_int("255.0.255.0"), False)
    assert c.entries[1].residual("dst") == (ip_to_int("10.0.0.7"), ip_to_int("255.0.0.255"), True)


def test_port_ranges_are_intervals_not_ports():
    table = table_from_lines(["-A INPUT -p tcp --dport 1000:60000 -j DROP",
                              "-A INPUT -p udp ! --dport 2000:3000 -j DROP"])
    c = compile_chain(table, "INPUT", {"lo": 1})
    assert c.dport_bounds == [0, 1000, 2000, 3001, 60001]
    assert len(c.dport) == len(c.dport_bounds) + 2  # + no-L4 + offset-1 fragment
    assert "sport" not in c.shape.fields and "src" not in c.shape.fields


def test_fields_not_in_use_are_not_compiled():
    c = compile_chain(table_from_lines(["-A INPUT -p icmp -j DROP"]), "INPUT", {"lo": 1})
    assert c.shape.fields == frozenset({"proto"})


def test_long_scans_continue_in_tail_calls(harness, monkeypatch):
    """Many counting-only rules before the verdict: the scan needs more
    steps than one invocation has, and continues in tail calls."""
    monkeypatch.setattr(compiler, "MAX_STEPS", 40)
    lines = ["-A INPUT -p udp"] * 100 + ["-A INPUT -p udp -j DROP", "-A INPUT -j ACCEPT"]
    table = table_from_lines(lines)
    c = compile_chain(table, "INPUT", harness.interfaces)
    assert c.shape.steps == 40  # 2 words + 101 continuing entries: 3 invocations
    packets = [pkt(harness, proto=17, sport=1, dport=2, length=100),
               pkt(harness, proto=6, dport=2)]
    own = Harness(interfaces=harness.interfaces)  # this shape, not the shared one
    try:
        report = own.check(table, packets)
    finally:
        own.close()
    assert report.mismatches == []
    assert all(r.counters.packets == 1 for r in table.chains["INPUT"].rules)
    with pytest.raises(NotSupported):
        # 32 words + 1400 continuing entries > 32 invocations of 40 steps
        compile_chain(table_from_lines(["-A INPUT"] * 1400), "INPUT", {"lo": 1})


def ip(text: str) -> int:
    return ip_to_int(text)


def test_iprange_ranges_as_prefix_sets(harness):
    lines = ["-A INPUT -p udp -m iprange --src-range 10.0.0.3-10.0.1.200 -j DROP",
             "-A INPUT -p udp -m iprange ! --dst-range 10.0.0.5-10.0.0.9 -j DROP",
             "-A INPUT -p udp -m iprange --src-range 10.0.9.9-10.0.0.1 -j DROP",  # reversed
             "-A INPUT -p udp -m iprange ! --src-range 10.0.9.9-10.0.0.1 -j ACCEPT",
             "-P INPUT DROP"]
    srcs = ("10.0.0.2", "10.0.0.3", "10.0.0.255", "10.0.1.200", "10.0.1.201", "9.0.0.0")
    dsts = ("10.0.0.4", "10.0.0.5", "10.0.0.9", "10.0.0.10")
    packets = [pkt(harness, proto=17, src=ip(s), dst=ip(d)) for s in srcs for d in dsts]
    table = check(harness, lines, packets)
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    # 3 sources in the range (x 4); of the other 3, the 2 destinations outside 5-9
    assert counts == [12, 6, 0, 6]


def test_iprange_after_tcp_still_hot_drops_offset_1_fragments(harness):
    # xt_tcpudp drops an offset-1 TCP fragment before iprange runs
    lines = ["-A INPUT -p tcp --dport 22 -m iprange --src-range 1.2.3.4-1.2.3.9 -j ACCEPT",
             "-A INPUT -p tcp -m multiport --dports 1:100 -m tcp --dport 22 -j ACCEPT"]
    packets = [pkt(harness, proto=6, frag_offset=1, src=ip("10.0.0.1")),
               pkt(harness, proto=6, dport=22, src=ip("1.2.3.5")),
               pkt(harness, proto=6, dport=22, src=ip("1.2.3.3"))]
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 1]


def test_multiport_unions_of_ports_and_ranges(harness):
    lines = ["-A INPUT -p udp -m multiport --dports 53,100:200,7 -j DROP",
             "-A INPUT -p tcp -m multiport ! --ports 22,80:90 -j DROP",
             "-A INPUT -p tcp -m multiport ! --sports 1:1000 -j ACCEPT",
             "-A INPUT -p udp -m multiport --sports 0:65535",
             "-P INPUT DROP"]
    ports = (6, 7, 8, 53, 99, 100, 150, 200, 201, 22, 80, 91, 1000, 1001)
    packets = [pkt(harness, proto=proto, sport=sp, dport=dp)
               for proto in (6, 17) for sp in ports for dp in ports]
    packets += [pkt(harness, proto=17, dport=53, frag_offset=5),
                pkt(harness, proto=6, dport=53, frag_offset=1)]
    table = check(harness, lines, packets)
    # destination ports 7, 53, 100, 150, 200 (the UDP fragment has no ports)
    assert table.chains["INPUT"].rules[0].counters.packets == 5 * len(ports)


def test_icmp_type_and_code(harness):
    lines = ["-A INPUT -p icmp --icmp-type 3/1 -j DROP",
             "-A INPUT -p icmp -m icmp ! --icmp-type echo-request -j ACCEPT",
             "-A INPUT -p icmp --icmp-type 3",
             "-A INPUT -p icmp --icmp-type any -j DROP",
             "-P INPUT ACCEPT"]
    packets = [pkt(harness, proto=1, icmp_type=t, icmp_code=c)
               for t in (0, 3, 8, 11, 255) for c in (0, 1, 2, 255)]
    packets.append(pkt(harness, proto=1, icmp_type=3, icmp_code=1, frag_offset=3))
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 15, 0, 4]


def test_length_is_the_ip_total_length_by_intervals(harness):
    lines = ["-A INPUT -m length --length 100:200 -j DROP",
             "-A INPUT -m length ! --length 0:63",
             "-A INPUT -p udp -m length --length 300 -j ACCEPT",
             "-A INPUT -m length --length 500:400 -j ACCEPT",       # reversed: never
             "-A INPUT -p udp -m length ! --length 500:400 -j DROP",  # always
             "-P INPUT ACCEPT"]
    lengths = (28, 63, 64, 99, 100, 150, 200, 201, 300, 301, 1500)
    packets = [pkt(harness, proto=17, length=n) for n in lengths]
    packets.append(pkt(harness, proto=6, length=150, ip_options=b"\x01" * 8))
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [4, 6, 1, 0, 7]
    c = compile_chain(table, "INPUT", {"lo": 1})
    # boundaries of the ranges, not one entry per length
    assert c.length_bounds == [0, 64, 100, 201, 300, 301]


def test_ttl_comparisons(harness):
    lines = ["-A INPUT -m ttl --ttl-eq 64 -j ACCEPT",
             "-A INPUT -m ttl ! --ttl-eq 1",
             "-A INPUT -m ttl --ttl-lt 10 -j DROP",
             "-A INPUT -m ttl --ttl-gt 200 -j DROP",
             "-A INPUT -m ttl --ttl-lt 0 -j DROP",     # never
             "-A INPUT -m ttl --ttl-gt 255 -j DROP",   # never
             "-P INPUT ACCEPT"]
    packets = [pkt(harness, proto=17, ttl=t) for t in (0, 1, 2, 9, 10, 63, 64, 65, 200, 201, 255)]
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 9, 4, 2, 0, 0]


@pytest.fixture(scope="module")
def forward(harness, private_netns):
    """The FORWARD classifier, run as the dispatcher would call it, in a
    namespace that routes 10.9.1.0/24 to dp0 and 10.9.2.0/24 to dp1."""
    for dev, net in (("dp0", "10.9.1.1/24"), ("dp1", "10.9.2.1/24")):
        subprocess.run(["ip", "addr", "add", net, "dev", dev], check=True)
    subprocess.run(["ip", "netns", "exec", private_netns.name, "sysctl", "-qw",
                    "net.ipv4.ip_forward=1"], check=True)
    h = Harness(SHAPE, harness.interfaces, hook="FORWARD")
    yield h
    h.close()


def test_ttl_in_forward_is_the_decremented_ttl(forward):
    """ip_forward() lowers the TTL before FORWARD: the classifier sees the
    frame (TTL t + 1) and must decide as netfilter does on t."""
    lines = ["-A FORWARD -m ttl --ttl-eq 64 -j ACCEPT",
             "-A FORWARD -m ttl --ttl-lt 5 -j DROP",
             "-A FORWARD -m ttl --ttl-gt 253",
             "-A FORWARD -m ttl ! --ttl-eq 100 -j DROP",
             "-P FORWARD ACCEPT"]
    packets = [pkt(forward, proto=17, ttl=t) for t in (1, 4, 5, 63, 64, 65, 100, 253, 254)]
    assert frame(packets[4])[22] == 65  # the frame's TTL
    table = check(forward, lines, packets)
    assert [r.counters.packets for r in table.chains["FORWARD"].rules] == [1, 2, 1, 5]
    assert table.chains["FORWARD"].counters.packets == 1  # ttl 100


def test_tos_and_dscp_on_the_tos_byte(harness):
    lines = ["-A INPUT -m tos --tos 0x10/0x3f -j DROP",
             "-A INPUT -m tos ! --tos Maximize-Throughput",
             "-A INPUT -m dscp --dscp 0x2e -j ACCEPT",
             "-A INPUT -m dscp ! --dscp-class AF11 -m tos --tos 0x03/0x03 -j DROP",
             "-A INPUT -m tos --tos 0x81/0x01 -j DROP",    # value outside the mask: never
             "-P INPUT ACCEPT"]
    toses = (0x00, 0x08, 0x10, 0x50, 0xB8, 0xBB, 0x28, 0x2B, 0x0B, 0xFF, 0x09)
    packets = [pkt(harness, proto=17, tos=t) for t in toses]
    table = check(harness, lines, packets)
    # 0x10 and 0x50; all but 0x08/0x48-like (tos & 0x3f == 0x08): 0x08; EF (0xB8, 0xBB);
    # 0x2B, 0xFF (0x0B is AF11 with ECN 3)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [2, 8, 2, 2, 0]


def test_multiport_ports_source_or_destination(harness):
    """--ports: the OR of a sport- and a dport-indexed bitvector, one AND
    term; first match and counters as usual."""
    lines = ["-A INPUT -p tcp -m multiport --ports 22,80:90 -j DROP",
             "-A INPUT -p udp -m multiport --ports 53 -m multiport --sports 1000:2000",
             "-A INPUT -p udp -m multiport --ports 53,1500 -j ACCEPT",
             "-A INPUT -p tcp --dport 100 -m multiport --ports 5:7 -j ACCEPT",
             "-P INPUT DROP"]
    ports = (4, 5, 22, 53, 79, 80, 90, 91, 100, 1500)
    packets = [pkt(harness, proto=proto, sport=sp, dport=dp)
               for proto in (6, 17) for sp in ports for dp in ports]
    packets += [pkt(harness, proto=17, dport=53, frag_offset=5),
                pkt(harness, proto=6, dport=22, frag_offset=1)]
    table = check(harness, lines, packets)
    # tcp: either port in {22, 80, 90}: 100 - 7 * 7 pairs
    assert table.chains["INPUT"].rules[0].counters.packets == 100 - 49
    c = compile_chain(table, "INPUT", {"lo": 1})
    assert "ports" in c.shape.fields and 80 in c.sport_bounds and 91 in c.dport_bounds


def test_out_interface_in_forward_is_the_routes_device(forward):
    """-o in FORWARD: the egress ifindex of the kernel's route lookup."""
    lines = ["-A FORWARD -o dp1 -p udp -j DROP",
             "-A FORWARD ! -o dp+ -j DROP",
             "-A FORWARD -o dp0 -p tcp",
             "-A FORWARD -i dp1 ! -o dp1 -j ACCEPT",
             "-P FORWARD DROP"]
    packets = []
    for proto in (6, 17):
        packets += [pkt(forward, proto=proto, in_iface="dp0", out_iface="dp1", dst=ip("10.9.2.5")),
                    pkt(forward, proto=proto, in_iface="dp1", out_iface="dp0", dst=ip("10.9.1.7"))]
    table = check(forward, lines, packets)
    assert [r.counters.packets for r in table.chains["FORWARD"].rules] == [1, 0, 1, 2]
    assert table.chains["FORWARD"].counters.packets == 1   # tcp dp0 -> dp1
    c = compile_chain(table, "FORWARD", forward.interfaces)
    assert "oif" in c.shape.fields
    # INPUT has no output device: decided at compile time, no oif field
    via_chain = table_from_lines(["-N X", "-A X -o dp1 -j DROP", "-A INPUT -j X"])
    assert "oif" not in compile_chain(via_chain, "INPUT", forward.interfaces).shape.fields


def test_mac_source(harness):
    """xt_mac: the Ethernet source address; never on the loopback (no
    ARPHRD_ETHER device), even inverted."""
    a, b = bytes.fromhex("0a0000000001"), bytes.fromhex("0a0000000002")
    lines = ["-A INPUT -m mac --mac-source 0a:00:00:00:00:01 -j DROP",
             "-A INPUT -m mac ! --mac-source 0a:00:00:00:00:02",
             "-A INPUT -p udp -m mac ! --mac-source 0a:00:00:00:00:01 -j DROP",
             "-P INPUT ACCEPT"]
    packets = [pkt(harness, proto=17, src_mac=m, in_iface=dev)
               for m in (a, b, bytes.fromhex("020000000002")) for dev in ("dp0", "lo")]
    table = check(harness, lines, packets)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [1, 1, 2]
    assert table.chains["INPUT"].counters.packets == 3   # the three on lo


def test_pkttype_from_the_destination_mac(harness):
    lines = ["-A INPUT -m pkttype --pkt-type broadcast -j DROP",
             "-A INPUT -m pkttype ! --pkt-type multicast",
             "-A INPUT -m pkttype --pkt-type otherhost -j DROP",    # never seen by a chain
             "-A INPUT -m pkttype ! --pkt-type otherhost -p udp -j ACCEPT",
             "-A INPUT -m pkttype --pkt-type unicast -j DROP",
             "-P INPUT ACCEPT"]
    packets = [pkt(harness, proto=proto, pkttype=kind, dst=ip(dst), in_iface=dev)
               for proto in (6, 17) for kind, dst in (("host", "10.0.0.2"),
                                                      ("broadcast", "10.0.0.255"),
                                                      ("multicast", "224.0.0.1"))
               for dev in ("dp0", "lo")]
    table = check(harness, lines, packets)
    # on lo every packet is PACKET_HOST (a zero destination MAC)
    assert [r.counters.packets for r in table.chains["INPUT"].rules] == [2, 8, 0, 5, 4]
    out = table_from_lines(["-A OUTPUT -m pkttype --pkt-type host -j DROP",
                            "-A OUTPUT -m pkttype --pkt-type broadcast -j DROP"])
    c = compile_chain(out, "OUTPUT", {"lo": 1})
    # at OUTPUT every packet is PACKET_HOST: decided at compile time
    assert "pkttype" not in c.shape.fields and c.entries[1].fields.never
    # so in FORWARD (ip_forward() drops the other types before the hook)
    fwd = table_from_lines(["-A FORWARD -m pkttype ! --pkt-type host -j DROP",
                            "-A FORWARD -m pkttype --pkt-type unicast -j DROP"])
    c = compile_chain(fwd, "FORWARD", {"lo": 1})
    assert "pkttype" not in c.shape.fields
    assert [e.fields.never for e in c.entries] == [True, False, False]


def test_more_fields_leave_fewer_steps_per_invocation():
    """Each field is one more AND term in the scan loop: past the first nine
    the verifier's budget allows 5/6 of the steps (all 16 fail at 1,200)."""
    nine = Shape(nwords=1, steps=compiler.MAX_STEPS, ncounters=4,
                 fields=frozenset(compiler.FIELD_ORDER[:9]))
    assert nine.union(nine).steps == compiler.MAX_STEPS
    more = nine.union(Shape(nwords=1, steps=2, ncounters=4, fields=frozenset({"ttl"})))
    assert more.steps == compiler.MAX_STEPS * 5 // 6
