"""-m set in the eBPF data path (bpf/lib/set.h, datapath/sets.py) against
the reference semantics (ipset/match.py), through BPF_PROG_TEST_RUN.

Every set type, source and destination directions, inversion, a set
match on a jump rule (its check guards every rule of the called chain),
fewer directions than dimensions, an expired member, hash:net's most
specific prefix, ``nomatch`` and ``--return-nomatch``, hash:ip,port's
protocols (TCP, UDP, SCTP, UDPLITE, ICMP type/code, port-less GRE,
fragments), bitmap:port's TCP/UDP-only rule. The sets are the program's private maps here, written
by the same code that writes a namespace's pinned ones (ipset/maps.py);
changing them changes verdicts without touching the program or its
rules. What cannot be exact is refused (NotSupported)."""
from __future__ import annotations

import itertools
import time

import pytest

from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.ipset.maps import SetMaps
from bpf_iptables.ipset.model import IpSet, Member
from bpf_iptables.netaddr import ip_to_int as ip
from bpf_iptables.reference.packet import Packet
from bpf_iptables.reference.sets import using
from tests.support.netns import entered


def make_sets() -> dict[str, IpSet]:
    past = time.monotonic_ns() - 1
    later = time.monotonic_ns() + 3600 * 10**9
    return {
        "ban": IpSet("ban", "hash:ip", 1, timeout=600, members={
            (ip("10.0.0.1"),): Member(), (ip("10.0.0.2"),): Member(past),
            (ip("10.0.0.3"),): Member(later), (ip("172.16.0.1"),): Member()}),
        "nets": IpSet("nets", "hash:net", 2, members={
            (ip("10.0.0.0"), 8): Member(), (ip("10.1.0.0"), 16): Member(nomatch=True),
            (ip("10.1.2.0"), 24): Member(), (ip("192.168.0.8"), 29): Member(),
            # expired, more specific: passed over for the /24 (and the /16 under it)
            (ip("10.1.2.0"), 28): Member(past), (ip("10.1.2.0"), 26): Member(nomatch=True,
                                                                              expires=past)}),
        "svc": IpSet("svc", "hash:ip,port", 3, members={
            (ip("192.168.0.9"), 6, 80): Member(), (ip("192.168.0.9"), 17, 53): Member(),
            (ip("192.168.0.9"), 1, 8 << 8): Member(), (ip("192.168.0.9"), 47, 0): Member(),
            (ip("192.168.0.9"), 132, 0): Member(), (ip("192.168.0.9"), 136, 0): Member(),
            (ip("10.0.0.1"), 6, 1234): Member()}),
        "ports": IpSet("ports", "bitmap:port", 0, first_port=0, last_port=2000,
                       members={(22,): Member(), (53,): Member(), (1234,): Member()}),
    }


RULES = [
    "-N GUARDED", "-A GUARDED -p tcp -j DROP", "-A GUARDED -p udp --dport 53 -j ACCEPT",
    "-A INPUT -m set --match-set ban src -j DROP",
    "-A INPUT -m set --match-set nets dst -m set ! --match-set nets src -j DROP",
    "-A INPUT -m set --match-set svc dst,dst -j ACCEPT",
    "-A INPUT -m set --match-set svc src,src -j DROP",
    "-A INPUT -m set --match-set svc dst -j DROP",              # one direction: never
    "-A INPUT -m set ! --match-set svc dst -j LOG",             # ... so inverted: always
    "-A INPUT -p udp -m set --match-set ports dst -j DROP",
    "-A INPUT -m set --match-set ports src,dst -j GUARDED",
    "-A INPUT -m set --match-set nets src --return-nomatch",
    "-A INPUT -m set ! --match-set ban dst -m set --match-set nets src -j ACCEPT",
    "-P INPUT DROP",
]

ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.1.5.5", "10.1.2.7", "192.168.0.9",
         "192.168.0.14", "172.16.0.1"]
PROTOS = [(6, 80, 0, 0), (6, 1234, 0, 0), (17, 53, 0, 0), (17, 22, 0, 0), (1, 0, 8, 0),
          (1, 0, 0, 0), (47, 0, 0, 0), (132, 0, 0, 0), (136, 0, 0, 0), (6, 80, 0, 10),
          (47, 0, 0, 10)]


def packets() -> list[Packet]:
    out = []
    for (src, dst), (proto, port, itype, frag) in itertools.product(
            itertools.product(ADDRS, ADDRS[3:]), PROTOS):
        out.append(Packet(in_iface="lo", src=ip(src), dst=ip(dst), proto=proto,
                          sport=port, dport=port, icmp_type=itype, frag_offset=frag,
                          length=60))
    return out


@pytest.fixture(scope="module")
def harness():
    with entered("bpfsetd"):
        h = Harness()
        yield h
        h.close()


def set_maps(prog) -> SetMaps:
    return SetMaps({k: prog.maps[f"set_{k}"] for k in ("ip", "net", "ipport", "port")},
                   owned=False)


def test_every_set_type_against_the_reference(harness):
    sets = make_sets()
    with using(sets):
        table = table_from_lines(RULES)
        prog, c = harness.load(table)
        assert prog.shape.nsets == len(c.set_records) + 1 == 11   # distinct (set, dirs, flag)
        set_maps(prog).write_all(list(sets.values()))
        pkts = packets()
        report = harness.check(table, pkts)
    assert report.packets == len(pkts) > 400
    assert report.mismatches == []
    counts = [r.counters.packets for r in table.chains["INPUT"].rules]
    assert all(counts[i] for i in (0, 1, 2, 3, 5, 6, 7)), counts   # the rules are exercised
    assert counts[4] == 0 and counts[5] > 0 and counts[8] > 0   # 8: --return-nomatch


def test_changes_reach_the_program_without_a_reload(harness):
    sets = {"ban": IpSet("ban", "hash:ip", 7)}
    with using(sets):
        table = table_from_lines(["-A INPUT -m set --match-set ban src -j DROP"])
        own = Harness()   # a program of this rule set's own shape (no other fields)
        try:
            prog, _ = own.load(table)
            check_in_place(prog, sets)
        finally:
            own.close()


def check_in_place(prog, sets: dict[str, IpSet]) -> None:
    maps = set_maps(prog)
    maps.write_all(list(sets.values()))
    pkt = Packet(in_iface="lo", src=ip("10.9.0.5"), dst=ip("10.9.0.1"), proto=17, sport=1,
                 dport=2, length=40)
    f = frame(pkt)
    assert run_frame(prog.fd, f).name == "PASS"
    s = sets["ban"]
    s.members[(ip("10.9.0.5"),)] = Member()
    maps.put(s, [(ip("10.9.0.5"),)])
    assert run_frame(prog.fd, f).name == "DROP"
    s.members[(ip("10.9.0.5"),)] = Member(time.monotonic_ns() + 200_000_000)   # 0.2 s left
    maps.put(s, [(ip("10.9.0.5"),)])
    assert run_frame(prog.fd, f).name == "DROP"
    time.sleep(0.25)
    assert run_frame(prog.fd, f).name == "PASS"   # expired in the data path itself
    maps.remove(s, [(ip("10.9.0.5"),)])
    assert run_frame(prog.fd, f).name == "PASS"


@pytest.mark.parametrize("lines, sets, why", [
    (["-A INPUT -m set --match-set ban src -j DROP"], {}, "not a bpf-iptables-set set"),
    (["-A INPUT -m set --match-set p dst -j DROP"],
     {"p": IpSet("p", "bitmap:port", 0, timeout=5, last_port=9)}, "bitmap:port set with timeout"),
    ([f"-A INPUT -m set --match-set a{i} src -j DROP" for i in range(64)],
     {f"a{i}": IpSet(f"a{i}", "hash:ip", i + 1) for i in range(64)},
     "more than 63 distinct set matches"),
])
def test_what_cannot_be_exact_is_refused(lines, sets, why):
    # parsed while the set exists (iptables would find a kernel ipset)
    with using({"ban": IpSet("ban", "hash:ip", 1), **sets}):
        table = table_from_lines(lines)
    with using(sets), pytest.raises(NotSupported, match=why):
        compile_chain(table, "INPUT", {"lo": 1})


def test_sctp_and_udplite_ports_read_by_the_data_path(harness):
    """parse.h reads no SCTP/UDPLITE ports; set.h reads them itself (the
    12 or 8 bytes ipset needs within the IP total length)."""
    sets = {"svc": IpSet("svc", "hash:ip,port", 4, members={
        (ip("10.0.0.9"), 132, 9): Member(), (ip("10.0.0.9"), 136, 7): Member()})}
    with using(sets):
        table = table_from_lines(["-A INPUT -m set --match-set svc dst,dst -j DROP"])
        own = Harness()   # a program of this rule set's own shape (no other fields)
        try:
            prog, _ = own.load(table)
            set_maps(prog).write_all(list(sets.values()))
            check_ports(prog)
        finally:
            own.close()


def check_ports(prog) -> None:
    cases = [(132, 9, 60, "DROP"), (132, 10, 60, "PASS"), (136, 7, 60, "DROP"),
             (136, 9, 60, "PASS"), (132, 9, 31, "PASS"),   # 11 bytes of SCTP: too short
             (136, 7, 28, "DROP")]                         # 8 bytes of UDPLITE: enough
    for proto, dport, length, want in cases:
        pkt = Packet(in_iface="lo", src=ip("10.0.0.1"), dst=ip("10.0.0.9"), proto=proto,
                     sport=5, dport=dport, length=length)
        f = bytearray(frame(pkt))
        f[34:38] = (5).to_bytes(2, "big") + dport.to_bytes(2, "big")   # after a 20-byte IP header
        assert run_frame(prog.fd, bytes(f)).name == want, (proto, dport, length)


def test_a_set_match_before_limit_takes_no_token_when_it_fails(harness):
    """The set check runs with the residual checks, before the rule's limit
    (its last match) takes a token: packets not in the set leave the bucket
    alone, as in netfilter."""
    sets = {"ban": IpSet("ban", "hash:ip", 9, members={(ip("10.0.0.1"),): Member()})}
    with using(sets):
        table = table_from_lines(["-A INPUT -m set --match-set ban src -m limit --limit 1/h "
                                  "--limit-burst 2 -j DROP"])
        own = Harness()
        try:
            prog, _ = own.load(table)
            set_maps(prog).write_all(list(sets.values()))
            other, banned = (frame(Packet(in_iface="lo", src=ip(a), dst=ip("10.0.0.9"), proto=17,
                                          sport=1, dport=2, length=40))
                             for a in ("10.0.0.2", "10.0.0.1"))
            assert [run_frame(prog.fd, other).name for _ in range(5)] == ["PASS"] * 5
            assert [run_frame(prog.fd, banned).name for _ in range(3)] == ["DROP", "DROP", "PASS"]
        finally:
            own.close()
