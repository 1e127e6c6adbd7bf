"""Property: random conntrack rules (every -m conntrack option, -m state,
with "!", mixed with plain matches, any targets and policy) under random
packet sequences through a fresh tracker: the eBPF data path's verdicts
and counters equal the reference semantics fed by the Python model of
netfilter's tracker (test_conntrack_property's sequences and flows).

This is the ctstate field (and the per-candidate checks) in a rule
repertoire, kept apart from test_datapath_property, whose shape would
carry the tracker into thousands of examples. One program is loaded for a
shape covering every rule drawn; only its maps are rewritten."""
from __future__ import annotations

import os
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.conntrack import table as cttable
from bpf_iptables.conntrack.reference import run as reference_run
from bpf_iptables.conntrack.tracker import Tracker
from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import XDP_TO_VERDICT, table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run as run_frame
from tests.test_conntrack_property import sequences

pytestmark = pytest.mark.usefixtures("private_netns")

STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED")
STATUSES = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")
ADDRS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.0/30", "10.0.0.2/31", "10.0.0.0/8")
PORTS = ("80", "22", "53", "7", "0", "40000", "40000:40001", "0:100", "2048", "9", "5000")
PROTOS = ("tcp", "udp", "icmp", "47")
# around the timeouts the flows reach (UDP 30/120, ICMP 30, TCP 120/60/300/
# 432000/10, generic 600), clear of a full timeout's edge (see
# test_conntrack_property: a RELATED packet in the refresh's jiffy)
EXPIRES = ("0", "1:29", "29:30", "100:500000", "0:60", "59:60", "599:600", "119:120",
           "300:432000", "9:10")
OPTIONS = ("ctstate", "ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst",
           "ctorigsrcport", "ctorigdstport", "ctreplsrcport", "ctrepldstport", "ctstatus",
           "ctexpire", "ctdir")


@st.composite
def conntrack_match(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        states = draw(st.lists(st.sampled_from(STATES), min_size=1, max_size=3, unique=True))
        return f"-m state {draw(st.sampled_from(['', '! ']))}--state {','.join(states)}"
    out = ["-m conntrack"]
    for opt in draw(st.lists(st.sampled_from(OPTIONS), min_size=1, max_size=4, unique=True)):
        bang = "! " if opt != "ctdir" and draw(st.integers(0, 3)) == 0 else ""
        if opt == "ctstate":
            v = ",".join(draw(st.lists(st.sampled_from(STATES), min_size=1, max_size=3,
                                       unique=True)))
        elif opt == "ctstatus":
            v = ",".join(draw(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=2,
                                       unique=True)))
        elif opt == "ctproto":
            v = draw(st.sampled_from(PROTOS))
        elif opt == "ctexpire":
            v = draw(st.sampled_from(EXPIRES))
        elif opt == "ctdir":
            v = draw(st.sampled_from(["ORIGINAL", "REPLY"]))
        elif opt.endswith("port"):
            v = draw(st.sampled_from(PORTS))
        else:
            v = draw(st.sampled_from(ADDRS))
        out.append(f"{bang}--{opt} {v}")
    return " ".join(out)


@st.composite
def rule_sets(draw) -> list[str]:
    lines = [f"-P INPUT {draw(st.sampled_from(['ACCEPT', 'DROP']))}"]
    for _ in range(draw(st.integers(1, 8))):
        parts = ["-A INPUT"]
        plain = draw(st.sampled_from(["", "", "-p tcp", "-p udp", "-p icmp", "-s 10.0.0.3",
                                      "-p tcp --dport 80"]))
        if plain:
            parts.append(plain)
        for _ in range(draw(st.integers(1, 2))):
            parts.append(draw(conntrack_match()))
        target = draw(st.sampled_from(["", "-j ACCEPT", "-j DROP"]))
        if target:
            parts.append(target)
        lines.append(" ".join(parts))
    return lines


# every kind of entry the rules can make: the loaded program's shape
COVER = ["-A INPUT -m conntrack --ctstate NEW --ctexpire 1 -j ACCEPT",
         "-A INPUT -p tcp --dport 80 -s 10.0.0.3 -m conntrack --ctstate NEW --ctproto tcp "
         "--ctorigdst 10.0.0.0/8 --ctorigsrc 10.0.0.2/31 --ctorigdstport 40000:40001 "
         "! --ctorigsrcport 0:100 -j DROP",
         "-A INPUT -p icmp -s 10.0.0.1", "-A INPUT -p udp -j ACCEPT"]


class Loaded:
    def __init__(self, directory: str):
        self.dir = directory
        self.prog: LoadedProgram | None = None
        self.shape = compile_chain(table_from_lines(COVER), "INPUT", {}).shape

    def install(self, table) -> None:
        c = compile_chain(table, "INPUT", {})
        if self.prog is None or not self.shape.covers(c.shape):
            # a rule set beyond the shape so far: a wider program (rare)
            self.shape = self.shape.union(c.shape)
            if self.prog is not None:
                self.prog.close()
            self.prog = LoadedProgram(self.shape, ct_dir=self.dir)
        self.prog.install(compile_chain(table, "INPUT", {}, min_shape=self.shape))


@pytest.fixture(scope="module")
def loaded():
    d = f"/run/bpf-iptables/bpffs/ct-random-{os.getpid()}"
    one = Loaded(d)
    try:
        yield one
    finally:
        if one.prog is not None:
            one.prog.close()
        shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=rule_sets(), seq=sequences())
def test_random_conntrack_rules(loaded, lines, seq):
    table = table_from_lines([x for x in lines if "--ctstate SNAT" not in x])
    loaded.install(table)
    assert loaded.prog is not None
    cttable.flush(cttable.Path(loaded.dir))
    tracker = Tracker()
    for i, pkt in enumerate(seq):
        pkt.length = header_length(pkt)
        pkt.time = time.monotonic()
        got = XDP_TO_VERDICT.get(run_frame(loaded.prog.fd, frame(pkt)).verdict)
        result, seen = reference_run(table, tracker, pkt)
        assert got == result.verdict, f"packet {i} ({seen.state}): {pkt}"
    for (chain, index), c in loaded.prog.rule_counters().items():
        ref = table.chains[chain].rules[index].counters
        assert (c.packets, c.bytes) == (ref.packets, ref.bytes), f"rule {index + 1}"
