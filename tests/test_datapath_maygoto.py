"""The loops without may_goto (kernels before 6.9, maygoto.py, bpf/lib/loop.h).

On this kernel the probe says yes; BPF_IPTABLES_NO_MAY_GOTO=1 forces the
bounded loops, which must load and decide (verdicts, counters, REJECT
replies) exactly as the may_goto build does, both checked against the
reference semantics; the object cache never hands one build to the other."""
from __future__ import annotations

import os
import random

import pytest

from bpf_iptables.datapath import maygoto, objcache, program
from bpf_iptables.datapath.compiler import Shape
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.extensions import find_match
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.test_reject_program import (XDP_TX, icmp_model, model_without_id, run,
                                       with_payload, without_icmp_id)

pytestmark = pytest.mark.usefixtures("private_netns")

SHAPE = Shape(nwords=2, steps=48, ncounters=16, fields=frozenset({"proto"}), proto_max=4)
MAY_GOTO_OPCODE = 0xE5  # BPF_JMP | BPF_JCOND
# every kind of entry the scan handles: a counting rule (no target), jumps
# into user chains that fall through (continue) or RETURN, a stateful
# match with its own program (recent), REJECT (ICMP with a full quote, RST)
RULES = [
    "-N CHK", "-N SUB",
    "-A INPUT -p udp --dport 53",
    "-A INPUT -s 10.0.0.0/24 -j CHK",
    "-A CHK -p tcp --dport 80 -j RETURN",
    "-A CHK -p tcp --dport 22 -m recent --name ssh --set",
    "-A CHK -p tcp --dport 22 -m recent --name ssh --rcheck --hitcount 3 -j DROP",
    "-A CHK -j SUB",
    "-A SUB -p udp --dport 9 -j REJECT",
    "-A SUB -p icmp -j RETURN",
    "-A SUB -s 10.0.0.7 -j DROP",
    "-A INPUT -p udp --dport 53",
    "-A INPUT -p tcp --dport 443 -j ACCEPT",
    "-A INPUT -p udp -j REJECT --reject-with icmp-host-prohibited",
    "-A INPUT -p tcp --dport 1:1000 -j REJECT --reject-with tcp-reset",
    "-P INPUT DROP",
]


def packets(n: int = 300) -> list[Packet]:
    rng = random.Random(14)
    out = []
    for _ in range(n):
        proto = rng.choice([6, 6, 17, 17, 1])
        p = Packet(in_iface="lo", proto=proto,
                   src=ip_to_int(rng.choice(["10.0.0.1", "10.0.0.7", "10.0.1.5"])),
                   dst=ip_to_int("10.0.0.2"))
        if proto == 1:
            p.icmp_type = 8
        else:
            p.sport = rng.randrange(1024, 65536)
            p.dport = rng.choice([9, 22, 53, 80, 443, 700, 5000])
            if proto == 6:
                p.tcp_flags = 0x02
        p.length = max(header_length(p), rng.choice([0, 100, 600, 1400]))
        out.append(p)
    return out


def insns_of(key: str, func: str) -> list[int]:
    entry = objcache.lookup(key)
    assert entry is not None
    raw = entry.funcs[func].insns
    return [raw[i] for i in range(0, len(raw), 8)]


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def test_the_probe_says_yes_here_and_the_flag_forces_no(monkeypatch):
    monkeypatch.delenv(maygoto.ENV, raising=False)
    # may_goto came with 6.9 (this machine: 6.18, yes; Debian 12's 6.1: no)
    assert maygoto.kernel_has_may_goto() == kernel_at_least(6, 9)
    if not maygoto.kernel_has_may_goto():
        assert "-DHAVE_MAY_GOTO=0" in program.cflags(SHAPE)
        return
    assert maygoto.available()
    assert "-DHAVE_MAY_GOTO=1" in program.cflags(SHAPE)
    monkeypatch.setenv(maygoto.ENV, "1")
    assert not maygoto.available()
    assert "-DHAVE_MAY_GOTO=0" in program.cflags(SHAPE)
    monkeypatch.setenv(maygoto.ENV, "0")
    assert maygoto.available()


def test_the_cache_key_names_the_loops(monkeypatch):
    funcs = {program.FUNCTION: program.XDP}
    flags = program.cflags(SHAPE)
    # the same flags, still another key: any source including lib/loop.h
    monkeypatch.setattr(maygoto, "available", lambda: True)
    with_may_goto = objcache.key(program.SOURCE, flags, funcs)
    monkeypatch.setattr(maygoto, "available", lambda: False)
    assert objcache.key(program.SOURCE, flags, funcs) != with_may_goto


def test_bounded_loops_decide_as_the_may_goto_loops(monkeypatch, tmp_path):
    monkeypatch.setenv("BPF_IPTABLES_OBJCACHE_DIR", str(tmp_path / "objects"))
    opcodes = {}
    # "0": may_goto where the kernel has it; "1": the bounded loops
    for forced in ("0", "1") if maygoto.kernel_has_may_goto() else ("1",):
        monkeypatch.setenv(maygoto.ENV, forced)
        find_match("recent").tables.clear()   # the reference's lists
        h = Harness()
        try:
            table = table_from_lines(RULES)
            report = h.check(table, packets(), stateful=True)
            assert report.packets == 300
            assert report.mismatches == [], (forced, report.mismatches[:5])
            prog, compiled = h.load(table_from_lines(RULES))
            # the first build of each kind: compiled, not the other's entry
            assert not prog.cache_hit
            key = program.object_key(prog.shape, False)
            opcodes[forced] = (insns_of(key, program.FUNCTION),
                               insns_of(key, program.REJECT_FUNCTION))
            # xdp_reject's checksum loop over a full quote (548 bytes) and less
            for length in (29, 548, 1000):
                p = Packet(in_iface="lo", proto=17, sport=40000, dport=7,
                           src=ip_to_int("10.0.1.5"), dst=ip_to_int("10.0.0.2"), length=length)
                f = with_payload(frame(p))
                verdict, out = run(prog, f)
                assert verdict == XDP_TX
                assert without_icmp_id(out) == model_without_id(icmp_model(f, 10))
        finally:
            h.close()
    assert all(MAY_GOTO_OPCODE in ops for ops in opcodes.get("0", [[MAY_GOTO_OPCODE]]))
    assert not any(MAY_GOTO_OPCODE in ops for ops in opcodes["1"])
