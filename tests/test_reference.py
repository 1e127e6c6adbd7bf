"""The reference semantics (reference/evaluate.py) on rule sets built by our
own parser, packet by packet: verdicts, the rules hit, and counters.

Rule sets are written as iptables command lines and run through
CommandParser + commands.execute + validate_table, exactly as the CLI does,
so the tests exercise the same model the data path will be generated from."""
from __future__ import annotations

import shlex

import pytest

from bpf_iptables.cmdline.parse import CommandParser
from bpf_iptables.commands import execute
from bpf_iptables.extensions import targets
from bpf_iptables.extensions.base import Verdict
from bpf_iptables.model import Table
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.evaluate import Result, evaluate
from bpf_iptables.reference.packet import ICMP, TCP, UDP, Packet
from bpf_iptables.validate import validate_table


def build(*lines: str) -> Table:
    """A filter table after running each iptables command line."""
    table = Table.empty("filter")
    for line in lines:
        parsed = CommandParser(["iptables", *shlex.split(line)]).parse()
        execute(parsed, table)
        validate_table(table)
    return table


def pkt(proto: int = TCP, src: str = "10.0.0.1", dst: str = "10.0.0.2", *, hook: str = "INPUT",
        i: str = "eth0", o: str = "", sport: int = 40000, dport: int = 80, length: int = 60,
        frag_offset: int = 0, more_fragments: bool = False, tcp_flags: int = 0x02) -> Packet:
    if hook == "OUTPUT":
        i = ""
    return Packet(hook=hook, in_iface=i, out_iface=o, src=ip_to_int(src), dst=ip_to_int(dst),
                  proto=proto, sport=sport, dport=dport, length=length,
                  frag_offset=frag_offset, more_fragments=more_fragments, tcp_flags=tcp_flags)


def counts(table: Table, chain: str) -> list[int]:
    return [r.counters.packets for r in table.chains[chain].rules]


def policy_count(table: Table, chain: str) -> tuple[int, int]:
    c = table.chains[chain].counters
    return c.packets, c.bytes


# --- first match, counting-only rules, policies -----------------------------

def test_first_match_wins_and_later_rules_do_not_count() -> None:
    t = build("-A INPUT -p tcp -j ACCEPT", "-A INPUT -p tcp -j DROP", "-A INPUT -j DROP")
    r = evaluate(t, pkt(TCP))
    assert (r.verdict, r.hits, r.policy_chain) == ("ACCEPT", [("INPUT", 0)], None)
    r = evaluate(t, pkt(UDP))
    assert (r.verdict, r.hits) == ("DROP", [("INPUT", 2)])
    assert counts(t, "INPUT") == [1, 0, 1]
    assert policy_count(t, "INPUT") == (0, 0)


def test_rule_without_target_only_counts() -> None:
    t = build("-A INPUT -s 10.0.0.1", "-A INPUT -p tcp", "-A INPUT -p udp -j DROP")
    r = evaluate(t, pkt(TCP, length=100))
    assert (r.verdict, r.hits, r.policy_chain) == ("ACCEPT", [("INPUT", 0), ("INPUT", 1)], "INPUT")
    assert counts(t, "INPUT") == [1, 1, 0]
    assert [ru.counters.bytes for ru in t.chains["INPUT"].rules] == [100, 100, 0]
    assert policy_count(t, "INPUT") == (1, 100)
    assert evaluate(t, pkt(UDP, length=40)).verdict == "DROP"
    assert counts(t, "INPUT") == [2, 1, 1]
    assert policy_count(t, "INPUT") == (1, 100)


def test_policy_applies_on_fall_through_only() -> None:
    t = build("-P INPUT DROP", "-P FORWARD ACCEPT", "-A INPUT -p tcp --dport 22 -j ACCEPT")
    assert evaluate(t, pkt(TCP, dport=22)).verdict == "ACCEPT"
    r = evaluate(t, pkt(TCP, dport=23, length=52))
    assert (r.verdict, r.policy_chain) == ("DROP", "INPUT")
    assert evaluate(t, pkt(UDP, dport=22)).verdict == "DROP"
    assert policy_count(t, "INPUT") == (2, 52 + 60)
    r = evaluate(t, pkt(TCP, hook="FORWARD", o="eth1"))
    assert (r.verdict, r.policy_chain) == ("ACCEPT", "FORWARD")
    assert policy_count(t, "FORWARD") == (1, 60)
    assert policy_count(t, "OUTPUT") == (0, 0)


def test_count_false_leaves_counters_alone() -> None:
    t = build("-A INPUT -p tcp", "-P INPUT DROP")
    assert evaluate(t, pkt(TCP), count=False).verdict == "DROP"
    assert counts(t, "INPUT") == [0] and policy_count(t, "INPUT") == (0, 0)


# --- jumps, gotos, RETURN ------------------------------------------------------

def test_jump_and_return() -> None:
    t = build("-N sub", "-A sub -p udp -j RETURN", "-A sub -p tcp -j ACCEPT",
              "-A INPUT -j sub", "-A INPUT -j DROP")
    r = evaluate(t, pkt(UDP))
    assert (r.verdict, r.hits) == ("DROP", [("INPUT", 0), ("sub", 0), ("INPUT", 1)])
    r = evaluate(t, pkt(TCP))
    assert (r.verdict, r.hits) == ("ACCEPT", [("INPUT", 0), ("sub", 1)])
    # falling off the end of a user chain returns like RETURN
    r = evaluate(t, pkt(ICMP))
    assert (r.verdict, r.hits) == ("DROP", [("INPUT", 0), ("INPUT", 1)])
    assert counts(t, "sub") == [1, 1] and counts(t, "INPUT") == [3, 2]


def test_jump_to_empty_chain_continues() -> None:
    t = build("-N empty", "-A INPUT -j empty", "-A INPUT -j ACCEPT", "-P INPUT DROP")
    r = evaluate(t, pkt())
    assert (r.verdict, r.hits) == ("ACCEPT", [("INPUT", 0), ("INPUT", 1)])


def test_goto_from_builtin_chain_ends_at_policy() -> None:
    """Falling off (or RETURN in) a chain reached by -g from INPUT does not
    come back to INPUT's next rule: the kernel goes to the policy."""
    t = build("-N g", "-A g -p udp -j RETURN", "-A g -p icmp -j ACCEPT",
              "-A INPUT -g g", "-A INPUT -j ACCEPT", "-P INPUT DROP")
    for proto in (UDP, TCP):
        r = evaluate(t, pkt(proto))
        assert (r.verdict, r.policy_chain) == ("DROP", "INPUT")
        assert ("INPUT", 1) not in r.hits
    assert evaluate(t, pkt(ICMP)).verdict == "ACCEPT"
    assert counts(t, "INPUT") == [3, 0]
    assert counts(t, "g") == [1, 1]
    assert policy_count(t, "INPUT") == (2, 120)


def test_goto_returns_to_the_callers_caller() -> None:
    """INPUT -j a; a -g b; b falls off or RETURNs -> INPUT's next rule."""
    t = build("-N a", "-N b", "-A a -g b", "-A a -j ACCEPT",
              "-A b -p udp -j RETURN", "-A b -p icmp -j ACCEPT",
              "-A INPUT -j a", "-A INPUT -j DROP")
    for proto in (UDP, TCP):
        r = evaluate(t, pkt(proto))
        assert r.verdict == "DROP"
        assert r.hits[0] == ("INPUT", 0) and r.hits[-1] == ("INPUT", 1)
        assert ("a", 1) not in r.hits
    assert counts(t, "a") == [2, 0]
    r = evaluate(t, pkt(ICMP))
    assert (r.verdict, r.hits) == ("ACCEPT", [("INPUT", 0), ("a", 0), ("b", 1)])


def test_goto_keeps_the_stack_of_earlier_jumps() -> None:
    """INPUT -j a; a -j b; b -g c; c falls off -> back in a after -j b."""
    t = build("-N a", "-N b", "-N c", "-A c -p tcp -j ACCEPT",
              "-A b -g c", "-A b -j DROP", "-A a -j b", "-A a -p udp -j ACCEPT",
              "-A INPUT -j a", "-P INPUT DROP")
    r = evaluate(t, pkt(UDP))
    assert (r.verdict, r.hits) == ("ACCEPT", [("INPUT", 0), ("a", 0), ("b", 0), ("a", 1)])
    r = evaluate(t, pkt(ICMP))
    assert (r.verdict, r.policy_chain) == ("DROP", "INPUT")
    assert counts(t, "b") == [2, 0]


def test_return_in_builtin_chain_applies_policy() -> None:
    t = build("-P FORWARD DROP", "-A FORWARD -p tcp -j RETURN", "-A FORWARD -j ACCEPT")
    r = evaluate(t, pkt(TCP, hook="FORWARD", o="eth1", length=80))
    assert (r.verdict, r.policy_chain, r.hits) == ("DROP", "FORWARD", [("FORWARD", 0)])
    assert evaluate(t, pkt(UDP, hook="FORWARD", o="eth1")).verdict == "ACCEPT"
    assert counts(t, "FORWARD") == [1, 1]
    assert policy_count(t, "FORWARD") == (1, 80)


def test_nested_chains_return_level_by_level() -> None:
    t = build("-N l1", "-N l2", "-N l3",
              "-A l3 -p udp -j RETURN", "-A l3 -p tcp --dport 80 -j DROP",
              "-A l2 -j l3", "-A l2 -p udp -j ACCEPT",
              "-A l1 -j l2", "-A l1 -j DROP",
              "-A OUTPUT -j l1")
    r = evaluate(t, pkt(UDP, hook="OUTPUT", o="eth0"))
    assert (r.verdict, r.hits) == ("ACCEPT", [("OUTPUT", 0), ("l1", 0), ("l2", 0), ("l3", 0),
                                              ("l2", 1)])
    r = evaluate(t, pkt(TCP, hook="OUTPUT", o="eth0", dport=80))
    assert (r.verdict, r.hits[-1]) == ("DROP", ("l3", 1))
    # tcp to 443: falls off l3, l2, then l1's DROP
    r = evaluate(t, pkt(TCP, hook="OUTPUT", o="eth0", dport=443))
    assert (r.verdict, r.hits) == ("DROP", [("OUTPUT", 0), ("l1", 0), ("l2", 0), ("l1", 1)])
    assert counts(t, "l1") == [3, 1] and counts(t, "l2") == [3, 1] and counts(t, "l3") == [1, 1]


def test_user_chain_verdicts_end_traversal() -> None:
    t = build("-N sub", "-A sub -j ACCEPT", "-A INPUT -j sub", "-A INPUT -j DROP")
    assert evaluate(t, pkt()).verdict == "ACCEPT"
    assert counts(t, "INPUT") == [1, 0]


# --- LOG and REJECT ----------------------------------------------------------

def test_log_continues_reject_stops() -> None:
    t = build("-A INPUT -j LOG --log-prefix 'in: '",
              "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
              "-A INPUT -j REJECT",
              "-A INPUT -j ACCEPT")
    r = evaluate(t, pkt(TCP))
    assert (r.verdict, r.detail, r.hits) == ("REJECT", "tcp-reset", [("INPUT", 0), ("INPUT", 1)])
    r = evaluate(t, pkt(UDP))
    assert (r.verdict, r.detail) == ("REJECT", "icmp-port-unreachable")
    assert counts(t, "INPUT") == [2, 1, 1, 0]


@pytest.mark.parametrize("word,canonical", [
    ("icmp-net-unreachable", "icmp-net-unreachable"), ("net-unreach", "icmp-net-unreachable"),
    ("host-unreach", "icmp-host-unreachable"), ("proto-unreach", "icmp-proto-unreachable"),
    ("icmp-net-prohibited", "icmp-net-prohibited"), ("host-prohib", "icmp-host-prohibited"),
    ("admin-prohib", "icmp-admin-prohibited"), ("PORT", "icmp-port-unreachable"),
])
def test_reject_verdict_carries_the_type(word: str, canonical: str) -> None:
    t = build(f"-A INPUT -j REJECT --reject-with {word}")
    r = evaluate(t, pkt(UDP))
    assert (r.verdict, r.detail) == ("REJECT", canonical)
    data = t.chains["INPUT"].rules[0].target.data
    assert targets()["REJECT"].verdict(data, pkt()) == Verdict("reject", canonical)


def test_log_verdict_is_continue() -> None:
    t = build("-A INPUT -j LOG --log-level 1 --log-uid")
    data = t.chains["INPUT"].rules[0].target.data
    assert targets()["LOG"].verdict(data, pkt()) == Verdict("continue")
    assert evaluate(t, pkt()).policy_chain == "INPUT"


def test_log_in_user_chain_then_return() -> None:
    t = build("-N logdrop", "-A logdrop -j LOG", "-A logdrop -j DROP",
              "-A INPUT -p tcp --dport 23 -j logdrop")
    assert evaluate(t, pkt(TCP, dport=23)).verdict == "DROP"
    assert evaluate(t, pkt(TCP, dport=22)).verdict == "ACCEPT"
    assert counts(t, "logdrop") == [1, 1]


# --- interfaces, addresses, negation ---------------------------------------------

@pytest.mark.parametrize("iface,hit", [("eth0", True), ("eth10", True), ("eth", True),
                                       ("veth0", False), ("et", False), ("lo", False)])
def test_interface_wildcard(iface: str, hit: bool) -> None:
    t = build("-A INPUT -i eth+ -j DROP")
    assert (evaluate(t, pkt(i=iface)).verdict == "DROP") is hit
    t = build("-A INPUT ! -i eth+ -j DROP")
    assert (evaluate(t, pkt(i=iface)).verdict == "DROP") is not hit


def test_exact_interface_and_plus_alone() -> None:
    t = build("-A INPUT -i eth0 -j DROP")
    assert evaluate(t, pkt(i="eth0")).verdict == "DROP"
    assert evaluate(t, pkt(i="eth01")).verdict == "ACCEPT"
    assert evaluate(t, pkt(i="eth")).verdict == "ACCEPT"
    t = build("-A FORWARD -i + -o br+ -j DROP")   # "+" alone matches every name
    assert evaluate(t, pkt(hook="FORWARD", i="x", o="br-lan")).verdict == "DROP"
    assert evaluate(t, pkt(hook="FORWARD", i="x", o="eth1")).verdict == "ACCEPT"
    t = build("-A OUTPUT ! -o lo -j DROP")
    assert evaluate(t, pkt(hook="OUTPUT", o="lo")).verdict == "ACCEPT"
    assert evaluate(t, pkt(hook="OUTPUT", o="lo0")).verdict == "DROP"


def test_address_and_protocol_negation() -> None:
    t = build("-A INPUT ! -s 10.0.0.0/8 -j DROP",
              "-A INPUT -d 192.168.1.0/255.255.255.0 ! -p tcp -j REJECT",
              "-A INPUT ! -d 10.0.0.2 -j DROP")
    assert evaluate(t, pkt(src="11.0.0.1")).verdict == "DROP"
    assert evaluate(t, pkt(UDP, src="10.9.9.9", dst="192.168.1.7")).verdict == "REJECT"
    assert evaluate(t, pkt(TCP, src="10.9.9.9", dst="192.168.1.7")).verdict == "DROP"
    assert evaluate(t, pkt(TCP, src="10.9.9.9", dst="10.0.0.2")).verdict == "ACCEPT"
    assert counts(t, "INPUT") == [1, 1, 1]


def test_port_negation_and_ranges() -> None:
    t = build("-A INPUT -p tcp ! --dport 1000:2000 -j DROP", "-A INPUT -p tcp --sport :1023 -j REJECT")
    assert evaluate(t, pkt(dport=999)).verdict == "DROP"
    assert evaluate(t, pkt(dport=2001)).verdict == "DROP"
    assert evaluate(t, pkt(dport=1000, sport=1023)).verdict == "REJECT"
    assert evaluate(t, pkt(dport=2000, sport=1024)).verdict == "ACCEPT"


def test_source_list_expands_to_rules_with_own_counters() -> None:
    t = build("-A INPUT -s 10.0.0.1,10.0.0.3 -j DROP")
    assert evaluate(t, pkt(src="10.0.0.3")).verdict == "DROP"
    assert evaluate(t, pkt(src="10.0.0.2")).verdict == "ACCEPT"
    assert counts(t, "INPUT") == [0, 1]


# --- fragments ---------------------------------------------------------------

def test_fragment_flag() -> None:
    t = build("-A INPUT -f -j DROP", "-A INPUT ! -f -p udp -j REJECT")
    assert evaluate(t, pkt(UDP, frag_offset=185)).verdict == "DROP"
    # the first fragment has offset 0: not a "fragment" for -f
    assert evaluate(t, pkt(UDP, frag_offset=0, more_fragments=True)).verdict == "REJECT"
    assert evaluate(t, pkt(TCP)).verdict == "ACCEPT"
    assert counts(t, "INPUT") == [1, 1]


def test_port_matches_never_match_non_first_fragments() -> None:
    t = build("-A INPUT -p tcp --dport 80 -j DROP",
              "-A INPUT -p tcp ! --dport 80 -j DROP",
              "-A INPUT -p tcp -m tcp -j DROP",
              "-A INPUT -p tcp -j REJECT")
    # a later fragment carries no ports: neither --dport 80 nor ! --dport 80
    # nor an option-less tcp match applies; the plain protocol test does
    r = evaluate(t, pkt(TCP, dport=80, frag_offset=100))
    assert (r.verdict, r.hits) == ("REJECT", [("INPUT", 3)])
    assert evaluate(t, pkt(TCP, dport=80, more_fragments=True)).verdict == "DROP"
    assert counts(t, "INPUT") == [1, 0, 0, 1]


# --- whole-rule-set sanity -----------------------------------------------------

def test_every_packet_gets_exactly_one_terminal_outcome() -> None:
    """Counter conservation: per built-in chain, packets entering = packets
    ending in a rule verdict + packets counted by the policy."""
    t = build("-N web", "-N log", "-A log -j LOG", "-A log -j DROP",
              "-A web -p tcp --dport 80 -j ACCEPT", "-A web -p tcp --dport 443 -j ACCEPT",
              "-A web -j RETURN",
              "-A INPUT -i lo -j ACCEPT", "-A INPUT -p tcp -j web", "-A INPUT -p udp -g log",
              "-A INPUT -p icmp -j REJECT --reject-with icmp-admin-prohibited",
              "-P INPUT DROP")
    outcomes: dict[str, int] = {}
    packets = [pkt(p, i=i, dport=d) for p in (TCP, UDP, ICMP, 47) for i in ("lo", "eth0")
               for d in (22, 80, 443)]
    for p in packets:
        r: Result = evaluate(t, p)
        key = r.verdict + ("/policy" if r.policy_chain else "")
        outcomes[key] = outcomes.get(key, 0) + 1
    assert sum(outcomes.values()) == len(packets) == 24
    # lo: 12 accepted; eth0: tcp 80/443 accepted, tcp 22 -> policy,
    # udp -> log chain drop, icmp -> reject, proto 47 -> policy
    assert outcomes == {"ACCEPT": 14, "DROP/policy": 4, "DROP": 3, "REJECT": 3}
    assert policy_count(t, "INPUT")[0] == 4
    assert counts(t, "log") == [3, 3]
    assert counts(t, "web") == [1, 1, 1]


def test_tcp_fragment_at_offset_one_is_dropped_on_the_spot() -> None:
    """xt_tcpudp hot-drops a TCP fragment at offset 1 when a tcp match looks
    at it: the verdict is DROP, that rule does not count, and no later rule
    or policy sees the packet. Rules without a tcp match let it pass."""
    t = build("-A FORWARD -p tcp", "-A FORWARD -p tcp ! --dport 22 -j ACCEPT",
              "-A FORWARD -j ACCEPT")
    r = evaluate(t, pkt(TCP, hook="FORWARD", o="eth1", frag_offset=1))
    assert (r.verdict, r.hits, r.policy_chain) == ("DROP", [("FORWARD", 0)], None)
    assert counts(t, "FORWARD") == [1, 0, 0]
    assert evaluate(t, pkt(UDP, hook="FORWARD", o="eth1", frag_offset=1)).verdict == "ACCEPT"
    assert evaluate(t, pkt(TCP, hook="FORWARD", o="eth1", frag_offset=2)).verdict == "ACCEPT"
    assert counts(t, "FORWARD") == [2, 0, 2]
