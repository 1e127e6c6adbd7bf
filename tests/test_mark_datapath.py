"""-m mark in the eBPF data path (filter.c FIELD_MARK, fields.add_mark).

The TC classifier tests ``skb->mark`` per candidate; BPF_PROG_TEST_RUN
sets the mark through the ``__sk_buff`` context, and verdicts and counters
are compared with the reference model. At XDP there is no mark: the XDP
classifier tests mark 0, and an update says so. Real traffic: sockets
with SO_MARK at OUTPUT, and over lo into INPUT in --mode tc, next to
iptables-legacy."""
from __future__ import annotations

import ctypes
import re
import sys

import pytest

from bpf_iptables.datapath import testrun as T
from bpf_iptables.datapath.compiler import Shape, compile_chain
from bpf_iptables.datapath.harness import table_from_lines
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.errors import NotSupported
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from tests.support.netns import bpf_command, entered, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

TC_ACT_OK, TC_ACT_SHOT = 0, 2


class SkBuff(ctypes.Structure):
    """struct __sk_buff up to ``tc_index`` (BPF_PROG_TEST_RUN takes a
    prefix of it; ``mark`` is one of the fields it copies in)."""

    _fields_ = [(n, ctypes.c_uint32) for n in (
        "len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present", "vlan_tci",
        "vlan_proto", "priority", "ingress_ifindex", "ifindex", "tc_index")]


def tc_run(fd: int, data: bytes, mark: int) -> int:
    """One BPF_PROG_TEST_RUN of a TC program with skb->mark = ``mark``."""
    data_in = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    attr = T._TestAttr()
    attr.prog_fd = fd
    attr.data_in, attr.data_size_in = ctypes.addressof(data_in), len(data)
    attr.data_out, attr.data_size_out = ctypes.addressof(out), len(out)
    attr.repeat = 1
    ctx = SkBuff()
    ctx.mark = mark
    attr.ctx_in, attr.ctx_size_in = ctypes.addressof(ctx), ctypes.sizeof(ctx)
    rc = T._libc.syscall(T.SYS_BPF, T.BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    assert rc == 0, ctypes.get_errno()
    return attr.retval


MARKS = [0, 1, 2, 0x4000, 0x4001, 0x8000, 0xC000, 0xFF, 0xFFFFFFFF, 0x12345678]
RULE_SETS = [
    ["-A OUTPUT -m mark --mark 0x4000/0x4000 -j ACCEPT", "-P OUTPUT DROP"],
    ["-A OUTPUT -m mark ! --mark 0x1", "-A OUTPUT -m mark --mark 0xff -j DROP",
     "-A OUTPUT -m mark ! --mark 0x0/0xf000 -j DROP"],
    # a value outside its mask never matches; inverted it always does
    ["-A OUTPUT -m mark --mark 0xff/0xf -j DROP", "-A OUTPUT -m mark ! --mark 0x12/0x2",
     "-A OUTPUT -m mark --mark 0x0/0x0"],
    # tests along a path: the jump's and the rule's, merged or kept apart
    ["-N k", "-A OUTPUT -m mark --mark 0x4000/0x4000 -j k", "-A k -m mark --mark 0x1/0x1 -j DROP",
     "-A k -m mark ! --mark 0x4001 -j ACCEPT", "-A k -m mark --mark 0x0/0x4000 -j DROP",
     "-A OUTPUT -m mark ! --mark 0x8000/0x8000 -m mark ! --mark 0x0 -j DROP"],
    ["-N k", "-A OUTPUT -m mark ! --mark 0x0 -j k", "-A k -m mark --mark 0x2/0x3 -j RETURN",
     "-A k -m mark --mark 0xff/0xff -j DROP", "-A k -p udp -j ACCEPT", "-P OUTPUT DROP"],
]


@pytest.fixture(scope="module")
def progs():
    with entered("bpfmk"):
        shape = Shape(nwords=1, steps=40, ncounters=16, fields=frozenset({"proto", "mark"}),
                      proto_max=4)
        tc, xdp = LoadedProgram(shape, tc=True), LoadedProgram(shape)
        yield tc, xdp
        tc.close()
        xdp.close()


def packet(mark: int, hook: str = "OUTPUT") -> Packet:
    return Packet(hook=hook, src=ip_to_int("10.0.0.1"), dst=ip_to_int("10.0.0.2"), proto=17,
                  sport=5, dport=9, length=40, mark=mark)


@pytest.mark.parametrize("rules", RULE_SETS, ids=range(len(RULE_SETS)))
def test_tc_verdicts_and_counters_match_the_reference(progs, rules):
    tc, _ = progs
    table = table_from_lines(rules)
    shape = Shape(nwords=1, steps=40, ncounters=16, fields=frozenset({"proto", "mark"}),
                  proto_max=4)
    tc.install(compile_chain(table, "OUTPUT", {"lo": 1}, shape))
    for mark in MARKS:
        pkt = packet(mark)
        want = evaluate(table, pkt).verdict
        got = tc_run(tc.fd, frame(pkt), mark)
        assert {TC_ACT_OK: "ACCEPT", TC_ACT_SHOT: "DROP"}[got] == want, (rules, hex(mark))
    for (chain, index), c in tc.rule_counters().items():
        ref = table.chains[chain].rules[index].counters
        assert (c.packets, c.bytes) == (ref.packets, ref.bytes), (chain, index)


def test_random_mark_rule_sets_match_the_reference(progs):
    """Random chains of mark tests (masks, values inside and outside them,
    `!`, tests on the jump into a user chain and on its rules): verdicts
    and counters of the TC classifier equal the reference's for marks made
    of the same values; sets needing more than two tests per path are
    refused, never compiled wrong."""
    import random

    tc, _ = progs
    rng = random.Random(11)
    shape = Shape(nwords=1, steps=40, ncounters=16, fields=frozenset({"proto", "mark"}),
                  proto_max=4)
    bits = [0x1, 0x2, 0x4, 0x4000, 0x8000, 0xF, 0xFF00]

    def test() -> str:
        mask = rng.choice(bits + [0xFFFFFFFF, 0x0])
        value = rng.choice(bits + [0]) & (mask if rng.random() < 0.85 else 0xFFFFFFFF)
        return f"-m mark {'! ' if rng.random() < 0.4 else ''}--mark 0x{value:x}/0x{mask:x}"

    compiled = refused = 0
    for _ in range(60):
        rules = ["-N k", f"-A OUTPUT {test()} -j k"]
        rules += [f"-A k {test()} -j {rng.choice(['ACCEPT', 'DROP', 'RETURN'])}"
                  for _ in range(rng.randint(1, 3))]
        rules += [f"-A OUTPUT {test()} -j DROP", f"-P OUTPUT {rng.choice(['ACCEPT', 'DROP'])}"]
        table = table_from_lines(rules)
        try:
            tc.install(compile_chain(table, "OUTPUT", {"lo": 1}, shape))
        except NotSupported:
            refused += 1
            continue
        compiled += 1
        for _ in range(12):
            mark = 0
            for b in rng.sample(bits, rng.randint(0, 3)):
                mark |= b
            pkt = packet(mark)
            want = evaluate(table, pkt).verdict
            got = tc_run(tc.fd, frame(pkt), mark)
            assert {TC_ACT_OK: "ACCEPT", TC_ACT_SHOT: "DROP"}[got] == want, (rules, hex(mark))
        for (chain, index), c in tc.rule_counters().items():
            ref = table.chains[chain].rules[index].counters
            assert (c.packets, c.bytes) == (ref.packets, ref.bytes), (rules, chain, index)
    assert compiled >= 40, (compiled, refused)


def test_xdp_tests_mark_zero(progs):
    """INPUT at XDP: every packet is tested as if its mark were 0."""
    _, xdp = progs
    rules = ["-A INPUT -m mark --mark 0x0/0xffff -j DROP", "-A INPUT -m mark ! --mark 0x0"]
    table = table_from_lines(rules)
    shape = Shape(nwords=1, steps=40, ncounters=16, fields=frozenset({"proto", "mark"}),
                  proto_max=4)
    xdp.install(compile_chain(table, "INPUT", {"lo": 1}, shape))
    for _ in range(3):
        assert T.test_run(xdp.fd, frame(packet(0, "INPUT"))).name == "DROP"
    assert [(c.packets) for c in xdp.rule_counters().values()] == [3, 0]


@pytest.mark.parametrize("rules, why", [
    (["-A OUTPUT -m mark ! --mark 0x1 -m mark ! --mark 0x2 -m mark ! --mark 0x3"], "more than 2"),
    (["-N k", "-A OUTPUT -m mark ! --mark 0x1 -j k",
      "-A k -m mark ! --mark 0x2 -m mark --mark 0x4/0x4 -j DROP"], "more than 2"),
])
def test_more_than_two_tests_on_a_path_are_refused(rules, why):
    with pytest.raises(NotSupported, match=why):
        compile_chain(table_from_lines(rules), "OUTPUT", {"lo": 1})


def test_merged_positive_tests_stay_exact():
    """Two positive tests on a path are one (mask | mask', value | value'),
    or never hold when they disagree under both masks."""
    c = compile_chain(table_from_lines(["-N k", "-A OUTPUT -m mark --mark 0x4000/0x4000 -j k",
                                        "-A k -m mark --mark 0x1/0xf -m mark ! --mark 0x3"]),
                      "OUTPUT", {"lo": 1})
    assert [e.fields.mark for e in c.entries][:2] == [
        ((0x4000, 0x4000, False),), ((0x400F, 0x4001, False), (0xFFFFFFFF, 3, True))]
    c = compile_chain(table_from_lines(["-A OUTPUT -m mark --mark 0x1/0x3 "
                                        "-m mark --mark 0x2/0x3 -j DROP"]), "OUTPUT", {"lo": 1})
    assert c.entries[0].fields.never


# -- real traffic next to iptables-legacy -----------------------------------------

ON = {"BPF_IPTABLES_DATAPATH": "on"}
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp --dport 9 -m mark --mark 0x4000/0x4000 -j DROP
-A INPUT -p udp --dport 9 -m mark ! --mark 0x0
-A INPUT -p udp --dport 9 -m mark --mark 0x0
-A OUTPUT -p udp --dport 9 -m mark --mark 0x4000/0x4000 -j DROP
-A OUTPUT -p udp --dport 9 -m mark ! --mark 0x0
-A OUTPUT -p udp --dport 9 -m mark --mark 0x7
-A OUTPUT -p udp --dport 9 -m mark --mark 0x0
COMMIT
"""
# SO_MARK 36; each mark sends one datagram to 127.0.0.1:9 over lo
SENDER = """
import socket, sys
for mark in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 36, mark)
    try:
        s.sendto(b"mark", ("127.0.0.1", 9))
    except PermissionError:   # iptables' OUTPUT DROP (the data path drops at the device)
        pass
"""
SENT = ["0", "7", "16384", "16391", "49152", "1", "0"]


def counts(ns, ours: bool, chain: str) -> list[int]:
    argv = (bpf_command("iptables", "-L", chain, "-v", "-x", "-n") if ours
            else ["iptables-legacy", "-L", chain, "-v", "-x", "-n"])
    out = ns.run(argv, env=ON).stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


@pytest.mark.parametrize("mode", ["tc", "xdpgeneric"])
def test_so_mark_traffic_matches_iptables_legacy(mode):
    """OUTPUT (TC egress: the socket's mark) and INPUT over lo, which keeps
    the sender's mark: the same as iptables in --mode tc. At XDP (no mark)
    the rule set is refused, exit 2, and nothing changes."""
    ensure_bpffs()
    with namespace("mkr") as real, namespace("mko") as ours:
        try:
            for ns in (real, ours):
                assert ns.run(["ip", "link", "set", "lo", "up"]).returncode == 0
            assert real.run(["iptables-legacy-restore"], input=RULES).returncode == 0
            r = ours.run(datapath_command("attach", "--mode", mode))
            assert r.returncode == 0, r.stderr
            r = ours.run(bpf_command("iptables-restore"), input=RULES, env=ON)
            if mode != "tc":
                assert r.returncode == 2, r.stderr
                assert re.search(r"-m mark in INPUT at XDP, which has no packet mark .*"
                                 r"--mode tc.* is not supported by bpf-iptables", r.stderr)
                assert "-A " not in ours.run(bpf_command("iptables-save")).stdout
                return
            assert r.returncode == 0, r.stderr
            for ns in (real, ours):
                ns.run([sys.executable, "-c", SENDER, *SENT])
            assert counts(real, False, "OUTPUT") == [3, 2, 1, 2]
            assert counts(ours, True, "OUTPUT") == counts(real, False, "OUTPUT")
            # the marked ones that OUTPUT let through reach INPUT with their mark
            assert counts(real, False, "INPUT") == [0, 2, 2]
            assert counts(ours, True, "INPUT") == [0, 2, 2]
        finally:
            ours.run(datapath_command("detach"))
