"""Differential tests of the command line against real iptables-legacy.

Each sequence runs in two fresh namespaces, one per tool; stdout, stderr
and the exit status of every command must be identical after normalising
the program name, and so must the final ``-S`` and
``-L -v -x -n --line-numbers``. Sequences are grouped by topic; a
sequence keeps going after a mismatch so the report shows all of them."""
from __future__ import annotations

import pytest

from tests.support.diffrun import DiffRunner, report
from tests.support.pair import pair

LONG30 = "abcdefghij" * 3          # 30 characters: too long for -N
LONG29 = LONG30[:29]
LONG28 = LONG30[:28]

SEQUENCES: dict[str, list[str]] = {
    # the kernel refuses jumps and gotos into built-in chains
    "jump_into_builtin_chain": [
        "-A INPUT -j OUTPUT", "-A INPUT -g FORWARD", "-N X", "-A X -j INPUT", "-I X -j FORWARD",
        "-A X -j ACCEPT", "-R X 1 -j OUTPUT", "-A INPUT -j X", "-S",
    ],
    # iptables reads the whole word for an attached -i/-o argument, option included
    "attached_interface_arguments": [
        "-A FORWARD -ilo", "-A FORWARD --out-interface=lo", "-A FORWARD -i lo",
        "-C FORWARD -ilo", "-D FORWARD -ilo", "-L -v -n",
    ],
    "chains_create_rename_delete": [
        "-N foo", "-N foo", "-E foo bar", "-N baz", "-E bar baz", "-E INPUT x",
        "-E nope x", "-E nope INPUT", "-E baz DROP", "-E baz RETURN", "-E baz QUEUE",
        "-E baz ACCEPT", "-E baz", "-E baz c d", "-X INPUT", "-A INPUT -j baz", "-X baz",
        "-A baz -j ACCEPT", "-X", "-F", "-X", "-X", "-X nope",
    ],
    "chain_rename_long_names": [
        "-N a", f"-E a {LONG30}", "-S", f"-E {LONG29} {LONG30}k", f"-E {LONG29} {LONG30}kl",
        f"-E {LONG29} b", "-S",
    ],
    "chain_references_follow_rename": [
        "-N a", "-N b", "-A INPUT -j a", "-A a -j b", "-A b -j a", "-S", "-A b -j RETURN",
        "-E a z", "-S", "-L", "-X z", "-D INPUT 1", "-X z", "-L -n", "-A b -g z",
        "-X b", "-X z", "-F b", "-X", "-X -v",
    ],
    "chain_name_checks": [
        "-N c", "-A INPUT -g DROP", "-A INPUT -g nochain", "-A INPUT -g c",
        "-A INPUT -j NONEXISTENT", f"-N {LONG30}", f"-N {LONG29}", f"-N {LONG28}",
        "-N -foo", "-N !foo", "-N DROP", "-N ACCEPT", "-N RETURN", "-N QUEUE", "-N tcp",
        "-N 'a b'", "-N ''", f"-A {LONG29} -j ACCEPT", f"-L {LONG29}",
        f"-A INPUT -j {LONG29}", f"-A INPUT -j {LONG28}", "-A INPUT -j ''",
    ],
    "flush_zero_with_and_without_chain": [
        "-N a", "-N b", "-A a -j ACCEPT", "-A b -c 3 4", "-X", "-F a", "-Z", "-Z a",
        "-Z INPUT 1", "-A INPUT -c 1 2", "-Z INPUT 1", "-Z INPUT 2", "-Z INPUT 0",
        "-Z nope", "-F nope", "-L INPUT 1", "-S INPUT 1", "-S INPUT 2", "-F -v", "-Z -v",
        "-Z a -v", "-F a -v", "-Z b 1", "-Z b 1 2",
    ],
    "insert_replace_delete_by_number": [
        "-A INPUT -j ACCEPT", "-I INPUT 0 -j DROP", "-I INPUT -1 -j DROP",
        "-I INPUT x -j DROP", "-I INPUT 3 -j DROP", "-I INPUT 2 -j DROP",
        "-I INPUT 1 -j RETURN", "-I INPUT 4 -j RETURN", "-I INPUT 9 -j RETURN",
        "-R INPUT 5 -j DROP", "-R INPUT 6 -j DROP", "-R INPUT 0 -j DROP", "-R INPUT",
        "-R INPUT -j DROP", "-R INPUT x -j DROP", "-D INPUT 9", "-D INPUT 0",
        "-D INPUT abc", "-D INPUT -1", "-D INPUT 1 2", "-D INPUT 1 -j ACCEPT",
        "-D INPUT 2", "-R INPUT 1 -s 1.1.1.1", "-A INPUT 2 -j ACCEPT",
        "-I INPUT 99999999999 -j DROP", "-D INPUT 0x1", "-D INPUT 1",
    ],
    "delete_and_check_by_spec": [
        "-A INPUT -j ACCEPT", "-A INPUT -s 1.2.3.4 -j DROP", "-D INPUT -j DROP",
        "-D INPUT -s 1.2.3.4/32 -j DROP", "-D INPUT -s 1.2.3.4 -j DROP",
        "-C INPUT -j ACCEPT", "-C INPUT -j DROP", "-C INPUT 1", "-C INPUT -v -j ACCEPT",
        "-C INPUT -s 1.1.1.1,2.2.2.2 -j ACCEPT", "-D INPUT -j ACCEPT", "-D INPUT -j ACCEPT",
        "-D nope -j ACCEPT", "-C nope -j ACCEPT",
    ],
    "policies": [
        "-P INPUT FOO", "-N u", "-P u ACCEPT", "-P INPUT ACCEPT -c 5 6", "-L -v",
        "-P INPUT DROP", "-L -v", "-P FORWARD RETURN", "-P FORWARD QUEUE", "-P INPUT",
        "-P nope DROP", "-P OUTPUT drop", "-P OUTPUT DROP -c 1", "-P OUTPUT DROP -c 1,2",
        "-L -v", "-P INPUT ACCEPT -v", "-P INPUT ACCEPT -n", "-P ! INPUT ACCEPT",
        "-P INPUT ACCEPT extra",
    ],
    "policy_counters_across_commits": [
        "-P INPUT ACCEPT -c 5 6", "-L -v", "-X", "-L -v", "-C INPUT", "-L -v", "-N x",
        "-L -v", "-P FORWARD DROP -c 7 8", "-L -Z", "-L -v", "-P INPUT DROP -c 1 2",
        "-A INPUT -j ACCEPT", "-L -v", "-S -v",
    ],
    "set_counters": [
        "-A INPUT -c 10 20 -j ACCEPT", "-I INPUT -c 1,2", "-R INPUT 1 -c 3 4 -j DROP",
        "-A INPUT -c 5", "-A INPUT -c x 5", "-A INPUT -c 5 y", "-A INPUT -c -1 -2",
        "-A INPUT -c 18446744073709551615 1", "-A INPUT -c 123456 99999999999",
        "-L -v", "-L -v -x", "-S -v", "-S INPUT 2 -v", "-L INPUT 1 -v", "-Z INPUT 2",
        "-S -v", "-L -c 1 2", "-N c -c 1 2", "-D INPUT 1 -c 1 2",
    ],
    "listing_flags": [
        "-A INPUT -s 1.2.3.4 -j ACCEPT", "-A INPUT -d 10.0.0.0/8 -i eth0 -j DROP",
        "-A FORWARD -o eth1 -p tcp --dport 22", "-N user", "-A user -j RETURN",
        "-A OUTPUT -j user", "-L", "-L -n", "-L -v", "-L -v -x", "-L --line-numbers",
        "-L INPUT 1", "-L INPUT 2 -v", "-L INPUT 3", "-S INPUT 1", "-S INPUT 3", "-S -v",
        "-nvL", "-Ln", "-L -n INPUT", "-L user", "-vnxL", "-L -x", "-L --line -n",
        "-L INPUT -n --line-numbers -v -x", "-S user", "-S nope", "-L nope",
        "-L INPUT 0", "-S INPUT 0", "-L INPUT x", "-L -Z", "-L -v", "-L INPUT -Z",
        "-L -Z INPUT 1", "-S -Z", "-Z -L", "-Z INPUT 1 -L",
    ],
    "long_options_and_abbreviations": [
        "--app INPUT -j DROP", "--list=INPUT", "--line -L", "--list INPUT --line",
        "--appe INPUT", "--a INPUT", "--de INPUT", "--list-r", "--li", "--lis",
        "--line-n -L", "--n -L", "--v", "--numer -L", "--exa -L -v",
        "--src 1.2.3.4 -A INPUT", "--dst 1.2.3.4 -A INPUT", "--in eth0 -A INPUT",
        "--out eth0 -A OUTPUT", "--set 1 2 -A INPUT", "--go x -A INPUT", "--new-chain x",
        "--go x -A INPUT", "--rename-chain x y", "--delete-chain y", "--policy INPUT DROP",
        "--list-rules=INPUT", "--flush=INPUT", "--zero=INPUT", "--insert INPUT --jump ACCEPT",
        "--replace INPUT 1 --protocol tcp --destination-port 80", "--delete INPUT 1",
        "--check INPUT", "--numeric=1 -L", "--list INPUT=1", "--fragment -A INPUT",
        "--table=filter -L", "--verbose --list", "--exact --list", "--version=3",
        "--modprobe=/bin/true -A INPUT", "--ipv4 -A INPUT", "--",  "-L --", "-L -- INPUT",
    ],
    "address_list_expansion": [
        "-A INPUT -s 1.1.1.1,2.2.2.2 -d 3.3.3.3,4.4.4.4 -j ACCEPT",
        "-I INPUT -s 5.5.5.5,6.6.6.6 -d 7.7.7.7,8.8.8.8", "-L -n --line-numbers",
        "-D INPUT -s 1.1.1.1 -d 4.4.4.4 -j ACCEPT",
        "-D INPUT -s 5.5.5.5,6.6.6.6 -d 7.7.7.7,8.8.8.8",
        "-R INPUT 1 -s 1.1.1.1,2.2.2.2 -j DROP", "-A INPUT ! -s 1.1.1.1,2.2.2.2",
        "-A INPUT ! -d 1.1.1.1,2.2.2.2", "-A INPUT -s 1.1.1.1,1.1.1.1",
        "-A INPUT -s 1.1.1.1, -j DROP", "-A INPUT -s ,1.1.1.1", "-I INPUT 2 -s 9.9.9.9,8.8.8.8",
        "-A INPUT -v -s 1.2.3.4,5.6.7.8 -d 9.9.9.9,10.10.10.10 -j DROP",
        "-D INPUT -v -s 1.2.3.4,5.6.7.8 -d 9.9.9.9,10.10.10.10 -j DROP",
        "-C INPUT -s 1.1.1.1,2.2.2.2 -d 3.3.3.3 -j ACCEPT",
    ],
    "inversion_placement": [
        "-A INPUT ! ! -s 1.2.3.4", "-A INPUT ! -j ACCEPT", "-A INPUT -s 1.1.1.1 !",
        "-A INPUT ! -g x", "-A INPUT ! -m tcp", "-A INPUT ! -t filter", "! -A INPUT",
        "-A INPUT ! -v", "-A INPUT ! -n", "-A INPUT ! -c 1 2", "-A INPUT ! -x",
        "-A INPUT -s ! 1.2.3.4", "-A INPUT ! -s 1.2.3.4 ! -d 5.6.7.8 ! -p tcp ! -i lo",
        "-A FORWARD ! -o eth+ ! -f", "-A INPUT -p tcp ! --dport 80 ! --sport 1",
        "-A INPUT -p tcp ! ! --dport 80", "-L !", "! -L", "-L ! INPUT", "-A INPUT ! -4",
        "-A INPUT ! -w", "-A INPUT ! --line-numbers", "-A INPUT -j ACCEPT !",
    ],
    "command_and_option_conflicts": [
        "-A INPUT -D INPUT", "-L -n -A INPUT", "-F -n", "-X -v", "-A", "-A INPUT --foo",
        "-A INPUT -s", "-A INPUT -d", "-L -A INPUT", "-N x -X x", "-A INPUT -L",
        "-F -L", "-Z -S", "-S -Z INPUT", "-E a", "-I", "-I INPUT -n", "-A INPUT -x",
        "-A INPUT --line-numbers", "-L -s 1.1.1.1", "-L -j ACCEPT", "-L -p tcp",
        "-L -i eth0", "-L -f", "-L -c 1 2", "-S -n", "-S -x", "-D INPUT 1 -s 1.1.1.1",
        "-X foo -n", "-P INPUT DROP -s 1.1.1.1", "", "-n", "-v", "-s 1.1.1.1",
        "-j ACCEPT", "foo", "INPUT", "-A INPUT foo", "-A INPUT -j ACCEPT extra",
        "-L INPUT 1 2", "-Q", "-A INPUT -Q", "-A INPUT -z", "--foo", "--foo=bar",
        "-A INPUT -j ACCEPT -j DROP", "-A INPUT -s 1.1.1.1 -s 2.2.2.2",
        "-A INPUT -p tcp -p udp", "-A INPUT -i a -i b", "-A INPUT -f -f", "-L -n -n",
        "-L -x -x", "-L --line-numbers --line-numbers", "-A INPUT -c 1 2 -c 3 4",
        "-A INPUT -g", "-A INPUT -j", "-A INPUT -m", "-A INPUT -p", "-A INPUT -i",
        "-A INPUT -o", "-A INPUT -c", "-t", "-A INPUT -t",
    ],
    "interfaces": [
        "-A INPUT -o eth0", "-A OUTPUT -i eth0", "-A FORWARD -i eth0 -o eth1",
        "-A INPUT -i abcdefghijklmnop", "-A INPUT -i abcdefghijklmno", "-A INPUT -i eth+",
        "-A INPUT ! -i +", "-A INPUT -i +", "-A INPUT -o ''", "-A FORWARD -i ''",
        "-A FORWARD -i 'eth 0'", "-A FORWARD -i eth0/1", "-A FORWARD -i 'eth:1'",
        "-A FORWARD -o eth.1+", "-A FORWARD -i a+b", "-A FORWARD -i .", "-A FORWARD -i ..",
        "-A FORWARD -o abcdefghijklmno+", "-N uc", "-A uc -i x -o y",
        "-I INPUT -o lo", "-R INPUT 1 -o lo", "-D INPUT -o lo", "-C OUTPUT -i lo",
        "-L -v", "-L -v -n",
    ],
    "addresses": [
        "-A INPUT -s 10.0.0.0/8", "-A INPUT -s 10.0.0.0/255.0.0.0",
        "-A INPUT -s 10.0.0.0/255.0.255.0", "-A INPUT -s 0/0", "-A INPUT ! -s 0.0.0.0/0",
        "-A INPUT -s localhost", "-A INPUT -s nosuchhost.invalid", "-A INPUT -s 1.2.3.4/33",
        "-A INPUT -s 1.2.3", "-A INPUT -d 10.1.2.3/16", "-A INPUT -s 1.2.3.4/-1",
        "-A INPUT -s 1.2.3.256", "-A INPUT -s 1.2.3.4/0", "-A INPUT -d 1.2.3.4/32",
        "-A INPUT -s 1.2.3.4/31", "-A INPUT -s 1.2.3.4/255.255.255.254",
        "-A INPUT -s 1.2.3.4/0.0.0.255", "-A INPUT -s 1.2.3.4/", "-A INPUT -s /8",
        "-A INPUT -s 1", "-A INPUT -s 1.2", "-A INPUT -s 0x01020304", "-A INPUT -s 01.02.03.04",
        "-A INPUT -d 255.255.255.255", "-A INPUT -d 224.0.0.0/4", "-A INPUT ! -d 0/0",
        "-A INPUT -s 1.2.3.4/255.255.255.255", "-A INPUT -s 1.2.3.4/8x",
        "-L", "-L -n", "-L -v",
    ],
    "protocols": [
        "-A INPUT -p 6", "-A INPUT -p TCP", "-A INPUT -p udp", "-A INPUT -p 17",
        "-A INPUT -p icmp", "-A INPUT -p 0", "-A INPUT ! -p 0", "-A INPUT -p all",
        "-A INPUT -p ALL", "-A INPUT ! -p all", "-A INPUT -p 256", "-A INPUT -p foo",
        "-A INPUT -p 47", "-A INPUT -p 255", "-A INPUT -p gre", "-A INPUT -p esp",
        "-A INPUT ! -p tcp", "-A INPUT -p -1", "-A INPUT -p 0x6", "-A INPUT -p 06",
        "-A INPUT -p ''", "-A INPUT -p Icmp", "-A INPUT -p ipv6-icmp", "-A INPUT -p 58",
        "-A INPUT -p sctp", "-A INPUT -p 132", "-A INPUT -p udplite", "-A INPUT -p ah",
        "-L", "-L -n", "-L -v",
    ],
    "fragments_and_verbose_rules": [
        "-A INPUT -f", "-A INPUT ! -f", "-A INPUT -v -s 1.2.3.4 -j ACCEPT",
        "-D INPUT -v -s 1.2.3.4 -j ACCEPT", "-A INPUT -v -p tcp --dport 80",
        "-I INPUT -v -i eth0 ! -f -j DROP", "-R INPUT 1 -v -o eth1 -f",
        "-C INPUT -v -p tcp --dport 80", "-A INPUT -v -s 1.2.3.4/24 ! -d 5.6.7.8 -j RETURN",
        "-N ch", "-A INPUT -v -j ch", "-A INPUT -v -g ch",
        "-A INPUT -p tcp -f --dport 80",
    ],
    "tcp_rules": [
        "-A INPUT -s 1.2.3.4 -p tcp --dport 22 -j ACCEPT",
        "-A INPUT -p tcp --sport 1:1000 ! --dport 5", "-A INPUT -p tcp --syn",
        "-A INPUT -p tcp --tcp-flags SYN,ACK SYN", "-A INPUT -p tcp ! --syn -j DROP",
        "-A INPUT -m tcp -p tcp --dport 80", "-A INPUT -m tcp --dport 80",
        "-A INPUT -p tcp --dport 80 --dport 81", "-A INPUT -p tcp --dport 99999",
        "-A INPUT -p tcp --dport http", "-A INPUT -p tcp --dport nosuch",
        "-A INPUT -p 6 --dport 80", "-A INPUT -p TCP --sport 80", "-A INPUT --dport 80",
        "-A INPUT -p tcp --tcp-option 2", "-A INPUT -p tcp --dport :80", "-A INPUT -p tcp --dport 80:",
        "-A INPUT -p tcp --dport 90:80", "-A INPUT -p tcp --dpo 80", "-A INPUT -p tcp --d 80",
        "-L", "-L -v", "-S -v", "-L --line-numbers -v -n", "-L -x -v",
        "-D INPUT -p tcp --dport 80 -m tcp", "-C INPUT -p tcp --syn",
    ],
    "version_and_help": [
        "-V", "! -V", "-V -L", "-L -V", "--version", "-h", "--help", "-A INPUT -h",
        "-p tcp -h", "-j ACCEPT -h", "-p tcp -m tcp -j DROP -h", "-p 6 -h", "-h foo",
        "-hfoo", "--help=foo", "-L -h",
    ],
    "ipv4_ipv6_wait_options": [
        "-4 -A INPUT", "-6 -A INPUT", "-4 -L", "-6 -L", "-w -A INPUT", "-w 5 -A INPUT",
        "-w x -A INPUT", "-W 10 -A INPUT", "-w -W 10 -A INPUT", "-w 1 -W 1000000 -A INPUT",
        "-W", "-w -W x -L", "-w5 -L", "-w 0 -L", "-w -1 -L", "--wait=3 -L", "--wait 3 -L",
        "-W1 -w -L", "--wait-interval=5 -w -L", "-w 2x -L", "-L -w", "-L -w 1 INPUT",
    ],
    "table_option": [
        "-L -t filter", "-t filter -L", "-t foo -L", "-t FILTER -L", "-t filter -t filter -L",
        "-t '' -L",
    ],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_sequence_matches_iptables(name: str) -> None:
    with pair("bpfd") as p:
        runner = DiffRunner(p)
        try:
            mismatches = runner.sequence(SEQUENCES[name])
        finally:
            runner.close()
    assert not mismatches, report(mismatches)


@pytest.mark.parametrize("table", ["nat", "mangle", "raw", "security"])
def test_other_tables_refused(table: str) -> None:
    """iptables knows these tables; bpf-iptables cannot enforce them yet,
    so it refuses them with exit 2 instead of accepting them."""
    with pair("bpft") as p:
        runner = DiffRunner(p)
        try:
            real, ours = runner.both(["-t", table, "-A", "OUTPUT", "-j", "ACCEPT"])
        finally:
            runner.close()
    assert real.returncode == 0
    assert ours.returncode == 2
    assert ours.stdout == ""
    assert ours.stderr == (f"PROG: table `{table}' is not supported by iptables\n"
                           "Try `PROG -h' or 'PROG --help' for more information.\n")


def test_rename_onto_a_truncated_twin_is_refused() -> None:
    """The kernel keeps 29 bytes of a chain name, so -E to a longer name can
    give two chains one name in iptables; bpf-iptables refuses that rename
    instead (no command could address either chain afterwards)."""
    with pair("bpft") as p:
        runner = DiffRunner(p)
        try:
            for c in ("-N b", "-N a", f"-E b {LONG30}a"):
                assert runner.compare(c) is None
            _, ours = runner.both(["-E", "a", f"{LONG30}b"])
            _, listed = runner.both(["-S"])
        finally:
            runner.close()
    assert (ours.returncode, ours.stderr) == (1, "PROG: File exists.\n")
    assert listed.stdout.endswith(f"-N a\n-N {LONG29}\n")


# -- random command sequences ---------------------------------------------------

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BUILTINS = ["INPUT", "FORWARD", "OUTPUT"]
USER_CHAINS = ["u1", "u2", "u3"]
CHAINS = BUILTINS + USER_CHAINS + ["nx"]          # nx never exists


def _inv(st_args: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(st.booleans(), st_args).map(lambda t: (["!"] if t[0] else []) + t[1])


addresses = st.sampled_from([
    "1.2.3.4", "10.0.0.0/8", "10.1.2.3/16", "192.168.0.0/255.255.0.0", "0/0",
    "1.1.1.1,2.2.2.2", "172.16.0.1/255.0.255.0", "localhost", "1.2.3.4/33",
])
ports = st.sampled_from(["22", "80", "1:1024", "1024:", ":99", "http", "65536", "5:3"])
flags = st.sampled_from(["SYN SYN", "SYN,ACK SYN", "ALL NONE", "FIN,SYN,RST,ACK SYN", "FOO SYN"])

tcp_options = st.lists(st.one_of(
    _inv(ports.map(lambda p: ["--dport", p])),
    _inv(ports.map(lambda p: ["--sport", p])),
    _inv(st.just(["--syn"])),
    _inv(flags.map(lambda f: ["--tcp-flags", *f.split()])),
), max_size=2).map(lambda parts: [a for part in parts for a in part])

udp_options = st.lists(st.one_of(
    _inv(ports.map(lambda p: ["--dport", p])),
    _inv(ports.map(lambda p: ["--sport", p])),
), max_size=2).map(lambda parts: [a for part in parts for a in part])

icmp_options = st.one_of(st.just([]), _inv(st.sampled_from(
    ["echo-request", "8", "3/1", "any", "bogus"]).map(lambda t: ["--icmp-type", t])))

protocol = st.one_of(
    st.just([]),
    _inv(st.sampled_from(["all", "icmp", "17", "0", "TCP"]).map(lambda p: ["-p", p])),
    st.tuples(st.sampled_from(["tcp", "6"]), tcp_options).map(lambda t: ["-p", t[0], *t[1]]),
    st.tuples(st.sampled_from(["udp", "17"]), udp_options).map(lambda t: ["-p", t[0], *t[1]]),
    icmp_options.map(lambda o: ["-p", "icmp", *o]),
    st.sampled_from(["80", "80,443", "1:5,9"]).map(
        lambda d: ["-p", "tcp", "-m", "multiport", "--dports", d]),
)

# other matches the registry has (the extension helpers test them in depth)
extra_match = st.one_of(
    st.just([]),
    st.sampled_from(["hello", "two words"]).map(lambda c: ["-m", "comment", "--comment", c]),
    _inv(st.sampled_from(["0x1", "0x10/0xf0"]).map(lambda m: ["-m", "mark", "--mark", m])),
)

target = st.one_of(
    st.just([]),
    st.sampled_from(["ACCEPT", "DROP", "RETURN", *USER_CHAINS, "nx"]).map(lambda t: ["-j", t]),
    st.sampled_from([*USER_CHAINS, "ACCEPT"]).map(lambda t: ["-g", t]),
)

rule_spec = st.tuples(
    st.one_of(st.just([]), _inv(addresses.map(lambda a: ["-s", a]))),
    st.one_of(st.just([]), _inv(addresses.map(lambda a: ["-d", a]))),
    protocol,
    st.one_of(st.just([]), _inv(st.sampled_from(["eth0", "lo", "eth+", "+"]).map(
        lambda i: ["-i", i]))),
    st.one_of(st.just([]), _inv(st.sampled_from(["eth1", "veth+"]).map(lambda i: ["-o", i]))),
    st.one_of(st.just([]), _inv(st.just(["-f"]))),
    extra_match,
    target,
    st.one_of(st.just([]), st.just(["-c", "7", "99"])),
    st.one_of(st.just([]), st.just(["-v"])),
).map(lambda parts: [a for part in parts for a in part])

chain = st.sampled_from(CHAINS)
rulenum = st.sampled_from(["1", "2", "3", "0", "-1", "x"])
list_flags = st.lists(st.sampled_from(["-n", "-v", "-x", "--line-numbers"]), max_size=3,
                      unique=True)

command = st.one_of(
    st.tuples(chain, rule_spec).map(lambda t: ["-A", t[0], *t[1]]),
    st.tuples(chain, st.one_of(st.just([]), rulenum.map(lambda n: [n])), rule_spec).map(
        lambda t: ["-I", t[0], *t[1], *t[2]]),
    st.tuples(chain, rulenum, rule_spec).map(lambda t: ["-R", t[0], t[1], *t[2]]),
    st.tuples(chain, rule_spec).map(lambda t: ["-D", t[0], *t[1]]),
    st.tuples(chain, rulenum).map(lambda t: ["-D", *t]),
    st.tuples(chain, rule_spec).map(lambda t: ["-C", t[0], *t[1]]),
    chain.map(lambda c: ["-N", c]),
    st.one_of(st.just([]), chain.map(lambda c: [c])).map(lambda c: ["-X", *c]),
    st.tuples(chain, chain).map(lambda t: ["-E", *t]),
    st.one_of(st.just([]), chain.map(lambda c: [c])).map(lambda c: ["-F", *c]),
    st.one_of(st.just([]), chain.map(lambda c: [c]),
              st.tuples(chain, rulenum).map(list)).map(lambda c: ["-Z", *c]),
    st.tuples(chain, st.sampled_from(["ACCEPT", "DROP", "RETURN"]),
              st.one_of(st.just([]), st.just(["-c", "3", "4"]))).map(
        lambda t: ["-P", t[0], t[1], *t[2]]),
    st.tuples(st.sampled_from(["-L", "-S"]), st.one_of(
        st.just([]), chain.map(lambda c: [c]), st.tuples(chain, rulenum).map(list)),
        list_flags).map(lambda t: [t[0], *t[1], *(t[2] if t[0] == "-L" else [])]),
)


# Every mismatch of an example is reported at once, and each example costs
# dozens of process starts, so shrinking would cost minutes for little.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


@pytest.fixture(scope="module")
def shared_pair():
    """One namespace pair for all random examples; each example resets it."""
    with pair("bpfh") as p:
        runner = DiffRunner(p)
        try:
            yield runner
        finally:
            runner.close()


@settings(max_examples=100, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(commands=st.lists(command, min_size=1, max_size=8))
def test_random_sequences_match_iptables(shared_pair: DiffRunner, commands: list[list[str]]) -> None:
    # start empty but for two user chains, so jumps and -g have somewhere to go
    mismatches = shared_pair.restore_reset(USER_CHAINS[:2])
    mismatches += shared_pair.sequence(commands, final=("-S -v", "-L -v -x -n --line-numbers"))
    assert not mismatches, report(mismatches)
