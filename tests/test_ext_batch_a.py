"""Extensions batch A against real iptables-legacy, and their reference semantics.

udp, icmp, multiport, iprange, mac, comment, mark, length, ttl and tcp.
For every line of iptables' own .t file of each extension (read from the
shared folder at test time) and for extra edge cases, the same command runs
with iptables-legacy and with bpf-iptables in two fresh namespaces; stdout,
stderr and exit status must be identical for -A, then -S, -L, -L -n -v -x
and iptables-save, then -C and -D of every accepted rule.
The matches() tests run parsed rules over crafted packets."""
from __future__ import annotations

import re
import shlex
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace

import pytest

from bpf_iptables.cmdline.parse import CommandParser
from bpf_iptables.model import Rule, Table, Target
from bpf_iptables.reference.evaluate import HotDrop, evaluate, rule_matches
from bpf_iptables.reference.packet import ICMP, Packet
from tests.support.pair import Pair, pair
from tests.support.tfiles import read_t_file as read_rule_lines
# the three-namespace topology of the netfilter comparison (topo is a fixture)
from tests.test_reference_vs_netfilter import (  # noqa: F401
    C_IP, MAC, TRAFFIC, Spec, Topology, build_model, inet_checksum, kernel_counters, load_kernel,
    model_counters, topo)

T_FILES = {
    "udp": "libxt_udp.t", "icmp": "libipt_icmp.t", "multiport": "libxt_multiport.t",
    "iprange": "libxt_iprange.t", "mac": "libxt_mac.t", "comment": "libxt_comment.t",
    "mark": "libxt_mark.t", "length": "libxt_length.t", "ttl": "libipt_ttl.t",
    "tcp": "libxt_tcp.t",
}


@dataclass(frozen=True)
class TLine:
    chain: str
    rule: str
    save: str        # expected canonical text ("" for FAIL lines)
    ok: bool         # OK/NOMATCH: accepted; FAIL: refused


def read_t_file(name: str) -> list[TLine]:
    """The file's rule lines (shared reader, legacy expectations), one per chain."""
    return [TLine(chain, line.rule, line.save, line.ok)
            for line in read_rule_lines(name) for chain in line.chains]


# Extra cases per extension: whole command lines, run in order in the pair.
EXTRA: dict[str, list[str]] = {
    "udp": [
        "-A INPUT -p udp -m udp --sport 65536",
        "-A INPUT -p udp --sport 5:3",
        "-A INPUT -p udp --sport 0:65535",
        "-A INPUT -p udp ! --sport 0:65535",
        "-A INPUT -p udp --sport domain --dport 10:ntp",
        "-A INPUT -p udp --sport 010 --dport 0x10",
        "-A INPUT -p udp --sport 1 --sport 2",
        "-A INPUT -p udp --sport 1 --source-port 2",
        "-A INPUT -p udp --sport 1:2:3",
        "-A INPUT -p udp --sport foo",
        "-A INPUT -p udp --dport ''",
        "-A INPUT -p udp --dport :",
        "-A INPUT -p udp --dp 7 --so 8",
        "-A INPUT -p udp --d 7",
        "-A INPUT ! -p udp -m udp",
        "-A INPUT -p udplite -m udp",
        "-A INPUT -p tcp -m udp --dport 1",
        "-A INPUT -p udp -m udp ! --dport 53 -j DROP",
        "-A INPUT -p udp -m udp --dport 53 -m udp --sport 54",
        "-A INPUT -v -p udp --dport 7:9 --sport 1",
        "-I INPUT -p udp --dport 33",
        "-A INPUT -p udp --dport",
        "-A INPUT -p 17 --dport 9",
        "-A INPUT -p udp --sport ' 5'",
        "-A INPUT -p udp --sport '5 '",
        "-A INPUT -p udp --sport 4294967297",
        "-A INPUT -p udp --sport 99999999999999999999",
        "-A INPUT -p udp --sport ftp-data:ssh",
    ],
    "icmp": [
        "-A INPUT -p icmp -m icmp",
        "-A INPUT -p icmp --icmp-type echo",
        "-A INPUT -p icmp --icmp-type a",
        "-A INPUT -p icmp --icmp-type ''",
        "-A INPUT -p icmp --icmp-type 3/1:2",
        "-A INPUT -p icmp --icmp-type 3/",
        "-A INPUT -p icmp --icmp-type 3x",
        "-A INPUT -p icmp --icmp-type 3/4x",
        "-A INPUT -p icmp --icmp-type 1:2",
        "-A INPUT -p icmp --icmp-type 3:4/5",
        "-A INPUT -p icmp --icmp-type 3:",
        "-A INPUT -p icmp --icmp-type 256",
        "-A INPUT -p icmp --icmp-type foo",
        "-A INPUT -p icmp ! --icmp-type ECHO-REQ",
        "-A INPUT -p icmp --icmp-type 255",
        "-A INPUT -p icmp --icmp-type 3/3",
        "-A INPUT -p icmp --icmp-type 3/255",
        "-A INPUT -p icmp --icmp-type 3/0:255",
        "-A INPUT -p icmp --icmp-type 3/5:4",
        "-A INPUT -p icmp --icmp-type 7",
        "-A INPUT -p icmp --icmp-type 0x8",
        "-A INPUT -p icmp --icmp-type 8 --icmp-type 0",
        "-A INPUT -p icmp --icmp-type pong",
        "-A INPUT -p icmp --icmp-type ttl-exceeded",
        "-A INPUT -p icmp --icmp-type ttl-zero-during-reassembly",
        "-A INPUT -p icmp --icmp-type tos-host-redirect",
        "-A INPUT -p icmp --icmp-type host-un",
        "-A INPUT -p icmp ! --icmp-type any",
        "-A INPUT -p icmp --icmp-type 3/1:1",
        "-A INPUT -p icmp --icmp-type 3:3",
        "-A INPUT -m icmp --icmp-type 3",
        "-A INPUT -p icmp --icmp-type 12/1 -j DROP",
        "-A INPUT -p 1 --icmp-type 17",
        "-A INPUT -v -p icmp --icmp-type address-mask-reply",
        "-A INPUT -p icmp --icmp-type ' 8'",
        "-A INPUT -p icmp --icmp-type '8/ 0'",
        "-A INPUT -p icmp --icmp-type 8/0:",
        "-A INPUT -p icmp --icmp-type 8:8/0:3",
        "-A INPUT -p icmp --icmp-type -8",
        "-A INPUT -p icmp --icmp-type 010",
        "-A INPUT -p icmp --icmp-type any/3",
        "-A INPUT -p icmp --icmp-type e",
        "-A INPUT -p icmp --icmp-type de",
        "-A INPUT -p icmp --icmp-type TOS-h",
    ],
    "multiport": [
        "-A INPUT -m multiport --dports 1",
        "-A INPUT ! -p tcp -m multiport --dports 1",
        "-A INPUT -p icmp -m multiport --dports 1",
        "-A INPUT -p tcp -m multiport",
        "-A INPUT -p tcp -m multiport --dports 1 --sports 2",
        "-A INPUT -p tcp -m multiport --dports 1 --destination-ports 2",
        "-A INPUT -p tcp -m multiport --ports 1 --dports 2 --sports 3",
        "-A INPUT -p tcp -m multiport --ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
        "-A INPUT -p tcp -m multiport --ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14:15",
        "-A INPUT -p tcp -m multiport --ports 1,2,3,4,5,6,7,8,9,10,11,12,13:14,15",
        "-A INPUT -p tcp -m multiport --ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15:16",
        "-A INPUT -p tcp -m multiport --ports 80:80",
        "-A INPUT -p tcp -m multiport --ports 80:70",
        "-A INPUT -p tcp -m multiport --ports 1,,2",
        "-A INPUT -p tcp -m multiport --ports 1:2:3",
        "-A INPUT -p tcp -m multiport --ports :3",
        "-A INPUT -p tcp -m multiport --ports 1,",
        "-A INPUT -p tcp -m multiport ! --dports ssh,http,1000:2000",
        "-A INPUT -p udp -m multiport --sports domain,ntp",
        "-A INPUT -p udp -m multiport --sports ssh",
        "-A INPUT -p sctp -m multiport --sports 22,80",
        "-A INPUT -p dccp -m multiport ! --ports 22,80",
        "-A INPUT -p udplite -m multiport --source-ports 22,80",
        "-A INPUT -p tcp -m multiport --ports 0x10,010",
        "-A INPUT -m multiport --dports 1 -p tcp",
        "-A INPUT -p tcp -m multiport --dports 22 -m multiport --sports 1024:65535 -j ACCEPT",
        "-A INPUT -v -p tcp -m multiport --dports 22,25:26",
        "-A INPUT -p all -m multiport --dports 1",
        "-A INPUT -p 6 -m multiport --dports ssh,0x10",
        "-A INPUT -p udp -m multiport --dports ' 53'",
        "-A INPUT -p udp -m multiport --dports '53 '",
        "-A INPUT -p udp -m multiport --dports 65536",
        "-A INPUT -p tcp -m multiport --dports 0:1,1:65535",
    ],
    "iprange": [
        "-A INPUT -m iprange --src-range 1.1.1.10-1.1.1.1",
        "-A INPUT -m iprange --src-range 1.1.1.1",
        "-A INPUT -m iprange --src-range 1.2-1.3 --dst-range 10.0.0.0-10.255.255.255",
        "-A INPUT -m iprange ! --src-range 1.2.3.4-1.2.3.400",
        "-A INPUT -m iprange --src-range 1.2.3.4-",
        "-A INPUT -m iprange --src-range -1.2.3.4",
        "-A INPUT -m iprange --src-range 1.1.1.1-1.1.1.2-1.1.1.3",
        "-A INPUT -m iprange --src-range 1.1.1.1 --src-range 1.1.1.2",
        "-A INPUT -m iprange --src-range foo.com",
        "-A INPUT -m iprange --dst-range 1.1.1.1/24",
        "-A INPUT -m iprange --src-range 0x1.2.3.4",
        "-A INPUT -m iprange --src-range 1.2.3.04",
        "-A INPUT -m iprange ! --dst-range 1.2.3.4-1.2.3.5 ! --src-range 5.5.5.5",
        "-A INPUT -m iprange --dst-range 0.0.0.0-255.255.255.255 -j DROP",
        "-A INPUT -v -m iprange --src-range 10.0.0.1-10.0.0.9",
        "-A INPUT -m iprange --src-range 001.002.003.004-1.1.1.1",
        "-A INPUT -m iprange --src-range 1.1.1.1-001.002.003.00400000",
        "-A INPUT -m iprange --src-range 1.2.3.4.5",
        "-A INPUT -m iprange --src-range 1..3.4",
        "-A INPUT -m iprange --src-range ''",
        "-A INPUT -m iprange --src-range 08.1.1.1",
    ],
    "mac": [
        "-A INPUT -m mac --mac-source 42:1:2:3:4:AB",
        "-A INPUT -m mac ! --mac-source 0:0:0:0:0:0",
        "-A INPUT -m mac --mac-source 42:01:02:03:04:005",
        "-A INPUT -m mac --mac-source 42-01-02-03-04-05",
        "-A INPUT -m mac --mac-source 42:01:02:03:04:",
        "-A INPUT -m mac --mac-source :01:02:03:04:05",
        "-A INPUT -m mac --mac-source 0x4:01:02:03:04:05",
        "-A INPUT -m mac --mac-source ' 4:01:02:03:04:05'",
        "-A INPUT -m mac --mac-source +4:01:02:03:04:05",
        "-A INPUT -m mac --mac-source -4:01:02:03:04:05",
        "-A INPUT -m mac --mac-source 1:2:3:4:5:6 --mac-source 1:2:3:4:5:6",
        "-A OUTPUT -m mac --mac-source 1:2:3:4:5:6",
        "-N c",
        "-A c -m mac --mac-source 1:2:3:4:5:6",
        "-A OUTPUT -j c",
        "-A INPUT -j c",
        "-A FORWARD -g c",
        "-A FORWARD -m mac --mac-source 1:2:3:4:5:7 -j DROP",
        "-A INPUT -v -m mac --mac-source 1:2:3:4:5:8",
        "-A INPUT -m mac --mac-source 'aa:bb:cc:dd:ee:ff '",
        "-A INPUT -m mac --mac-source AA:BB:CC:DD:EE:FF",
    ],
    "comment": [
        "-A INPUT -m comment --comment ''",
        "-A INPUT -m comment --comment 'a b\"c\\\\d'\"'\"",
        "-A INPUT -m comment --comment x --comment y",
        "-A INPUT -m comment ! --comment x",
        "-A INPUT -m comment --comment " + "y" * 256,
        "-A INPUT -m comment --comment " + "z" * 300,
        # cut at 255 bytes inside a UTF-8 character; a byte that is not UTF-8
        "-A INPUT -m comment --comment " + "x" * 254 + "é",
        "-A INPUT -m comment --comment a\udcffb",
        "-A INPUT -m comment --comment 'héllo wörld'",
        "-A INPUT -m comment --comment '*/ x'",
        "-A INPUT -m comment --comment a -m comment --comment b",
        "-A INPUT -m comment --comment a_b-C9",
        "-A INPUT -m comment --comment 'tab\there'",
        "-A INPUT -p tcp --dport 22 -m comment --comment ssh -j ACCEPT",
        "-A INPUT -v -m comment --comment 'shown by -v'",
        "-A INPUT -m comment --comment '`x`'",
        "-A INPUT -m comment --comment a=b",
    ],
    "mark": [
        "-A INPUT -m mark --mark 1/",
        "-A INPUT -m mark --mark /1",
        "-A INPUT -m mark --mark 1x",
        "-A INPUT -m mark --mark 1/2x",
        "-A INPUT -m mark --mark 0x",
        "-A INPUT -m mark --mark 010/0xffffffff",
        "-A INPUT -m mark ! --mark 0xff/0xf",
        "-A INPUT -m mark --mark 1 --mark 2",
        "-A INPUT -m mark --mark 1/4294967296",
        "-A INPUT -m mark --mark ' 5'",
        "-A INPUT -m mark --mark 5/-1",
        "-A INPUT -m mark --mark ''",
        "-A INPUT -m mark --mark 0/0",
        "-A INPUT -m mark --mark 0xABCDEF",
        "-A INPUT -v -m mark --mark 7/0x7",
        "-A INPUT -m mark --mark 0x100000000",
        "-A INPUT -m mark --mark 0xFFFFFFFF/0XF",
        "-A INPUT -m mark --mark 1/0",
    ],
    "length": [
        "-A INPUT -m length --length 5:3",
        "-A INPUT -m length --length 1:2:3",
        "-A INPUT -m length --length 1x",
        "-A INPUT -m length --length ''",
        "-A INPUT -m length --length :",
        "-A INPUT -m length --length 0x10:010",
        "-A INPUT -m length --length 5 --length 6",
        "-A INPUT -m length --length 65536",
        "-A INPUT -m length --length 4:4",
        "-A INPUT -m length ! --length 1500:",
        "-A INPUT -v -m length --length 40:60",
        "-A INPUT -m length --length ' 5'",
        "-A INPUT -m length --length '5: 6'",
        "-A INPUT -m length --length +5",
    ],
    "ttl": [
        "-A INPUT -m ttl --ttl 5",
        "-A INPUT -m ttl ! --ttl 5",
        "-A INPUT -m ttl --ttl-lt 5 --ttl-gt 3",
        "-A INPUT -m ttl --ttl-gt 5 --ttl-eq 3",
        "-A INPUT -m ttl --ttl-eq 3 --ttl-lt 5",
        "-A INPUT -m ttl --ttl-lt 1 --ttl-gt 2 --ttl-eq 3",
        "-A INPUT -m ttl ! --ttl-lt 5",
        "-A INPUT -m ttl ! --ttl-gt 5",
        "-A INPUT -m ttl --ttl-lt 256",
        "-A INPUT -m ttl --ttl-lt 0x10",
        "-A INPUT -m ttl --ttl-",
        "-A INPUT -m ttl --ttl-e 9",
        "-A INPUT -m ttl --ttl-eq 1 --ttl 2",
        "-A INPUT -m ttl --ttl-lt 0",
        "-A INPUT -m ttl --ttl-gt 255",
        "-A INPUT -v -m ttl --ttl-gt 64",
        "-A INPUT -m ttl --ttl-eq ' 5'",
        "-A INPUT -m ttl --ttl-eq '5 '",
        "-A INPUT -m ttl --ttl-eq ''",
    ],
    "tcp": [
        "-A INPUT -p tcp --tcp-flags SYN",
        "-A INPUT -p tcp --tcp-flags SYN -j DROP",
        "-A INPUT -p tcp --tcp-flags syn,ack,fin,fin ALL",
        "-A INPUT -p tcp --tcp-flags ALL NONE",
        "-A INPUT -p tcp --tcp-flags NONE NONE",
        "-A INPUT -p tcp ! --tcp-flags ,SYN,, ,",
        "-A INPUT -p tcp --tcp-flags FOO SYN",
        "-A INPUT -p tcp --syn --tcp-flags SYN SYN",
        "-A INPUT -p tcp ! --syn",
        "-A INPUT -p tcp --tcp-option 0",
        "-A INPUT -p tcp --tcp-option 256",
        "-A INPUT -p tcp ! --tcp-option 8",
        "-A INPUT -p tcp --tcp-option 2 --tcp-option 3",
        "-A INPUT -p tcp --sport 5:3",
        "-A INPUT -p tcp --sport 0:65535",
        "-A INPUT -p tcp ! --sport 0:65535",
        "-A INPUT -p tcp --sport ssh --dport http:https",
        "-A INPUT -p tcp --sport 0x16 --dport 010",
        "-A INPUT -p tcp --sport :",
        "-A INPUT -p tcp --sport 1 --source-port 2",
        "-A INPUT -p tcp --dport 1 --dport 2",
        "-A INPUT -p tcp --sport nosuchservice",
        "-A INPUT -p tcp --dp 8 --sp 9",
        "-A INPUT ! -p tcp -m tcp",
        "-A INPUT -p udp -m tcp",
        "-A INPUT -p tcp --dport 22 --tcp-flags SYN,ACK SYN --tcp-option 2 -j ACCEPT",
        "-A INPUT -v -p tcp ! --dport 22 --syn",
    ],
}


@dataclass
class Report:
    """Mismatches collected over a run, so one failure shows them all."""

    problems: list[str]

    def check(self, p: Pair, *args: str) -> int:
        """Compare one command; return the real tool's exit status."""
        real, ours = p.both(*args)
        if real != ours:
            self.problems.append(
                f"$ iptables {' '.join(shlex.quote(a) for a in args)}\n"
                f"=== iptables-legacy\n{real}\n=== bpf-iptables\n{ours}")
        return real.returncode


def listings(p: Pair, report: Report) -> str:
    """Compare every listing form; return the real -S text."""
    real_s, ours_s = p.both("-S")
    if real_s != ours_s:
        report.problems.append(f"$ iptables -S\n=== legacy\n{real_s}\n=== ours\n{ours_s}")
    report.check(p, "-L")
    report.check(p, "-L", "-n", "-v", "-x")
    report.check(p, "-L", "-v")
    report.check(p, "-S", "INPUT", "1")
    real, ours = p.both(tool="iptables-save")
    if real != ours:
        report.problems.append(f"$ iptables-save\n=== legacy\n{real}\n=== ours\n{ours}")
    return real_s.stdout


def run_commands(p: Pair, report: Report, commands: list[list[str]]) -> list[list[str]]:
    """Run each command in both; return the -A commands that were accepted."""
    accepted = []
    for argv in commands:
        rc = report.check(p, *argv)
        if rc == 0 and argv[0] == "-A":
            accepted.append(argv)
    return accepted


def check_and_delete(p: Pair, report: Report, accepted: list[list[str]]) -> None:
    for argv in accepted:
        report.check(p, "-C", *argv[1:])
    for argv in reversed(accepted):
        report.check(p, "-D", *argv[1:])


@pytest.mark.parametrize("ext", sorted(T_FILES))
def test_t_file_and_extras_against_iptables(ext: str) -> None:
    lines = read_t_file(T_FILES[ext])
    assert lines, f"{T_FILES[ext]} has no test lines"
    report = Report([])
    with pair(fast=True) as p:
        commands = [["-A", line.chain, *shlex.split(line.rule)] for line in lines]
        accepted = run_commands(p, report, commands)
        # the oracle must agree with the .t file, so the comparison means something
        accepted_rules = {(a[1], " ".join(a[2:])) for a in accepted}
        for line in lines:
            key = (line.chain, " ".join(shlex.split(line.rule)))
            assert (key in accepted_rules) == line.ok, f"iptables-legacy disagrees with {line}"
        saved = listings(p, report)
        for line in lines:
            if line.ok:
                assert f"-A {line.chain} {line.save}\n" in saved, line
        check_and_delete(p, report, accepted)
        report.check(p, "-S")

        p.reset()
        extra = run_commands(p, report, [shlex.split(c) for c in EXTRA[ext]])
        listings(p, report)
        check_and_delete(p, report, extra)
        report.check(p, "-S")
    assert not report.problems, "\n\n".join(report.problems)


# --- reference semantics -------------------------------------------------------

def rule_of(spec: str) -> Rule:
    """Parse "-A INPUT ..." with our parser into a model rule."""
    parsed = CommandParser(["iptables", *shlex.split(spec)]).parse()
    (rule,) = parsed.rules(Target(parsed.jumpto))
    return rule


def hits(spec: str, **packet) -> bool:
    return rule_matches(rule_of(spec), Packet(**packet))


UDP = dict(proto=17)
TCP = dict(proto=6)


def test_udp_matches() -> None:
    assert hits("-A INPUT -p udp --dport 53", **UDP, dport=53)
    assert not hits("-A INPUT -p udp --dport 53", **UDP, dport=54)
    assert hits("-A INPUT -p udp --sport 1000:2000", **UDP, sport=1000)
    assert hits("-A INPUT -p udp --sport 1000:2000", **UDP, sport=2000)
    assert not hits("-A INPUT -p udp --sport 1000:2000", **UDP, sport=2001)
    assert hits("-A INPUT -p udp ! --sport 1000:2000", **UDP, sport=999)
    assert not hits("-A INPUT -p udp ! --sport 1000:2000", **UDP, sport=1500)
    assert not hits("-A INPUT -p udp --sport 5:3", **UDP, sport=4)
    assert hits("-A INPUT -p udp --sport 65536", **UDP, sport=0)
    # non-first fragments have no ports: never match, even when inverted
    assert not hits("-A INPUT -p udp ! --dport 53", **UDP, dport=1, frag_offset=5)
    assert not hits("-A INPUT -p udp -m udp", **UDP, frag_offset=1)
    assert hits("-A INPUT -p udp -m udp", **UDP, frag_offset=0, more_fragments=True)
    assert not hits("-A INPUT -p udp --dport 53", **TCP, dport=53)


def test_tcp_matches() -> None:
    syn, ack = 0x02, 0x10
    assert hits("-A INPUT -p tcp --syn", **TCP, tcp_flags=syn)
    assert not hits("-A INPUT -p tcp --syn", **TCP, tcp_flags=syn | ack)
    assert hits("-A INPUT -p tcp ! --syn", **TCP, tcp_flags=syn | ack)
    # ECE/CWR are outside every mask
    assert hits("-A INPUT -p tcp --syn", **TCP, tcp_flags=syn | 0xC0)
    assert hits("-A INPUT -p tcp --tcp-flags ALL NONE", **TCP, tcp_flags=0)
    assert hits("-A INPUT -p tcp --dport 22 --sport 1024:", **TCP, dport=22, sport=5000)
    assert not hits("-A INPUT -p tcp ! --dport 22", **TCP, dport=22)
    assert not hits("-A INPUT -p tcp ! --dport 22", **TCP, dport=23, frag_offset=2)
    # a TCP fragment at offset 1 is dropped on the spot, whatever the rules say
    with pytest.raises(HotDrop):
        hits("-A INPUT -p tcp ! --dport 22", **TCP, dport=23, frag_offset=1)
    table = Table.empty("filter")
    table.chains["INPUT"].rules.append(rule_of("-A INPUT -p tcp --dport 1 -j ACCEPT"))
    assert evaluate(table, Packet(**TCP, frag_offset=1)).verdict == "DROP"
    assert evaluate(table, Packet(**TCP, frag_offset=2)).verdict == "ACCEPT"  # policy
    mss_wscale = bytes([2, 4, 5, 0xB4, 1, 3, 3, 7])
    assert hits("-A INPUT -p tcp --tcp-option 3", **TCP, tcp_options=mss_wscale)
    assert not hits("-A INPUT -p tcp --tcp-option 8", **TCP, tcp_options=mss_wscale)
    assert hits("-A INPUT -p tcp ! --tcp-option 8", **TCP, tcp_options=mss_wscale)
    assert not hits("-A INPUT -p tcp --tcp-option 8", **TCP, tcp_options=b"")
    # a zero length byte advances by one (the kernel's "op[i+1] ?: 1")
    assert hits("-A INPUT -p tcp --tcp-option 4", **TCP, tcp_options=bytes([9, 0, 4]))
    # an option kind in the last byte is still found
    assert hits("-A INPUT -p tcp --tcp-option 8", **TCP, tcp_options=bytes([1, 8]))


def test_icmp_matches() -> None:
    icmp = dict(proto=1)
    assert hits("-A INPUT -p icmp --icmp-type any", **icmp, icmp_type=42, icmp_code=7)
    assert not hits("-A INPUT -p icmp ! --icmp-type any", **icmp, icmp_type=42)
    assert hits("-A INPUT -p icmp --icmp-type 255", **icmp, icmp_type=3)
    assert hits("-A INPUT -p icmp --icmp-type echo-request", **icmp, icmp_type=8, icmp_code=9)
    assert not hits("-A INPUT -p icmp --icmp-type echo-request", **icmp, icmp_type=0)
    assert hits("-A INPUT -p icmp --icmp-type port-unreachable", **icmp, icmp_type=3, icmp_code=3)
    assert not hits("-A INPUT -p icmp --icmp-type port-unreachable", **icmp, icmp_type=3,
                    icmp_code=1)
    assert hits("-A INPUT -p icmp --icmp-type 3/1:2", **icmp, icmp_type=3, icmp_code=2)
    assert not hits("-A INPUT -p icmp --icmp-type 3/5:4", **icmp, icmp_type=3, icmp_code=4)
    assert hits("-A INPUT -p icmp ! --icmp-type 8", **icmp, icmp_type=0)
    assert not hits("-A INPUT -p icmp ! --icmp-type 8", **icmp, icmp_type=0, frag_offset=3)


def test_multiport_matches() -> None:
    spec = "-A INPUT -p tcp -m multiport --dports 22,80,1000:2000"
    for port, expected in ((22, True), (80, True), (1000, True), (2000, True), (1500, True),
                           (23, False), (999, False), (2001, False)):
        assert hits(spec, **TCP, dport=port) is expected, port
    assert not hits(spec, **TCP, dport=22, frag_offset=1)
    inv = "-A INPUT -p tcp -m multiport ! --sports 22,80:90"
    assert hits(inv, **TCP, sport=91)
    assert not hits(inv, **TCP, sport=85)
    assert not hits(inv, **TCP, sport=91, frag_offset=1)
    either = "-A INPUT -p udp -m multiport --ports 53,100:200"
    assert hits(either, **UDP, sport=53, dport=9)
    assert hits(either, **UDP, sport=9, dport=150)
    assert not hits(either, **UDP, sport=9, dport=99)


def test_iprange_matches() -> None:
    ip = lambda text: int.from_bytes(bytes(int(x) for x in text.split(".")), "big")  # noqa: E731
    spec = "-A INPUT -m iprange --src-range 10.0.0.5-10.0.0.9"
    assert hits(spec, src=ip("10.0.0.5"))
    assert hits(spec, src=ip("10.0.0.9"))
    assert not hits(spec, src=ip("10.0.0.10"))
    assert not hits(spec, src=ip("10.0.0.4"))
    assert not hits("-A INPUT -m iprange --src-range 1.1.1.10-1.1.1.1", src=ip("1.1.1.5"))
    both = "-A INPUT -m iprange ! --src-range 1.0.0.0-1.255.255.255 --dst-range 2.2.2.2"
    assert hits(both, src=ip("3.0.0.1"), dst=ip("2.2.2.2"))
    assert not hits(both, src=ip("1.2.3.4"), dst=ip("2.2.2.2"))
    assert not hits(both, src=ip("3.0.0.1"), dst=ip("2.2.2.3"))


def test_mac_matches() -> None:
    mac = bytes([0x42, 1, 2, 3, 4, 5])
    assert hits("-A INPUT -m mac --mac-source 42:01:02:03:04:05", src_mac=mac)
    assert not hits("-A INPUT -m mac --mac-source 42:01:02:03:04:06", src_mac=mac)
    assert hits("-A INPUT -m mac ! --mac-source 42:01:02:03:04:06", src_mac=mac)
    # no Ethernet header: no match, also when inverted
    assert not hits("-A INPUT -m mac ! --mac-source 42:01:02:03:04:06", src_mac=None)


def test_comment_mark_length_ttl_matches() -> None:
    assert hits("-A INPUT -m comment --comment x")
    assert hits("-A INPUT -m mark --mark 0x5", mark=5)
    assert not hits("-A INPUT -m mark --mark 0x5", mark=0x105)
    assert hits("-A INPUT -m mark --mark 0x5/0xff", mark=0x105)
    assert hits("-A INPUT -m mark ! --mark 0x5/0xff", mark=0x106)
    assert not hits("-A INPUT -m mark --mark 0xff/0xf", mark=0xff)
    assert hits("-A INPUT -m mark --mark 0/0", mark=0xdeadbeef)
    assert hits("-A INPUT -m length --length 40:60", length=40)
    assert hits("-A INPUT -m length --length 40:60", length=60)
    assert not hits("-A INPUT -m length --length 40:60", length=61)
    assert hits("-A INPUT -m length ! --length 40:60", length=61)
    assert hits("-A INPUT -m length --length 1500", length=1500)
    assert not hits("-A INPUT -m length --length 60:40", length=50)
    assert hits("-A INPUT -m ttl --ttl-eq 64", ttl=64)
    assert not hits("-A INPUT -m ttl ! --ttl-eq 64", ttl=64)
    assert hits("-A INPUT -m ttl ! --ttl 64", ttl=63)
    assert hits("-A INPUT -m ttl --ttl-lt 10", ttl=9)
    assert not hits("-A INPUT -m ttl --ttl-lt 10", ttl=10)
    assert hits("-A INPUT -m ttl --ttl-gt 10", ttl=11)
    assert not hits("-A INPUT -m ttl --ttl-gt 10", ttl=10)
    assert not hits("-A INPUT -m ttl --ttl-lt 0", ttl=0)


def test_help_texts_against_iptables() -> None:
    """-h prints each loaded match's help (and -p PROTO's, if no -m)."""
    def same_program(o) -> tuple[str, str, int]:
        fix = lambda t: re.sub(r"\bbpf-iptables\b", "iptables", t)  # noqa: E731
        return fix(o.stdout), fix(o.stderr), o.returncode

    problems = []
    commands = [["-m", name, "-h"] for name in sorted(T_FILES)]
    commands += [["-p", "icmp", "-h"], ["-p", "udp", "-h"], ["-p", "tcp", "-m", "multiport", "-h"],
                 ["-m", "comment", "-m", "mark", "-m", "ttl", "-h"]]
    with pair(fast=True) as p:
        for argv in commands:
            real, ours = p.both(*argv)
            assert real.returncode == 0 and "match options:" in real.stdout, argv
            if same_program(real) != same_program(ours):
                problems.append(f"$ iptables {' '.join(argv)}\n{real}\n=== ours\n{ours}")
    assert not problems, "\n\n".join(problems)


MIXED = [
    "-A INPUT -p udp -m multiport --dports 1,2 --sport 5",
    "-A INPUT -p tcp -m multiport --dports 22 --syn -j ACCEPT",
    "-A INPUT -p tcp --dport 22 -m multiport --sports 1,2",
    "-A INPUT -p tcp -m multiport --dp 22",
    "-A INPUT -p udp -m udp --dport 53 -m comment --comment dns -m length --length 0:512"
    " -m ttl --ttl-gt 1 -m mark --mark 1 -m iprange --src-range 10.0.0.1-10.0.0.5"
    " -m mac --mac-source 00:11:22:33:44:55 -j ACCEPT",
    "-A INPUT -m iprange --src-r 1.1.1.1",
    "-A INPUT -m comment --com x",
    "-A INPUT -m length --len 5",
    "-A INPUT -m mac --mac 1:2:3:4:5:6",
    "-A INPUT -m mark --ma 1",
    "-A INPUT -m mark --mark=7",
    "-A INPUT -p icmp --icmp 8",
    "-A INPUT -p icmp --icmp-type=echo-reply",
    "-A INPUT -m icmp --icmp-type 8 -p icmp",
    "-A INPUT -m ttl --ttl-eq 1 -m ttl --ttl-lt 9",
    "-A INPUT -m comment --comment 'with \"quotes\" and \\\\ backslash' -j DROP",
    "-A FORWARD -s 10.0.0.0/8 -p tcp -m tcp --sport 1024:65535 -m multiport --dports 80,443 -j ACCEPT",
    "-A OUTPUT -o lo -p udp --dport 53 -m length ! --length 0:100",
    "-N user",
    "-A user -p icmp --icmp-type 0 -j RETURN",
    "-A INPUT -j user",
    "-R INPUT 1 -p udp --dport 99",
    "-I INPUT 2 -m ttl --ttl 3",
    "-A INPUT -f -p udp --dport 53",
]


# (added rule, the same rule spelled differently): -C must find it
EQUIVALENT = [
    ("-p udp --sport 1:1", "-p udp -m udp --source-port 1"),
    ("-p icmp --icmp-type echo-request", "-p icmp -m icmp --icmp-type 8"),
    ("-p icmp --icmp-type 3/3", "-p icmp --icmp-type port-unr"),
    ("-p tcp -m multiport --ports 22,80:90", "-p 6 -m multiport --ports ssh,80:90"),
    ("-m iprange --src-range 1.1.1.1", "-m iprange --src-range 1.1.1.1-1.1.1.1"),
    ("-m ttl --ttl 5", "-m ttl --ttl-eq 5"),
    ("-m ttl ! --ttl 5", "-m ttl ! --ttl-eq 5"),
    ("-m mark --mark 1", "-m mark --mark 0x1/0xffffffff"),
    ("-m length --length 5", "-m length --length 5:5"),
    ("-m mac --mac-source a:b:c:d:e:f", "-m mac --mac-source 0A:0B:0C:0D:0E:0F"),
    ("-m comment --comment " + "c" * 300, "-m comment --comment " + "c" * 255),
    ("-p tcp --syn", "-p tcp --tcp-flags FIN,SYN,RST,ACK SYN"),
    # and some that must not be found
    ("-p udp ! --sport 0:65535", "-p udp --sport 0:65535"),
    ("-p icmp --icmp-type 3/1:2", "-p icmp --icmp-type 3/1"),
    ("-m length --length 5", "-m length ! --length 5"),
]


def test_equivalent_spellings_check_and_delete() -> None:
    report = Report([])
    with pair(fast=True) as p:
        for index, (added, other) in enumerate(EQUIVALENT):
            assert report.check(p, "-A", "INPUT", *shlex.split(added)) == 0, added
            found = report.check(p, "-C", "INPUT", *shlex.split(other)) == 0
            assert found == (index < len(EQUIVALENT) - 3), (added, other)
            report.check(p, "-D", "INPUT", *shlex.split(other))
            report.check(p, "-S")
            report.check(p, "-F")
    assert not report.problems, "\n\n".join(report.problems)


def test_mixed_rules_and_save_restore_roundtrip() -> None:
    """Several batch-A matches in one rule, abbreviations, -R/-I, and the
    save text of every accepted rule fed back through iptables-restore."""
    report = Report([])
    with pair(fast=True) as p:
        accepted = run_commands(p, report, [shlex.split(c) for c in MIXED])
        assert len(accepted) >= 15, accepted
        listings(p, report)
        saved, _ = p.both(tool="iptables-save")
        assert "--comment" in saved.stdout and "--mac-source" in saved.stdout
        report.check(p, "-F")
        report.check(p, "-X")
        real, ours = p.both(tool="iptables-restore", input=saved.stdout)
        assert real.returncode == 0, real
        if real != ours:
            report.problems.append(f"$ iptables-restore\n{real}\n=== ours\n{ours}")
        after_real, after_ours = p.both(tool="iptables-save")
        if after_real != after_ours:
            report.problems.append(f"$ iptables-save after restore\n{after_real}\n=== ours\n"
                                   f"{after_ours}")
        assert after_real.stdout.split("COMMIT")[0] == saved.stdout.split("COMMIT")[0]
        check_and_delete(p, report, [a for a in accepted if a[1] != "user"])
    assert not report.problems, "\n\n".join(report.problems)


def test_plain_processes_agree() -> None:
    """The other tests run our side through the fork server; here each
    command is its own ``python -m bpf_iptables.cli.iptables`` process."""
    with pair() as p:
        for command in ("-A INPUT -p udp --dport 53 -m comment --comment dns",
                        "-A INPUT -p icmp --icmp-type echo-request -m ttl --ttl-lt 9",
                        "-A INPUT -p tcp -m multiport ! --dports 22,80:90 -m length --length 40:",
                        "-A INPUT -m iprange --src-range 9.9.9.9-9.9.9.1 -m mark --mark 1/1",
                        "-A OUTPUT -m mac --mac-source 1:2:3:4:5:6",
                        "-L -v", "-S", "-C INPUT -m iprange --src-range 9.9.9.9-9.9.9.1 -m mark "
                        "--mark 1/1", "-D INPUT 1", "-S"):
            p.assert_same(*shlex.split(command))


# --- the reference semantics against the kernel --------------------------------
# Packets forwarded through a router namespace whose FORWARD chain uses the
# batch-A matches (iptables-legacy); per-rule counters must equal the
# reference evaluator's. The topology and packet builder are those of
# tests/test_reference_vs_netfilter.py; the traffic adds ICMP types/codes,
# TTLs and sources for these matches.



@dataclass(frozen=True)
class XSpec(Spec):
    ttl: int = 64
    icmp_type: int = 8
    icmp_code: int = 0

    def l4(self) -> bytes:
        if self.proto == ICMP and not self.frag_offset:
            body = struct.pack("!BBHHH", self.icmp_type, self.icmp_code, 0, 0x4242, 1)
            body += bytes(self.payload)
            return body[:2] + struct.pack("!H", inet_checksum(body)) + body[4:]
        return super().l4()

    def raw(self) -> bytes:
        raw = super().raw()
        return raw[:8] + bytes([self.ttl]) + raw[9:]

    def packet(self) -> Packet:
        # ip_forward() decrements the TTL before the FORWARD hook; the MAC
        # header is the one the frame arrived with, from A's interface
        return replace(super().packet(), ttl=self.ttl - 1, icmp_type=self.icmp_type,
                       icmp_code=self.icmp_code, src_mac=bytes.fromhex(MAC["vA"].replace(":", "")))


A_TRAFFIC: tuple[XSpec, ...] = (
    *(XSpec(**asdict(spec)) for spec in TRAFFIC),
    XSpec(ICMP, icmp_type=0), XSpec(ICMP, icmp_type=3, icmp_code=1),
    XSpec(ICMP, icmp_type=3, icmp_code=3, payload=28), XSpec(ICMP, icmp_type=11),
    XSpec(ICMP, icmp_type=13, ttl=9), XSpec(ICMP, ttl=2), XSpec(ICMP, ttl=64, payload=1000),
    XSpec(17, sport=1000, dport=150), XSpec(17, sport=150, dport=7), XSpec(17, dport=9999),
    XSpec(17, dport=201, src="10.77.0.60"), XSpec(17, dport=53, src="10.77.0.100", ttl=5),
    XSpec(6, sport=40500, dport=1000, payload=10),
    XSpec(6, sport=40501, dport=9000, ttl=11, payload=10),
    XSpec(6, sport=40502, dport=9001, src="10.77.0.49"), XSpec(6, sport=40503, dport=443, ttl=10),
    XSpec(6, sport=5000, dport=1, payload=21),
)

A_RULES = (
    "-P FORWARD DROP",
    "-A FORWARD -m comment --comment 'counts everything'",
    "-A FORWARD -p udp -m udp --dport 53 -m ttl --ttl-lt 10 -j DROP",
    "-A FORWARD -p udp -m udp ! --sport 5353 --dport 100:200 -j ACCEPT",
    "-A FORWARD -p udp -m multiport --ports 150,9999 -j ACCEPT",
    "-A FORWARD -p tcp -m multiport ! --dports 22,80,1000:9000",
    "-A FORWARD -p tcp -m multiport --sports 5000,40503 -j ACCEPT",
    "-A FORWARD -m iprange --src-range 10.77.0.50-10.77.0.70 -j DROP",
    "-A FORWARD -m iprange ! --src-range 10.77.0.1-10.77.0.1 -p icmp",
    "-A FORWARD -m length --length 0:40",
    "-A FORWARD -m length ! --length 41:100 -p tcp -j ACCEPT",
    "-A FORWARD -m ttl --ttl-lt 9 -j DROP",
    "-A FORWARD -m ttl --ttl-eq 63 -p icmp --icmp-type 11",
    "-A FORWARD -m ttl ! --ttl 63 -p tcp -j ACCEPT",
    "-A FORWARD -m ttl --ttl-gt 62 -p icmp --icmp-type 3/1 -j ACCEPT",
    "-A FORWARD -m mac ! --mac-source 02:00:00:77:00:01 -j ACCEPT",
    "-A FORWARD -m mac --mac-source 02:00:00:77:00:01 -p icmp --icmp-type port-unreachable",
    "-A FORWARD -m mark --mark 0 -p icmp --icmp-type echo-request -j ACCEPT",
    "-A FORWARD -p icmp ! --icmp-type 0 -m mark ! --mark 0x1/0x1 -j ACCEPT",
    "-A FORWARD -p icmp --icmp-type any -m mark --mark 0x1/0x1 -j ACCEPT",
    "-A FORWARD -p tcp -m tcp --dport 1000:9000 ! --tcp-flags SYN,ACK ACK -j ACCEPT",
    "-A FORWARD -p udp -j ACCEPT",
)


def test_batch_a_counters_match_netfilter(topo: Topology) -> None:  # noqa: F811 (fixture)
    load_kernel(topo, A_RULES)
    table = build_model(A_RULES)
    for spec in A_TRAFFIC:
        evaluate(table, spec.packet())
    ours = model_counters(table)
    data = "".join(f"{spec.raw().hex()} {C_IP}\n" for spec in A_TRAFFIC)
    sender = ("import socket, sys\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n"
              "for line in sys.stdin:\n"
              "    raw, dst = line.split()\n"
              "    s.sendto(bytes.fromhex(raw), (dst, 0))\n")
    res = topo.a.run([sys.executable, "-c", sender], input=data)
    assert res.returncode == 0, res
    deadline = time.monotonic() + 3.0
    kernel = kernel_counters(topo)
    while kernel != ours and time.monotonic() < deadline:
        time.sleep(0.1)
        kernel = kernel_counters(topo)
    assert kernel == ours, "\n".join(f"{c}: kernel {kernel.get(c)}\n{' ' * len(c)}  model  {ours.get(c)}"
                                      for c in sorted(set(kernel) | set(ours))
                                      if kernel.get(c) != ours.get(c))
    # every rule saw traffic or deliberately none: most rules must have hits
    rule_hits = [packets for packets, _ in ours["FORWARD"][1]]
    assert sum(1 for n in rule_hits if n) >= len(rule_hits) - 3, rule_hits


RESTORE_INPUTS = (
    "*filter\n-A OUTPUT -m mac --mac-source 1:2:3:4:5:6\nCOMMIT\n",
    "*filter\n-A INPUT -m udp --dport 1\nCOMMIT\n",
    "*filter\n-A INPUT -p icmp --icmp-type echo\nCOMMIT\n",
    "*filter\n-A INPUT -m comment --comment \"a b\" -m iprange --src-range 1.1.1.5-1.1.1.1\n"
    "COMMIT\n",
    "*filter\n-A INPUT -p tcp -m multiport --dports 1,2 --sports 3\nCOMMIT\n",
    "*filter\n-A INPUT -m comment --comment 'single quoted' -m ttl ! --ttl 3\n"
    "-A INPUT -m length --length 9: -m mark --mark 0x10/0x10\nCOMMIT\n",
)


def test_restore_with_batch_a_matches() -> None:
    """Kernel refusals, parse errors and quoting through iptables-restore."""
    problems = []
    with pair(fast=True) as p:
        for text in RESTORE_INPUTS:
            for tool, data in (("iptables-restore", text), ("iptables-save", None)):
                real, ours = p.both(tool=tool, input=data)
                if real != ours:
                    problems.append(f"{tool} after {text!r}\n{real}\n=== ours\n{ours}")
    assert not problems, "\n\n".join(problems)
