"""conntrack, state, limit, tos, dscp, addrtype and pkttype, against real
iptables-legacy, plus their reference semantics.

Every rule line of iptables' own .t files for these matches (read from the
shared test directory at test time) and our own extra cases (errors,
inversions, defaults, -L text) run with iptables-legacy and with
bpf-iptables, each in its own fresh namespace: stdout, stderr and exit
status of -A, -S, -L, -L -n -v -x, -C and -D must be identical after
normalising the program name. One namespace pair per test function; the
table is flushed between rules."""
from __future__ import annotations

import errno
import shlex
from pathlib import Path

import pytest

from bpf_iptables.cmdline.parse import CommandParser
from bpf_iptables.errors import TableOpError
from bpf_iptables.extensions import matches as registered_matches
from bpf_iptables.extensions.limit import CREDITS_PER_JIFFY, HZ, LimitData, user2credits
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Conntrack, CtTuple, Packet
from tests.support.tfiles import read_t_file
from tests.support.pair import Pair, pair

REPO = Path(__file__).resolve().parents[1]
LISTINGS = (("-S",), ("-L",), ("-L", "-n", "-v", "-x"))


def check_rule(p: Pair, chains: tuple[str, ...], rule: str, ok: bool | None = None,
               save: str | None = None) -> None:
    """Append the rule to each chain in both tools and compare; if it went
    in, compare every listing, then -C and -D it in the first chain it went
    into, and flush. ``ok``/``save`` (from a .t file) are also asserted on
    the real tool's outcome and on the -S text."""
    args = shlex.split(rule)
    added: list[str] = []
    for chain in chains:
        real = p.assert_same("-A", chain, *args)
        if ok is not None:
            assert (real.returncode == 0) == ok, f"{chain}: {rule}: {real}"
        if real.returncode == 0:
            added.append(chain)
        elif real.returncode == 2:
            break   # a command-line error: the same in every chain
    if not added:
        return
    for listing in LISTINGS:
        out = p.assert_same(*listing)
        if save is not None and listing == ("-S",):
            for chain in added:
                assert f"-A {chain} {save}\n" in out.stdout
    p.assert_same("-C", added[0], *args)
    p.assert_same("-D", added[0], *args)
    p.assert_same("-C", added[0], *args)
    if len(added) > 1:
        p.assert_same("-F")


T_FILES = ("libxt_conntrack.t", "libxt_state.t", "libxt_limit.t", "libxt_tos.t",
           "libxt_dscp.t", "libxt_addrtype.t", "libxt_pkttype.t")

ALL = ("INPUT", "FORWARD", "OUTPUT")
IN = ("INPUT",)

# Our own cases, per extension: (chains, rule).
EXTRA: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "libxt_conntrack.t": [
        (IN, "-m conntrack ! --ctstate NEW,ESTABLISHED"),
        (IN, "-m conntrack --ctstate new,est,rel,inv,untr,sn,dn"),
        (IN, "-m conntrack --ctstate NEW,"),
        (IN, "-m conntrack --ctstate ,NEW"),
        (IN, "-m conntrack --ctstate NEW,foo,BAR"),
        (IN, "-m conntrack --ctstate NEW --ctstate RELATED"),
        (IN, "-m conntrack ! --ctproto udp"),
        (IN, "-m conntrack --ctproto 0"),
        (IN, "-m conntrack ! --ctproto 0"),
        (IN, "-m conntrack ! --ctstatus NONE --ctproto 0"),
        (IN, "-m conntrack --ctproto nosuchproto"),
        (IN, "-m conntrack --ctorigsrc 1.2.3.4/24 ! --ctorigdst 10.0.0.0/255.255.0.0"),
        (IN, "-m conntrack --ctreplsrc 127.0.0.1 --ctrepldst 0.0.0.0/0"),
        (IN, "-m conntrack --ctrepldst 0.0.0.0/8 --ctreplsrc 1.2.3.4/255.0.255.0"),
        (IN, "-m conntrack --ctorigsrc 1.2.3.4/33"),
        (IN, "-m conntrack --ctorigsrc 1.2.3.4/foo"),
        (IN, "-m conntrack --ctorigsrc nosuchhost.invalid"),
        (IN, "-m conntrack --ctorigsrcport 80 --ctorigdstport 1000:2000"),
        (IN, "-m conntrack ! --ctreplsrcport :1024 ! --ctrepldstport 1024:"),
        (IN, "-m conntrack --ctorigsrcport http"),
        (IN, "-m conntrack --ctorigsrcport 1:2:3"),
        (IN, "-m conntrack --ctorigsrcport 70000"),
        (IN, "-m conntrack ! --ctstatus ASSURED,SEEN_REPLY,expected,conf"),
        (IN, "-m conntrack --ctstatus NONE,FOO"),
        (IN, "-m conntrack ! --ctexpire 10:20"),
        (IN, "-m conntrack --ctexpire 20:10"),
        (IN, "-m conntrack --ctexpire 5:"),
        (IN, "-m conntrack --ctexpire 1:2:3"),
        (IN, "-m conntrack --ctdir reply"),
        (IN, "-m conntrack --ctdir foo"),
        (IN, "-m conntrack ! --ctdir REPLY"),
        (IN, "-m conntrack --ctdir ORIGINAL --ctdir REPLY"),
        (IN, "-m conntrack --ctstate NEW --ctproto 6 --ctorigsrc 1.1.1.1 --ctorigdst 2.2.2.2 "
              "--ctreplsrc 3.3.3.3 --ctrepldst 4.4.4.4 --ctorigsrcport 1 --ctorigdstport 2 "
              "--ctreplsrcport 3 --ctrepldstport 4 --ctstatus ASSURED --ctexpire 5 --ctdir REPLY"),
        (IN, "-m conntrack --ctstate NEW -m state --state NEW"),
    ],
    "libxt_state.t": [
        (IN, "-m state ! --state ESTABLISHED,RELATED"),
        (IN, "-m state --state new,e,r,i,u"),
        (IN, "-m state --state SNAT"),
        (IN, "-m state --state NEW,"),
        (IN, "-m state --state foo,NEW"),
        (IN, "-m state --state ,NEW"),
        (IN, "-m state --state NEW --state NEW"),
        (IN, "-m state --ctstate NEW"),
    ],
    "libxt_limit.t": [
        (IN, "-m limit"),
        (IN, "-m limit --limit 5"),
        (IN, "-m limit --limit 3/m --limit-burst 10"),
        (IN, "-m limit --limit 7/h"),
        (IN, "-m limit --limit 10000/sec --limit-burst 10000"),
        (IN, "-m limit --limit 90/min"),
        (IN, "-m limit --limit 1/day --limit-burst 10000"),
        # the kernel's u32 overflow check (HZ=250) is not monotonic in burst
        (IN, "-m limit --limit 1/day --limit-burst 2"),
        (IN, "-m limit --limit 1/day --limit-burst 3"),
        (IN, "-m limit --limit 1/day --limit-burst 4"),
        (IN, "-m limit --limit 1/hour --limit-burst 119"),
        (IN, "-m limit --limit 1/hour --limit-burst 120"),
        (IN, "-m limit --limit 2/day --limit-burst 7"),
        (IN, "-m limit --limit-burst 0"),
        (IN, "-m limit --limit-burst 10001"),
        (IN, "-m limit ! --limit 1/sec"),
        (IN, "-m limit --limit 0/sec"),
        (IN, "-m limit --limit 1/"),
        (IN, "-m limit --limit 1/fortnight"),
        (IN, "-m limit --limit 100000/sec"),
        (IN, "-m limit --limit -1/sec"),
        (IN, "-m limit --limit 1/sec --limit 2/sec"),
    ],
    "libxt_tos.t": [
        (IN, "-m tos --tos minimize-delay"),
        (IN, "! -p tcp -m tos ! --tos Normal-Service"),
        (IN, "-m tos --tos 0x10/0x3f"),
        (IN, "-m tos --tos 16/63"),
        (IN, "-m tos --tos 0x10/0x100"),
        (IN, "-m tos --tos 0x10abc"),
        (IN, "-m tos --tos 256"),
        (IN, "-m tos --tos 0x04 --tos 0x08"),
    ],
    "libxt_dscp.t": [
        (IN, "-m dscp ! --dscp 10"),
        (IN, "-m dscp ! --dscp-class af41"),
        (IN, "-m dscp --dscp-class EFX"),
        (IN, "-m dscp --dscp-class AF1"),
        (IN, "-m dscp --dscp-class CS0 --dscp 0x3f"),
        (IN, "-m dscp --dscp 1 --dscp 2"),
        (IN, "-m dscp --dscp foo"),
    ],
    "libxt_addrtype.t": [
        (IN, "-m addrtype ! --src-type LOCAL,UNICAST ! --dst-type BROADCAST,multicast"),
        (IN, "-m addrtype --src-type U,L,B,A,M,BL,UNR,P,T,N,X"),
        (IN, "-m addrtype --src-type LOCAL,foo"),
        (IN, "-m addrtype --src-type ,LOCAL"),
        (IN, "-m addrtype --src-type LOCAL,"),
        (IN, "-m addrtype --src-type LOCAL --src-type LOCAL"),
        (IN, "-m addrtype ! --limit-iface-in --src-type LOCAL"),
        (ALL, "-m addrtype --dst-type LOCAL --limit-iface-in"),
        (ALL, "-m addrtype --dst-type LOCAL --limit-iface-out"),
        (("FORWARD",), "-m addrtype --dst-type LOCAL --limit-iface-in"),
    ],
    "libxt_pkttype.t": [
        (IN, "-m pkttype ! --pkt-type host"),
        (IN, "-m pkttype --pkt-type BCAST"),
        (IN, "-m pkttype --pkt-type mcast"),
        (IN, "-m pkttype --pkt-type OtherHost"),
        (IN, "-m pkttype --pkt-type outgoing"),
        (IN, "-m pkttype --pkt-type host --pkt-type host"),
    ],
}


@pytest.mark.parametrize("t_file", T_FILES)
def test_against_iptables(t_file: str) -> None:
    lines = read_t_file(t_file)
    assert lines, t_file
    with pair("bpfb") as p:
        for line in lines:
            check_rule(p, line.chains, line.rule, line.ok, line.save if line.ok else None)
        for chains, rule in EXTRA[t_file]:
            check_rule(p, chains, rule)


def test_hooks_reached_through_user_chains() -> None:
    """The kernel checks hook restrictions for every hook a user chain is
    reachable from, also when the jump comes after the rule."""
    with pair("bpfb") as p:
        for args in (("-N", "sub"),
                     ("-A", "sub", "-m", "addrtype", "--src-type", "LOCAL", "--limit-iface-out"),
                     ("-A", "FORWARD", "-j", "sub"),
                     ("-A", "INPUT", "-j", "sub"),
                     ("-A", "OUTPUT", "-j", "sub"),
                     ("-S",),
                     ("-F", "sub"),
                     ("-A", "sub", "-m", "addrtype", "--dst-type", "LOCAL", "--limit-iface-in"),
                     ("-I", "sub", "-m", "limit", "--limit-burst", "0"),
                     ("-A", "sub", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"),
                     ("-R", "sub", "1", "-m", "state", "--state", "NEW", "-j", "DROP"),
                     ("-L", "sub", "-n", "-v", "-x"),
                     ("-S",)):
            p.assert_same(*args)


def _usage_neutral(text: str) -> str:
    return text.replace("bpf-iptables", "iptables")


def test_help_texts() -> None:
    with pair("bpfb") as p:
        for ext in ("conntrack", "state", "limit", "tos", "dscp", "addrtype", "pkttype"):
            real, ours = p.both("-m", ext, "-h")
            assert real.returncode == ours.returncode == 0
            assert _usage_neutral(ours.stdout) == _usage_neutral(real.stdout)


# --- reference semantics ---------------------------------------------------------

def match_data(*args: str):
    """Parse "-A INPUT <args>" with our command line and return the data
    of its only match."""
    parsed = CommandParser(["iptables", "-A", "INPUT", *args]).parse()
    assert len(parsed.match_data) == 1
    return parsed.match_data[0].data


def ext_matches(name: str, data, pkt: Packet) -> bool:
    return registered_matches()[name].matches(data, pkt)


def ct(state: str = "ESTABLISHED", **kw) -> Conntrack:
    return Conntrack(state=state, **kw)


def test_conntrack_state_matches() -> None:
    d = match_data("-m", "conntrack", "--ctstate", "NEW,RELATED")
    assert ext_matches("conntrack", d, Packet(ct=ct("NEW")))
    assert ext_matches("conntrack", d, Packet(ct=ct("RELATED")))
    assert not ext_matches("conntrack", d, Packet(ct=ct("ESTABLISHED")))
    assert not ext_matches("conntrack", d, Packet(ct=None))           # INVALID
    inv = match_data("-m", "conntrack", "!", "--ctstate", "NEW")
    assert not ext_matches("conntrack", inv, Packet(ct=ct("NEW")))
    assert ext_matches("conntrack", inv, Packet(ct=ct("ESTABLISHED")))
    assert ext_matches("conntrack", inv, Packet(ct=None))
    invalid = match_data("-m", "conntrack", "--ctstate", "INVALID")
    assert ext_matches("conntrack", invalid, Packet(ct=None))
    assert ext_matches("conntrack", invalid, Packet(ct=ct("INVALID")))
    assert not ext_matches("conntrack", invalid, Packet(ct=ct("UNTRACKED")))
    untracked = match_data("-m", "conntrack", "--ctstate", "UNTRACKED")
    assert ext_matches("conntrack", untracked, Packet(ct=ct("UNTRACKED")))
    # no NAT in bpf-iptables: SNAT/DNAT never match
    nat = match_data("-m", "conntrack", "--ctstate", "SNAT,DNAT")
    for state in ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"):
        assert not ext_matches("conntrack", nat, Packet(ct=ct(state)))


def test_conntrack_without_entry_only_state_options_match() -> None:
    """Without a conntrack entry a rule matches iff it has --ctstate (and
    that part matched): xt_conntrack returns match_flags & STATE."""
    proto = match_data("-m", "conntrack", "!", "--ctproto", "udp")
    assert not ext_matches("conntrack", proto, Packet(ct=None))
    assert ext_matches("conntrack", proto, Packet(proto=6, ct=ct()))
    assert not ext_matches("conntrack", proto, Packet(proto=17, ct=ct()))
    both = match_data("-m", "conntrack", "--ctstate", "INVALID", "--ctproto", "udp")
    assert ext_matches("conntrack", both, Packet(proto=6, ct=None))


def test_conntrack_tuple_status_expiry_direction() -> None:
    orig = CtTuple(ip_to_int("10.0.0.1"), ip_to_int("10.0.0.2"), 6, 1234, 80)
    repl = CtTuple(ip_to_int("10.0.0.2"), ip_to_int("10.0.0.1"), 6, 80, 1234)
    entry = ct("ESTABLISHED", original=orig, reply=repl, direction="REPLY",
               status=frozenset({"ASSURED", "SEEN_REPLY"}), expires=100)
    pkt = Packet(ct=entry)

    def m(*args: str) -> bool:
        return ext_matches("conntrack", match_data("-m", "conntrack", *args), pkt)

    assert m("--ctorigsrc", "10.0.0.0/24")
    assert not m("--ctorigsrc", "10.0.1.0/24")
    assert m("!", "--ctorigsrc", "10.0.1.0/24")
    # the address is not masked when parsed, only the packet's side
    assert m("--ctorigdst", "10.0.0.99/24")
    assert m("--ctreplsrc", "10.0.0.2", "--ctrepldst", "10.0.0.1")
    assert m("--ctproto", "tcp")
    assert not m("--ctproto", "udp")
    assert m("--ctorigsrcport", "1000:2000", "--ctorigdstport", "80")
    assert m("--ctreplsrcport", "80", "!", "--ctrepldstport", "1:1000")
    assert not m("--ctrepldstport", "1:1000")
    assert m("--ctstatus", "ASSURED")
    assert m("--ctstatus", "EXPECTED,SEEN_REPLY")
    assert not m("--ctstatus", "EXPECTED")
    assert not m("--ctstatus", "NONE")
    assert m("!", "--ctstatus", "CONFIRMED")
    assert m("--ctexpire", "100")
    assert m("--ctexpire", "50:150")
    assert not m("--ctexpire", "101:")
    assert m("!", "--ctexpire", "0:99")
    assert m("--ctdir", "REPLY")
    assert not m("--ctdir", "ORIGINAL")


def test_conntrack_tuples_default_to_the_packet() -> None:
    pkt = Packet(src=ip_to_int("192.0.2.1"), dst=ip_to_int("192.0.2.2"), proto=17,
                 sport=5000, dport=53, ct=ct("NEW"))
    d = match_data("-m", "conntrack", "--ctorigsrc", "192.0.2.1", "--ctrepldst", "192.0.2.1",
                   "--ctorigdstport", "53", "--ctreplsrcport", "53")
    assert ext_matches("conntrack", d, pkt)
    reply = Packet(src=ip_to_int("192.0.2.2"), dst=ip_to_int("192.0.2.1"), proto=17,
                   sport=53, dport=5000, ct=ct("ESTABLISHED", direction="REPLY"))
    assert ext_matches("conntrack", d, reply)


def test_state_matches() -> None:
    d = match_data("-m", "state", "--state", "ESTABLISHED,RELATED")
    assert ext_matches("state", d, Packet(ct=ct("ESTABLISHED")))
    assert not ext_matches("state", d, Packet(ct=ct("NEW")))
    assert not ext_matches("state", d, Packet(ct=None))
    inv = match_data("-m", "state", "!", "--state", "INVALID")
    assert ext_matches("state", inv, Packet(ct=ct("NEW")))
    assert not ext_matches("state", inv, Packet(ct=None))
    # same kernel match, but -m state and -m conntrack rules differ
    assert d != match_data("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED")


def test_tos_dscp_pkttype_addrtype_matches() -> None:
    tos = match_data("-m", "tos", "--tos", "Minimize-Delay")
    assert ext_matches("tos", tos, Packet(tos=0x10))
    assert ext_matches("tos", tos, Packet(tos=0x10 | 0xC0))      # mask 0x3f
    assert not ext_matches("tos", tos, Packet(tos=0x08))
    tos_inv = match_data("-m", "tos", "!", "--tos", "0x0f/0x0f")
    assert ext_matches("tos", tos_inv, Packet(tos=0x07))
    assert not ext_matches("tos", tos_inv, Packet(tos=0xFF))

    dscp = match_data("-m", "dscp", "--dscp-class", "EF")
    assert ext_matches("dscp", dscp, Packet(tos=0x2E << 2))
    assert ext_matches("dscp", dscp, Packet(tos=(0x2E << 2) | 3))   # ECN bits ignored
    assert not ext_matches("dscp", dscp, Packet(tos=0))
    assert ext_matches("dscp", match_data("-m", "dscp", "!", "--dscp", "1"), Packet(tos=0))

    pk = match_data("-m", "pkttype", "--pkt-type", "broadcast")
    assert ext_matches("pkttype", pk, Packet(pkttype="broadcast"))
    assert not ext_matches("pkttype", pk, Packet(pkttype="host"))
    # looped-back packets: multicast destination -> multicast, else broadcast
    assert ext_matches("pkttype", pk, Packet(pkttype="loopback", dst=ip_to_int("10.0.0.1")))
    mc = match_data("-m", "pkttype", "!", "--pkt-type", "multicast")
    assert not ext_matches("pkttype", mc, Packet(pkttype="loopback", dst=ip_to_int("224.0.0.1")))
    assert ext_matches("pkttype", mc, Packet(pkttype="host"))

    at = match_data("-m", "addrtype", "--src-type", "UNICAST", "!", "--dst-type", "LOCAL,BROADCAST")
    assert ext_matches("addrtype", at, Packet(src_type=frozenset({"UNICAST"}),
                                              dst_type=frozenset({"UNICAST"})))
    assert not ext_matches("addrtype", at, Packet(src_type=frozenset({"UNICAST"}),
                                                  dst_type=frozenset({"LOCAL"})))
    assert not ext_matches("addrtype", at, Packet(src_type=frozenset({"LOCAL"}),
                                                  dst_type=frozenset({"UNICAST"})))


def test_limit_constants_follow_xt_limit() -> None:
    assert HZ == 250 and CREDITS_PER_JIFFY == 128
    one_per_sec = match_data("-m", "limit", "--limit", "1/sec", "--limit-burst", "3")
    assert one_per_sec == LimitData(10000, 3)
    assert one_per_sec.cost == user2credits(10000) == HZ * CREDITS_PER_JIFFY
    assert one_per_sec.credit_cap == 3 * one_per_sec.cost
    default = match_data("-m", "limit")
    assert default == LimitData(10000 * 3600 // 3, 5)
    # overflowing avg*burst is refused by the kernel check with ERANGE
    ext = registered_matches()["limit"]
    with pytest.raises(TableOpError) as info:
        ext.kernel_check(LimitData(864000000, 10000), None, frozenset())
    assert info.value.err == errno.ERANGE


def test_limit_burst_then_refill() -> None:
    ext = registered_matches()["limit"]
    d = match_data("-m", "limit", "--limit", "2/sec", "--limit-burst", "3")
    t0 = 1000.0
    # a full bucket lets the burst through at once, then nothing
    assert [ext.matches(d, Packet(time=t0)) for _ in range(5)] == [True, True, True, False, False]
    # 2/sec: one token every 0.5 s (125 jiffies)
    assert not ext.matches(d, Packet(time=t0 + 0.49))
    assert ext.matches(d, Packet(time=t0 + 0.50))
    assert not ext.matches(d, Packet(time=t0 + 0.51))
    # a long pause refills only up to the burst
    later = t0 + 60
    assert [ext.matches(d, Packet(time=later)) for _ in range(4)] == [True, True, True, False]
    # another rule with equal options has its own bucket
    other = match_data("-m", "limit", "--limit", "2/sec", "--limit-burst", "3")
    assert other == d and other is not d
    assert ext.matches(other, Packet(time=later))


def test_limit_partial_credit_accumulates() -> None:
    """Credit left over from elapsed jiffies carries to the next packet."""
    ext = registered_matches()["limit"]
    d = match_data("-m", "limit", "--limit", "1/sec", "--limit-burst", "1")
    assert ext.matches(d, Packet(time=0.0))
    assert not ext.matches(d, Packet(time=0.6))
    assert not ext.matches(d, Packet(time=0.9))
    assert ext.matches(d, Packet(time=1.0))


RESTORE_INPUT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack ! --ctstate INVALID,NEW --ctorigsrc 10.0.0.0/8 --ctorigdstport 22 -j ACCEPT
-A INPUT -m limit --limit 5/min --limit-burst 7 -j ACCEPT
-A INPUT -m tos ! --tos Minimize-Delay -m dscp --dscp-class AF11 -j DROP
-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -m pkttype --pkt-type broadcast -j DROP
-A OUTPUT -m addrtype --src-type LOCAL --limit-iface-out
COMMIT
"""


def test_restore_and_save() -> None:
    """iptables-restore reads these matches and iptables-save writes them
    back exactly as the real tools do; a hook violation fails the commit."""
    with pair("bpfb") as p:
        p.assert_same(tool="iptables-restore", input=RESTORE_INPUT)
        saved = p.assert_same(tool="iptables-save")
        assert "-A INPUT -m limit --limit 5/min --limit-burst 7 -j ACCEPT\n" in saved.stdout
        p.assert_same("-L", "-n", "-v")
        bad = RESTORE_INPUT.replace("-A OUTPUT -m addrtype --src-type LOCAL --limit-iface-out",
                                    "-A OUTPUT -m addrtype --src-type LOCAL --limit-iface-in")
        failed = p.assert_same(tool="iptables-restore", input=bad)
        assert failed.returncode != 0
        p.assert_same(tool="iptables-save")
