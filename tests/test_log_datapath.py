"""-j LOG in the eBPF data path (bpf/lib/log.h, datapath/logger.py).

The kernel's own LOG output cannot be read from inside a namespace here
without a global sysctl (nf_log_all_netns), so the lines are compared with
the format nf_log_syslog.c builds (nf_log_ip_packet: the common part,
dump_mac_header, dump_ipv4_packet), written out field by field below for
frames run through the classifier with BPF_PROG_TEST_RUN; a real namespace
checks the logger the daemon starts (file and counters) end to end."""
from __future__ import annotations

import os
import re
import struct
import sys
import time

import pytest

from bpf_iptables.datapath import bpfsys
from bpf_iptables.datapath.compiler import Shape, compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.logger import Event, RingReader, format_line
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import bpf_command, entered, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

A, B = ip_to_int("10.0.0.1"), ip_to_int("192.168.7.9")
MAC_LO = "MAC=02:00:00:00:00:01:02:00:00:00:00:02:08:00 "   # packets.frame()'s addresses


@pytest.fixture(scope="module")
def harness():
    with entered("bpflog") as ns:
        # one program for every test: the fields they use, room for 4 LOG rules
        fields = frozenset({"proto", "flags", "sport", "dport"})
        h = Harness(Shape(nwords=1, steps=40, ncounters=16, fields=fields, proto_max=8, nlogs=4))
        h.namespace = ns.name
        yield h
        h.close()


def logged(harness, rules: list[str], pkt: Packet, verdict: str = "PASS") -> list[str]:
    """Run ``pkt`` through ``rules`` and format what the ring received."""
    prog, _ = harness.load(table_from_lines(rules))
    ring = RingReader(prog.maps["log_ring"])
    try:
        ring.drain()
        assert run_frame(prog.fd, frame(pkt)).name == verdict
        return [format_line(Event.parse(raw), lambda i: {1: "lo"}.get(i, f"if{i}"))
                for raw in ring.drain()]
    finally:
        ring.close()


def pkt(**kw) -> Packet:
    kw.setdefault("hook", "INPUT")
    kw.setdefault("in_iface", "lo")
    kw.setdefault("src", A)
    kw.setdefault("dst", B)
    return Packet(**kw)


def test_tcp_syn_with_every_tcp_option_flag(harness):
    opts = bytes.fromhex("020405b40103030801010402")
    p = pkt(proto=6, sport=40000, dport=22, tcp_flags=0x02, tcp_options=opts, length=52,
            ttl=63, tos=0xB8, ip_id=4711, dont_fragment=True)
    lines = logged(harness, ["-A INPUT -p tcp --syn -j LOG --log-prefix \"[UFW BLOCK] \" "
                             "--log-tcp-sequence --log-tcp-options", "-A INPUT -j DROP"], p, "DROP")
    # the common part, the MAC header, then dump_ipv4_packet and the TCP header
    assert lines == ["[UFW BLOCK] IN=lo OUT= " + MAC_LO +
                     "SRC=10.0.0.1 DST=192.168.7.9 LEN=52 TOS=0x18 PREC=0xA0 TTL=63 ID=4711 DF "
                     "PROTO=TCP SPT=40000 DPT=22 SEQ=0 ACK=0 WINDOW=65535 RES=0x00 SYN URGP=0 "
                     "OPT (020405B40103030801010402) "]


def test_tcp_flags_order_and_no_options_without_the_flag(harness):
    p = pkt(proto=6, sport=1, dport=2, tcp_flags=0x3F, tcp_options=b"\x01" * 4, length=44)
    [line] = logged(harness, ["-A INPUT -j LOG"], p)
    assert line.endswith("PROTO=TCP SPT=1 DPT=2 WINDOW=65535 RES=0x00 URG ACK PSH RST SYN FIN "
                         "URGP=0 ")
    assert line.startswith("IN=lo OUT= MAC=")


def test_udp_and_ip_options(harness):
    p = pkt(proto=17, sport=53, dport=33000, length=60, ip_options=b"\x94\x04\x00\x00")
    [line] = logged(harness, ["-A INPUT -p udp -j LOG --log-ip-options --log-level 7"], p)
    assert line == ("IN=lo OUT= " + MAC_LO + "SRC=10.0.0.1 DST=192.168.7.9 LEN=60 TOS=0x00 "
                    "PREC=0x00 TTL=64 ID=0 OPT (94040000) PROTO=UDP SPT=53 DPT=33000 LEN=36 ")


def test_fragment_has_no_ports(harness):
    p = pkt(proto=17, frag_offset=185, more_fragments=True, length=100, ip_id=9)
    [line] = logged(harness, ["-A INPUT -j LOG"], p)
    assert line.endswith("TTL=64 ID=9 MF FRAG:185 PROTO=UDP ")


def test_icmp_echo_and_error_with_its_quoted_packet(harness):
    echo = pkt(proto=1, icmp_type=8, icmp_id=77, length=84)
    [line] = logged(harness, ["-A INPUT -p icmp -j LOG --log-prefix p"], echo)
    assert line.endswith("PROTO=ICMP TYPE=8 CODE=0 ID=77 SEQ=0 ")
    assert line.startswith("pIN=lo OUT= ")   # no space is added after the prefix
    inner = Packet(src=B, dst=A, proto=17, sport=5000, dport=53, length=40, ttl=1, ip_id=3)
    err = pkt(proto=1, icmp_type=3, icmp_code=4, icmp_inner=inner, length=56)
    [line] = logged(harness, ["-A INPUT -p icmp -j LOG"], err)
    assert line.endswith("PROTO=ICMP TYPE=3 CODE=4 [SRC=192.168.7.9 DST=10.0.0.1 LEN=40 TOS=0x00 "
                         # LEN=8: what the quoted UDP header says
                         "PREC=0x00 TTL=1 ID=3 PROTO=UDP SPT=5000 DPT=53 LEN=8 ] MTU=0 ")


def test_other_protocol_and_non_terminal_scan(harness):
    p = pkt(proto=47, length=40)
    prog, _ = harness.load(table_from_lines(["-A INPUT -j LOG", "-A INPUT -p 47 -j LOG",
                                             "-A INPUT -p 47 -j DROP"]))
    ring = RingReader(prog.maps["log_ring"])
    ring.drain()
    assert run_frame(prog.fd, frame(p)).name == "DROP"
    lines = [format_line(Event.parse(r), lambda i: "lo") for r in ring.drain()]
    ring.close()
    assert len(lines) == 2 and all(x.endswith("PROTO=47 ") for x in lines)
    counters = prog.rule_counters()
    assert [counters[("INPUT", i)].packets for i in range(3)] == [1, 1, 1]


def lost_events(prog) -> int:
    """The per-CPU loss counter of the ring, summed (slot 0 of log_lost)."""
    ncpus = bpfsys.possible_cpus()
    raw = bpfsys.map_lookup(prog.maps["log_lost"], struct.pack("<I", 0), 8 * ncpus)
    return sum(struct.unpack(f"<{ncpus}Q", raw))


def test_a_full_ring_loses_events_and_counts_them_never_the_packet(harness):
    prog, _ = harness.load(table_from_lines(["-A INPUT -j LOG", "-A INPUT -j DROP"]))
    ring = RingReader(prog.maps["log_ring"])
    ring.drain()
    before = lost_events(prog)
    n = 3000
    assert run_frame(prog.fd, frame(pkt(proto=17, length=28)), repeat=n).name == "DROP"
    got = len(ring.drain())
    ring.close()
    lost = lost_events(prog) - before
    assert got < n and lost > 0 and got + lost == n
    assert prog.rule_counters()[("INPUT", 1)].packets >= n


def test_macdecode_on_ethernet_raw_on_lo(harness):
    prog, _ = harness.load(table_from_lines(["-A INPUT -j LOG --log-macdecode"]))
    ring = RingReader(prog.maps["log_ring"])
    ring.drain()
    f = frame(pkt(proto=17, length=28))
    names = {i: n for n, i in harness.interfaces.items()}
    lines = []
    for dev in ("dp0", "lo"):
        assert run_frame(prog.fd, f, ifindex=harness.interfaces[dev]).name == "PASS"
        lines += [format_line(Event.parse(r), names.__getitem__) for r in ring.drain()]
    ring.close()
    assert lines[0].startswith("IN=dp0 OUT= MACSRC=02:00:00:00:00:02 MACDST=02:00:00:00:00:01 "
                               "MACPROTO=0800 SRC=10.0.0.1 "), lines
    # lo is no ARPHRD_ETHER device: dump_mac_header() falls back to MAC=
    assert lines[1].startswith("IN=lo OUT= " + MAC_LO + "SRC="), lines


def test_refused_log_uid():
    # UID= and GID= need the socket's file credentials: no eBPF program has them
    table = table_from_lines(["-A INPUT -j LOG --log-uid"])
    with pytest.raises(NotSupported, match="log-uid"):
        compile_chain(table, "INPUT", {"lo": 1})


def test_forward_has_both_devices_and_the_decremented_ttl(harness):
    """FORWARD: IN= the receiving device, OUT= the route's device (the
    namespace routes 10.9.2.0/24 to dp1), MAC=, and the TTL netfilter sees
    after ip_forward() lowered it."""
    import subprocess

    ns = harness.namespace
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.9.2.1/24", "dev", "dp1"], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    fwd = Harness(harness.min_shape, harness.interfaces, hook="FORWARD")
    try:
        prog, _ = fwd.load(table_from_lines(["-A FORWARD -j LOG --log-prefix fwd:",
                                             "-A FORWARD -j DROP"]))
        ring = RingReader(prog.maps["log_ring"])
        ring.drain()
        p = pkt(hook="FORWARD", in_iface="dp0", proto=17, sport=1, dport=2, length=28, ttl=63,
                dst=ip_to_int("10.9.2.5"))
        assert run_frame(prog.fd, frame(p), ifindex=fwd.interfaces["dp0"]).name == "DROP"
        names = {i: n for n, i in fwd.interfaces.items()}
        [line] = [format_line(Event.parse(r), names.__getitem__) for r in ring.drain()]
        ring.close()
        assert line.startswith("fwd:IN=dp0 OUT=dp1 MAC=")
        # packets.frame() writes TTL 64 on the wire for a FORWARD packet of TTL 63
        assert "DST=10.9.2.5 LEN=28 TOS=0x00 PREC=0x00 TTL=63 ID=0 PROTO=UDP SPT=1 DPT=2 " \
            "LEN=8 " in line, line
    finally:
        fwd.close()


# -- the daemon's logger, end to end --------------------------------------------

ON = {"BPF_IPTABLES_DATAPATH": "on"}
# three echo requests of 84 bytes (no ping here); the kernel answers them
PING = """
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for seq in (1, 2, 3):
    body = struct.pack("!BBHHH", 8, 0, 0, 99, seq) + bytes(56)
    c = sum(struct.unpack("!%dH" % (len(body) // 2), body))
    c = (c & 0xFFFF) + (c >> 16)
    c = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
    s.sendto(body[:2] + struct.pack("!H", c) + body[4:], ("127.0.0.1", 0))
    time.sleep(0.1)
"""


def test_logger_writes_the_lines_of_real_traffic():
    ensure_bpffs()
    with namespace("logr") as ns:
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
            for rule in (["-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "LOG",
                          "--log-prefix", "probe: ", "--log-level", "6"],
                         ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP"]):
                r = ns.run(bpf_command("iptables", *rule), env=ON)
                assert r.returncode == 0, r.stderr
            send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.bind(('127.0.0.1', 4321)); [s.sendto(b'abc', ('127.0.0.1', 9999)) "
                    "for _ in range(3)]")
            assert ns.run([sys.executable, "-c", send]).returncode == 0
            where = ns.run([sys.executable, "-c", "from bpf_iptables import state; "
                            "print(state.namespace_dir())"]).stdout.strip()
            path = os.path.join(where, "log")
            lines: list[str] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(lines) < 3:
                time.sleep(0.2)
                if os.path.exists(path):
                    with open(path) as fh:
                        lines = fh.read().splitlines()
            assert len(lines) == 3, lines
            want = re.compile(r"probe: IN=lo OUT= MAC=(00:){12}08:00 "
                              r"SRC=127\.0\.0\.1 DST=127\.0\.0\.1 "
                              r"LEN=31 TOS=0x00 PREC=0x00 TTL=64 ID=\d+ (DF )?PROTO=UDP SPT=4321 "
                              r"DPT=9999 LEN=11 $")
            assert all(want.fullmatch(x) for x in lines), lines
            counts = ns.run(bpf_command("iptables", "-L", "INPUT", "-v", "-x", "-n")).stdout
            assert [int(x.split()[0]) for x in counts.splitlines()[2:4]] == [3, 3], counts
            # OUTPUT (TC egress) shares the ring: IN= empty, OUT= the device,
            # no MAC; a LOG rule with a limit logs the burst only (ufw's form)
            for rule in (["-A", "OUTPUT", "-p", "icmp", "-j", "LOG", "--log-prefix", "out: "],
                         ["-A", "INPUT", "-p", "icmp", "-m", "limit", "--limit", "1/h",
                          "--limit-burst", "2", "-j", "LOG", "--log-prefix", "in: "]):
                r = ns.run(bpf_command("iptables", *rule), env=ON)
                assert r.returncode == 0, r.stderr
            assert ns.run([sys.executable, "-c", PING]).returncode == 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(lines) < 3 + 6 + 2:
                time.sleep(0.2)
                with open(path) as fh:
                    lines = fh.read().splitlines()
            out = [x for x in lines if x.startswith("out: ")]
            inp = [x for x in lines if x.startswith("in: ")]
            assert len(out) == 6 and len(inp) == 2, lines
            assert all(re.fullmatch(r"out: IN= OUT=lo SRC=127\.0\.0\.1 DST=127\.0\.0\.1 LEN=84 "
                                    r"TOS=0x00 PREC=0x00 TTL=64 ID=\d+ (DF )?PROTO=ICMP "
                                    r"TYPE=(8|0) CODE=0 ID=\d+ SEQ=[123] ", x) for x in out), out
            assert all(" MAC=" in x and "PROTO=ICMP TYPE=" in x for x in inp), inp
        finally:
            ns.run(datapath_command("detach"))
