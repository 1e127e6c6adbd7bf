"""-m addrtype in the eBPF data path (datapath/addrtypes.py, extensions/addrtype.py).

The types come from the namespace's routes; the expectations below for
each kind of route were checked against iptables-legacy (xt_addrtype)
in a namespace with the same routes, and the traffic test compares
verdicts and counters with iptables-legacy side by side, including an
address added while attached (the watcher recompiles)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bpf_iptables.datapath import addrtypes as at
from bpf_iptables.datapath.compiler import Shape
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.extensions.addrtype import RTN_NAMES
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import bpf_command, entered, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

# the routes of the namespace the program tests run in (dp0 is entered()'s veth)
ROUTES = [
    "addr add 10.0.0.1/24 dev dp0",
    "route add local 10.99.0.0/16 dev lo table main",   # a local route in main: LOCAL
    "route add blackhole 10.98.0.0/16",                 # a lookup error: UNICAST
    "route add anycast 10.96.0.1 dev dp0 table local",
    "route add 172.16.0.0/12 dev dp0",
    # one prefix in both tables: the local table's route, whatever the metrics
    "route add 10.88.0.1/32 dev dp0", "route add local 10.88.0.1 dev dp0 table local",
    "route add local 10.87.0.0/16 dev lo table local metric 5",
    "route add 10.87.0.0/16 dev dp0 metric 1",
    "route add broadcast 10.85.0.1 dev dp0 table main",
    "route add local 10.85.0.1 dev dp0 table local",
]
# address -> its type, as xt_addrtype says (without a device)
EXPECTED = {
    "10.0.0.1": "LOCAL", "127.0.0.1": "LOCAL", "127.200.1.1": "LOCAL",
    "10.0.0.255": "BROADCAST", "127.255.255.255": "BROADCAST", "0.1.2.3": "BROADCAST",
    "255.255.255.255": "BROADCAST", "224.0.0.1": "MULTICAST", "239.255.0.9": "MULTICAST",
    "10.0.0.7": "UNICAST", "8.8.8.8": "UNICAST", "172.20.1.1": "UNICAST",
    "10.99.3.4": "LOCAL", "10.98.3.4": "UNICAST", "10.96.0.1": "ANYCAST", "10.96.0.2": "UNICAST",
    "240.0.0.1": "UNICAST", "10.88.0.1": "LOCAL", "10.87.1.1": "LOCAL", "10.85.0.1": "LOCAL",
}
# as seen from lo (--limit-iface-in/out lo): a route on another device is UNICAST
FROM_LO = {"10.0.0.1": "UNICAST", "127.0.0.1": "LOCAL", "10.99.3.4": "LOCAL",
           "10.0.0.255": "UNICAST", "224.0.0.1": "MULTICAST", "0.1.2.3": "BROADCAST",
           "10.87.1.1": "LOCAL", "10.96.0.1": "UNICAST", "255.255.255.255": "BROADCAST"}
FROM_DP0 = {"10.0.0.1": "LOCAL", "127.0.0.1": "UNICAST", "10.99.3.4": "UNICAST",
            "10.0.0.255": "BROADCAST", "224.0.0.1": "MULTICAST", "0.1.2.3": "BROADCAST",
            "10.87.1.1": "UNICAST", "10.96.0.1": "ANYCAST", "10.88.0.1": "LOCAL",
            "10.98.3.4": "UNICAST", "8.8.8.8": "UNICAST"}


@pytest.fixture(scope="module")
def ns():
    with entered("bpfat") as ns:
        for line in ROUTES:
            subprocess.run(["ip", *line.split()], check=True)
        at.refresh()
        yield ns
    at.forget()


def test_types_follow_the_routes(ns):
    types = at.current()
    for addr, want in EXPECTED.items():
        assert RTN_NAMES[types.type_of(ip_to_int(addr))] == want, addr
    for dev, expected in (("lo", FROM_LO), ("dp0", FROM_DP0)):
        types = at.current_for(dev)
        for addr, want in expected.items():
            assert RTN_NAMES[types.type_of(ip_to_int(addr))] == want, (dev, addr)


def within(addr: int, base: int, length: int) -> bool:
    return length == 0 or addr >> (32 - length) == base >> (32 - length)


def naive_type(routes: list[at.Route], merged: bool, addr: int, dev: int | None) -> int:
    """__inet_dev_addr_type() written out: the special ranges, then the
    most specific route (local table first, lowest priority), an error
    type or another device meaning UNICAST."""
    if addr >> 24 == 0 or addr == at.TOP:
        return at.RTN_BROADCAST
    if addr >> 28 == 0xE:
        return at.RTN_MULTICAST
    hits = [r for r in routes if (merged or r.table == at.RT_TABLE_LOCAL)
            and within(addr, r.addr, r.length)]
    if not hits:
        return at.RTN_UNICAST
    best = min(hits, key=lambda r: (-r.length, r.table != at.RT_TABLE_LOCAL, r.priority))
    if best.type in at.LOOKUP_ERRORS or (dev is not None and best.oif != dev):
        return at.RTN_UNICAST
    return best.type


def test_intervals_agree_with_a_naive_lookup_on_random_tables():
    """The interval walk against the lookup written out, on random nested
    and overlapping routes, at every route's edges and random addresses."""
    import random

    rng = random.Random(5)
    for _ in range(150):
        routes = []
        for _ in range(rng.randint(0, 12)):
            length = rng.choice([0, 1, 4, 8, 12, 16, 24, 30, 31, 32])
            base = rng.choice([0x0A000000, 0x7F000000, 0xE0000000, 0xFFFFFF00, 0, 0xC0A80100])
            addr = (base | rng.getrandbits(32) >> length) & (at.TOP << (32 - length)) & at.TOP
            routes.append(at.Route(rng.choice([at.RT_TABLE_LOCAL, at.RT_TABLE_MAIN]), addr,
                                   length, rng.randrange(12), rng.choice([0, 0, 5]),
                                   rng.choice([1, 2, 3])))
        merged = rng.random() < 0.7
        dev = rng.choice([None, 1, 2])
        types = at.address_types(tuple(routes), merged, dev)
        probes = {0, at.TOP, 0x00FFFFFF, 0x01000000, 0xDFFFFFFF, 0xE0000000, 0xEFFFFFFF,
                  0xF0000000, 0xFFFFFFFE}
        for r in routes:
            end = r.addr + (1 << (32 - r.length)) - 1
            probes |= {r.addr, end, max(r.addr - 1, 0), min(end + 1, at.TOP)}
        probes |= {rng.getrandbits(32) for _ in range(20)}
        for a in probes:
            assert types.type_of(a) == naive_type(routes, merged, a, dev), (routes, hex(a))


def test_prefix_form_covers_exactly_the_set(ns):
    types = at.current()
    for mask in (1 << 2, 1 << 3, 1 << 5, 1 << 1, (1 << 2) | (1 << 3), 0xFFF & ~(1 << 1)):
        positive, holes = at.as_prefixes(types.ranges(mask))
        for addr in EXPECTED:
            a = ip_to_int(addr)
            inside = ((positive is None or within(a, *positive))
                      and not any(within(a, h, n) for h, n in holes))
            assert inside == bool(mask >> types.type_of(a) & 1), (addr, mask)


def test_a_later_compile_of_the_same_rules_sees_new_routes(ns):
    """The compiler caches decompositions by rule (a long-lived command
    server compiles again and again): a route change must not leave the
    old types in them."""
    from bpf_iptables.datapath.compiler import compile_chain

    table = table_from_lines(["-A INPUT -m addrtype --dst-type LOCAL -j DROP"])
    new = ip_to_int("10.55.0.1")

    def local_new() -> bool:
        f = compile_chain(table, "INPUT").entries[0].fields.dst
        return not any(within(new, p.addr, p.length) for p in f.negative) and \
            (f.positive is None or within(new, f.positive.addr, f.positive.length))

    assert not local_new()
    subprocess.run(["ip", "addr", "add", "10.55.0.1/32", "dev", "dp0"], check=True)
    try:
        assert local_new()
    finally:
        subprocess.run(["ip", "addr", "del", "10.55.0.1/32", "dev", "dp0"], check=True)
    assert not local_new()


RULES = [
    "-A INPUT -m addrtype --dst-type LOCAL",
    "-A INPUT -m addrtype ! --dst-type LOCAL,UNICAST",
    "-A INPUT -m addrtype --src-type BROADCAST,MULTICAST -j DROP",
    "-A INPUT -m addrtype --src-type LOCAL --dst-type UNICAST,ANYCAST",
    "-N sub",
    "-A INPUT -p udp -m addrtype --dst-type MULTICAST -j sub",
    "-A sub -m addrtype ! --src-type UNICAST -j DROP",
    "-A sub -d 239.0.0.0/8 -j ACCEPT",
    "-A INPUT -i lo -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT",
    "-A INPUT -m addrtype --dst-type BROADCAST -j DROP",
    "-A INPUT -s 10.0.0.0/8 -m addrtype --src-type LOCAL -j ACCEPT",
]


def test_verdicts_and_counters_match_the_reference(ns):
    """Every pair of the addresses above through BPF_PROG_TEST_RUN, the
    reference told the types by EXPECTED (and FROM_LO for the rule limited
    to lo, which the reference model does not distinguish: the packets run
    on lo, where each address has FROM_LO's type or EXPECTED's)."""
    # one program for both rule sets: the fields either uses
    h = Harness(Shape(nwords=1, steps=40, ncounters=16,
                      fields=frozenset({"src", "dst", "proto", "iif", "dport", "atcheck"})))
    try:
        addrs = list(EXPECTED)
        packets = []
        for s in addrs:
            for d in addrs:
                packets.append(Packet(src=ip_to_int(s), dst=ip_to_int(d), proto=17, sport=5,
                                      dport=9, length=40, in_iface="dp0",
                                      src_type=frozenset({EXPECTED[s]}),
                                      dst_type=frozenset({EXPECTED[d]})))
        # (the rule limited to lo does not match these: they arrive on dp0)
        report = h.check(table_from_lines(RULES), packets)
        assert report.packets == len(addrs) ** 2 and not report.mismatches, report.mismatches[:5]
        # --limit-iface-in on lo: the types as lo sees them
        lo_packets = [Packet(src=ip_to_int("10.0.0.1"), dst=ip_to_int(d), proto=17, sport=5,
                             dport=9, length=40, in_iface="lo",
                             dst_type=frozenset({FROM_LO[d]})) for d in FROM_LO]
        report = h.check(table_from_lines(["-A INPUT -i lo -m addrtype --dst-type LOCAL "
                                           "--limit-iface-in -j ACCEPT", "-P INPUT DROP"]),
                         lo_packets)
        assert report.packets == len(FROM_LO) and not report.mismatches, report.mismatches
        # without the rule's own -i: tested per packet with the device it is on
        limited = table_from_lines([
            "-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT",
            "-A INPUT -m addrtype ! --dst-type UNICAST,BROADCAST --src-type LOCAL "
            "--limit-iface-in",
            "-N c", "-A INPUT -p udp -m addrtype --dst-type ANYCAST,MULTICAST,UNICAST "
            "--limit-iface-in -j c", "-A c -m addrtype ! --dst-type UNICAST --limit-iface-in "
            "-j DROP", "-A c -m addrtype --src-type UNICAST --limit-iface-in -j ACCEPT",
            "-P INPUT DROP"])
        both = [Packet(src=ip_to_int(s), dst=ip_to_int(d), proto=17, sport=5, dport=9,
                       length=40, in_iface=dev, src_type=frozenset({expected[s]}),
                       dst_type=frozenset({expected[d]}))
                for dev, expected in (("lo", FROM_LO), ("dp0", FROM_DP0))
                for s in expected for d in expected]
        report = h.check(limited, both)
        assert report.packets == len(both) and not report.mismatches, report.mismatches[:5]
    finally:
        h.close()


# -- real traffic next to iptables-legacy -----------------------------------------

ON = {"BPF_IPTABLES_DATAPATH": "on"}
SETUP = [
    "ip link set lo up",
    # d1 in a namespace of its own (PEER, no rules): it sends what INPUT
    # sees from a device (the stack's own looped copies of broadcasts
    # and multicasts reach XDP/TC without their Ethernet header and are
    # not classified: see the README), and swallows what OUTPUT sends
    "ip link add d0 type veth peer name d1 netns PEER",
    "ip -n PEER link set d1 up",
    "ip -n PEER addr add 10.0.0.2/24 dev d1",
    "ip -n PEER route add default dev d1",
    "ip link set d0 up",
    "ip addr add 10.0.0.1/24 dev d0",
    "ip route add default dev d0",
    "ip neigh add 10.0.0.7 lladdr 02:00:00:00:00:07 dev d0 nud permanent",
    "ip neigh add 8.8.8.8 lladdr 02:00:00:00:00:08 dev d0 nud permanent",
]
TRAFFIC_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp --dport 10 -m addrtype --dst-type LOCAL
-A INPUT -p udp --dport 10 -m addrtype --dst-type BROADCAST
-A INPUT -p udp --dport 10 -m addrtype --dst-type MULTICAST
-A INPUT -p udp --dport 10 -m addrtype --src-type UNICAST ! --dst-type LOCAL
-A INPUT -i lo -p udp --dport 10 -m addrtype --dst-type LOCAL --limit-iface-in
-A INPUT -i d0 -p udp --dport 10 -m addrtype --dst-type BROADCAST,MULTICAST --limit-iface-in
-A INPUT -p udp --dport 10 -m addrtype --dst-type LOCAL --limit-iface-in
-A INPUT -p udp --dport 10 -d 10.0.0.50 -m addrtype --dst-type LOCAL -j DROP
-A INPUT -p udp --dport 10 -d 10.0.9.1 -m addrtype --dst-type LOCAL -j DROP
-A OUTPUT -p udp --dport 9 -m addrtype --dst-type LOCAL
-A OUTPUT -p udp --dport 9 -m addrtype --dst-type BROADCAST
-A OUTPUT -p udp --dport 9 -m addrtype --dst-type MULTICAST
-A OUTPUT -p udp --dport 9 -m addrtype --dst-type UNICAST
-A OUTPUT -p udp --dport 9 -m addrtype ! --dst-type UNICAST,LOCAL
-A OUTPUT -o d0 -p udp --dport 9 -m addrtype --dst-type BROADCAST --limit-iface-out
-A OUTPUT -p udp --dport 9 -m addrtype --dst-type BROADCAST,LOCAL --limit-iface-out
-A OUTPUT -p udp --dport 9 -d 10.0.0.50 -m addrtype --dst-type UNICAST
COMMIT
"""
# OUTPUT: port 9 from the namespace; INPUT: port 10 over lo and from the peer
DESTINATIONS = ["10.0.0.1", "127.0.0.1", "10.0.0.255", "255.255.255.255", "224.0.0.1",
                "10.0.0.7", "8.8.8.8"]
LOCAL_IN = ["10.0.0.1", "127.0.0.1"]
PEER_IN = ["10.0.0.1", "10.0.0.255", "255.255.255.255", "224.0.0.1"]
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for dst in sys.argv[2:]:
    s.sendto(b"addrtype", (dst, int(sys.argv[1])))
"""


def counts(ns, ours: bool, chain: str) -> list[tuple[int, int]]:
    argv = (bpf_command("iptables", "-L", chain, "-v", "-x", "-n") if ours
            else ["iptables-legacy", "-L", chain, "-v", "-x", "-n"])
    out = ns.run(argv, env=ON).stdout
    return [(int(line.split()[0]), int(line.split()[1]))
            for line in out.splitlines()[2:] if line.strip()]


def test_real_traffic_matches_iptables_legacy_and_follows_new_addresses():
    ensure_bpffs()
    with namespace("atr") as real, namespace("ato") as ours, \
            namespace("atp") as peer_r, namespace("atp") as peer_o:
        try:
            for ns, peer in ((real, peer_r), (ours, peer_o)):
                for line in SETUP:
                    argv = line.replace("PEER", peer.name).split()
                    assert ns.run(argv).returncode == 0, line
            assert real.run(["iptables-legacy-restore"], input=TRAFFIC_RULES).returncode == 0
            r = ours.run(bpf_command("iptables-restore"), input=TRAFFIC_RULES, env=ON)
            assert r.returncode == 0, r.stderr
            for ns, peer in ((real, peer_r), (ours, peer_o)):
                ns.run([sys.executable, "-c", SENDER, "9", *DESTINATIONS])
                ns.run([sys.executable, "-c", SENDER, "10", *LOCAL_IN])
                peer.run([sys.executable, "-c", SENDER, "10", *PEER_IN])
            for chain in ("INPUT", "OUTPUT"):
                want = counts(real, False, chain)
                assert counts(ours, True, chain) == want, chain
            # every kind of destination was counted somewhere; on lo,
            # 10.0.0.1 (a route on d0) is UNICAST for --limit-iface-in/out
            assert [c[0] for c in counts(real, False, "OUTPUT")] == [2, 2, 1, 2, 3, 2, 3, 0]
            assert [c[0] for c in counts(real, False, "INPUT")] == [3, 2, 1, 3, 1, 3, 2, 0, 0]

            # an address added while attached, then a local route: LOCAL
            # from then on (the watcher recompiles on address and on route
            # events; netfilter looks the type up per packet)
            for change, dst, rule in ((["addr", "add", "10.0.0.50/24", "dev", "d0"], "10.0.0.50", 7),
                                      (["route", "add", "local", "10.0.9.0/24", "dev", "lo",
                                        "table", "main"], "10.0.9.1", 8)):
                for ns in (real, ours):
                    assert ns.run(["ip", *change]).returncode == 0
                began = time.monotonic()
                while True:
                    peer_o.run([sys.executable, "-c", SENDER, "10", dst])
                    if counts(ours, True, "INPUT")[rule][0]:
                        break
                    assert time.monotonic() - began < 10, f"{dst} never became LOCAL"
                    time.sleep(0.2)
                print(f"{' '.join(change)}: LOCAL after {time.monotonic() - began:.2f} s")
                peer_r.run([sys.executable, "-c", SENDER, "10", dst])
                # the last packet to it was LOCAL and dropped at INPUT, as with iptables
                assert counts(real, False, "INPUT")[rule][0] == 1
                assert counts(ours, True, "INPUT")[rule][0] == 1
        finally:
            ours.run(datapath_command("detach"))


def test_limit_iface_out_in_forward_without_its_own_o_is_refused():
    """FORWARD's output device is the route's, not the packet's."""
    ensure_bpffs()
    with namespace("atx") as ns:
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
            r = ns.run(bpf_command("iptables", "-A", "FORWARD", "-m", "addrtype", "--dst-type",
                                   "LOCAL", "--limit-iface-out", "-j", "DROP"), env=ON)
            assert r.returncode == 2 and "--limit-iface-out" in r.stderr, r
            assert ns.run(bpf_command("iptables", "-S", "FORWARD")).stdout == "-P FORWARD ACCEPT\n"
        finally:
            ns.run(datapath_command("detach"))
