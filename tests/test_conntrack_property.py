"""The eBPF tracker against the Python model of netfilter's, through
BPF_PROG_TEST_RUN: random packet sequences over a few flows (TCP with any
flags, UDP, ICMP queries and answers, ICMP errors quoting the flows, a
generic protocol), run through the INPUT classifier under stateful rule
sets. Per packet the verdict must be the reference's (the rules see the
ctstate the model gives), at the end every rule counter, and the table's
entries (TCP state, status bits, direction) must be the model's."""
from __future__ import annotations

import os
import shutil
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.conntrack import table as cttable
from bpf_iptables.conntrack.reference import run as reference_run
from bpf_iptables.conntrack.tracker import Tracker
from bpf_iptables.datapath import bpfsys
from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import XDP_TO_VERDICT, table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet

pytestmark = pytest.mark.usefixtures("private_netns")

A, B, C = (ip_to_int(f"10.0.0.{i}") for i in (1, 2, 3))
# (proto, src, dst, sport, dport); ICMP: sport is the echo identifier
FLOWS = [(6, A, B, 40000, 80), (6, A, B, 40001, 22), (6, C, B, 40000, 80),
         (17, A, B, 5000, 53), (17, C, A, 5000, 53), (1, A, B, 7, 0), (1, C, B, 9, 0),
         (47, A, B, 0, 0)]
FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
# the handshake's and the close's flags more often than the odd ones
TCP_FLAGS = [SYN, SYN, SYN | ACK, SYN | ACK, ACK, ACK, ACK, FIN | ACK, FIN | ACK, RST,
             RST | ACK, ACK | PSH, SYN | FIN, 0, FIN, ACK | URG]

RULESETS = [
    ["-P INPUT DROP",
     "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
     "-A INPUT -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT",
     "-A INPUT -p udp --dport 53 -m state --state NEW -j ACCEPT",
     "-A INPUT -p icmp --icmp-type echo-request -j ACCEPT",
     "-A INPUT -p 47 -j ACCEPT"],
    ["-A INPUT -m conntrack --ctstate INVALID",
     "-A INPUT -m conntrack --ctstate NEW",
     "-A INPUT -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL",
     "-A INPUT -m conntrack --ctstate ESTABLISHED --ctdir REPLY",
     "-A INPUT -m state --state RELATED",
     "-A INPUT -m conntrack ! --ctstate NEW,INVALID -j ACCEPT",
     "-A INPUT -p tcp --tcp-flags SYN SYN -s 10.0.0.3 -j DROP",
     "-A INPUT -m conntrack --ctstate INVALID -j DROP"],
    ["-A INPUT -s 10.0.0.3 -m conntrack --ctstate NEW -j DROP",
     "-A INPUT -p udp -m conntrack --ctstate NEW --ctdir REPLY -j DROP",
     "-A INPUT -m state ! --state INVALID -j ACCEPT",
     "-P INPUT DROP"],
    ["-A INPUT -m conntrack --ctstatus ASSURED",
     "-A INPUT -m conntrack --ctstatus SEEN_REPLY --ctdir ORIGINAL",
     "-A INPUT -m conntrack ! --ctstatus CONFIRMED",
     "-A INPUT -m conntrack --ctstate NEW --ctproto tcp --ctorigdst 10.0.0.2 "
     "--ctorigdstport 80 -j ACCEPT",
     "-A INPUT -m conntrack --ctstate ESTABLISHED --ctdir REPLY --ctreplsrc 10.0.0.1 "
     "--ctproto tcp --ctreplsrcport 40000:40000 -j ACCEPT",
     "-A INPUT -m conntrack --ctstate NEW,ESTABLISHED ! --ctproto udp -m conntrack "
     "! --ctstatus ASSURED -j ACCEPT",
     "-A INPUT -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL ! --ctorigsrc 10.0.0.3 "
     "-j DROP",
     "-A INPUT -m conntrack --ctstate RELATED --ctstatus ASSURED -j ACCEPT",
     "-P INPUT DROP"],
    # tuple options with INVALID/RELATED, either direction, ICMP and
    # generic tuples, --ctexpire (per-candidate checks, ctcheck_map)
    ["-A INPUT -m conntrack --ctstate INVALID,RELATED --ctproto udp",
     "-A INPUT -m conntrack --ctorigsrc 10.0.0.1 --ctrepldst 10.0.0.1",
     "-A INPUT -m conntrack --ctstate RELATED --ctorigdst 10.0.0.2 --ctproto tcp "
     "--ctorigdstport 80 -j ACCEPT",
     "-A INPUT -m conntrack --ctstate ESTABLISHED ! --ctreplsrc 10.0.0.2/31 -j DROP",
     "-A INPUT -m conntrack --ctproto icmp --ctorigsrcport 7 --ctrepldstport 0:0",
     "-A INPUT -m conntrack --ctproto icmp --ctorigdstport 2048 ! --ctreplsrcport 9",
     # (ranges take in both a full timeout and a second less: a packet that
     # does not refresh its entry (RELATED) in the jiffy of the refresh
     # still sees the full timeout, which the model's clock cannot know)
     "-A INPUT -m conntrack --ctproto 47 --ctreplsrcport 0 --ctexpire 599:600",
     "-A INPUT -m conntrack --ctexpire 0 -j ACCEPT",
     "-A INPUT -m conntrack --ctexpire 29:30",
     "-A INPUT -m conntrack --ctstate NEW,INVALID --ctreplsrcport 80 --ctdir ORIGINAL -j ACCEPT",
     "-A INPUT -m conntrack ! --ctexpire 100:500000 -m conntrack --ctorigsrcport 40000 -j DROP",
     "-A INPUT -m state --state ESTABLISHED -m conntrack --ctrepldst 10.0.0.3 -j ACCEPT",
     "-P INPUT DROP"],
]


def packet_of(flow: int, reverse: bool, flags: int, reply: bool) -> Packet:
    proto, src, dst, sport, dport = FLOWS[flow]
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    p = Packet(src=src, dst=dst, proto=proto)
    if proto == 1:
        # a query from the flow's source, or the answer to it
        p.src, p.dst = (FLOWS[flow][2], FLOWS[flow][1]) if reply else (FLOWS[flow][1],
                                                                        FLOWS[flow][2])
        p.icmp_type, p.icmp_id = (0 if reply else 8), FLOWS[flow][3]
    elif proto in (6, 17):
        p.sport, p.dport = sport, dport
        p.tcp_flags = flags if proto == 6 else 0
    return p


def packets(flows: list[int]) -> st.SearchStrategy[Packet]:
    return st.builds(packet_of, st.sampled_from(flows), st.booleans(),
                     st.sampled_from(TCP_FLAGS), st.booleans())


def errors(flows: list[int]) -> st.SearchStrategy[Packet]:
    """An ICMP error quoting a packet of a flow, sent to that packet's
    source (RELATED when the flow is known) or elsewhere (INVALID)."""
    @st.composite
    def build(draw) -> Packet:
        inner = draw(packets(flows))
        sender = draw(st.sampled_from([A, B, C]))
        to = inner.src if draw(st.integers(0, 3)) else draw(st.sampled_from([A, B, C]))
        itype, code = draw(st.sampled_from([(3, 3), (3, 1), (11, 0)]))
        inner.length = header_length(inner)
        return Packet(src=sender, dst=to, proto=1, icmp_type=itype, icmp_code=code,
                      icmp_inner=inner)
    return build()


# a TCP conversation: handshake, data, close (reverse: from the server)
SCRIPT = [(False, SYN), (True, SYN | ACK), (False, ACK), (False, ACK | PSH), (True, ACK),
          (True, ACK | PSH), (False, FIN | ACK), (True, ACK), (True, FIN | ACK), (False, ACK),
          (False, SYN)]


@st.composite
def sequences(draw) -> list[Packet]:
    """Packets of one to three flows (few flows: long histories per flow):
    mostly each flow's next step of a conversation (SCRIPT; for UDP and
    ICMP the same directions), sometimes any packet or an ICMP error."""
    flows = draw(st.lists(st.integers(0, len(FLOWS) - 1), min_size=1, max_size=3, unique=True))
    step = {f: 0 for f in flows}
    out = []
    for _ in range(draw(st.integers(1, 16))):
        kind = draw(st.integers(0, 5))
        if kind <= 2:
            flow = draw(st.sampled_from(flows))
            reverse, flags = SCRIPT[step[flow] % len(SCRIPT)]
            step[flow] += 1
            out.append(packet_of(flow, reverse, flags, reverse))
        elif kind <= 4:
            out.append(draw(packets(flows)))
        else:
            out.append(draw(errors(flows)))
    return out


@pytest.fixture(scope="module")
def program():
    d = f"/run/bpf-iptables/bpffs/ct-property-{os.getpid()}"
    tables = [table_from_lines(r) for r in RULESETS]
    shape = compile_chain(tables[0], "INPUT", {}).shape
    for t in tables[1:]:
        shape = shape.union(compile_chain(t, "INPUT", {}).shape)
    prog = None
    try:   # the pins go even when the load fails
        prog = LoadedProgram(shape, ct_dir=d)
        yield prog, shape, cttable.Path(d)
    finally:
        if prog is not None:
            prog.close()
        shutil.rmtree(d, ignore_errors=True)


def model_rows(tracker: Tracker, now: float) -> dict:
    return {k: (e.tcp_state, e.status, e.swapped) for k, e in tracker.table.items()
            if e.expires > now}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ruleset=st.integers(0, len(RULESETS) - 1), seq=sequences())
def test_ebpf_tracker_follows_the_model(program, ruleset, seq):
    prog, shape, d = program
    table = table_from_lines(RULESETS[ruleset])
    prog.install(compile_chain(table, "INPUT", {}, min_shape=shape))
    cttable.flush(d)
    tracker = Tracker()
    for i, pkt in enumerate(seq):
        pkt.length = header_length(pkt)
        pkt.time = time.monotonic()
        got = XDP_TO_VERDICT.get(run_frame(prog.fd, frame(pkt)).verdict)
        result, seen = reference_run(table, tracker, pkt)
        assert got == result.verdict, f"packet {i} ({seen.state}): {pkt}"
        ebpf = {r.key: (r.tcp_state, r.status, r.swapped) for r in cttable.read(d)}
        assert ebpf == model_rows(tracker, time.monotonic()), f"after packet {i}: {pkt}"
    for (chain, index), c in prog.rule_counters().items():
        ref = table.chains[chain].rules[index].counters
        assert (c.packets, c.bytes) == (ref.packets, ref.bytes), f"rule {index + 1}"


def test_confirmed_entries_are_counted(program):
    prog, shape, d = program
    table = table_from_lines(RULESETS[0])
    prog.install(compile_chain(table, "INPUT", {}, min_shape=shape))
    cttable.flush(d)
    before = cttable.stats(d)
    syn = packet_of(0, False, SYN, False)
    syn.length = header_length(syn)
    dropped = packet_of(1, False, SYN, False)     # port 22: NEW, dropped, not confirmed
    dropped.length = header_length(dropped)
    assert XDP_TO_VERDICT[run_frame(prog.fd, frame(syn)).verdict] == "ACCEPT"
    assert XDP_TO_VERDICT[run_frame(prog.fd, frame(dropped)).verdict] == "DROP"
    after = cttable.stats(d)
    assert after.entries == 1 and after.inserts == before.inserts + 1
    assert after.evictions == before.evictions
    assert bpfsys.possible_cpus() >= 1


def test_handshake_then_reply_ack(program):
    """A fixed sequence the random ones may miss: SYN, SYN/ACK, a second
    ACK from the server while SYN_RECV (stays SYN_RECV in netfilter)."""
    prog, shape, d = program
    table = table_from_lines(RULESETS[1])
    prog.install(compile_chain(table, "INPUT", {}, min_shape=shape))
    cttable.flush(d)
    tracker = Tracker()
    for reverse, flags in ((False, SYN), (True, SYN | ACK), (True, ACK)):
        pkt = packet_of(0, reverse, flags, False)
        pkt.length = header_length(pkt)
        pkt.time = time.monotonic()
        run_frame(prog.fd, frame(pkt))
        reference_run(table, tracker, pkt)
    ebpf = {r.key: (r.tcp_state, r.status, r.swapped) for r in cttable.read(d)}
    assert ebpf == model_rows(tracker, time.monotonic())


def test_expired_entries_are_swept(program):
    """An entry past its timeout is not listed and gc() deletes it."""
    prog, shape, d = program
    table = table_from_lines(RULESETS[0])
    prog.install(compile_chain(table, "INPUT", {}, min_shape=shape))
    cttable.flush(d)
    cttable.set_timeouts(d, {"nf_conntrack_udp_timeout": 1})
    try:
        dns = packet_of(3, False, 0, False)
        dns.length = header_length(dns)
        assert XDP_TO_VERDICT[run_frame(prog.fd, frame(dns)).verdict] == "ACCEPT"
        assert len(cttable.read(d)) == 1
        time.sleep(1.1)
        assert cttable.read(d) == [] and len(cttable.read(d, live_only=False)) == 1
        before = cttable.stats(d)
        assert cttable.gc(d) == 1
        after = cttable.stats(d)
        assert after.entries == 0 and after.deletes == before.deletes + 1
        assert after.evictions == before.evictions
    finally:
        cttable.set_timeouts(d, {"nf_conntrack_udp_timeout": 30})


def test_a_full_table_evicts_the_least_recently_used(program):
    """65,536 entries: more flows than that evict the oldest, counted."""
    prog, shape, d = program
    table = table_from_lines(["-A INPUT -p udp -j ACCEPT"])
    prog.install(compile_chain(table, "INPUT", {}, min_shape=shape))
    cttable.flush(d)
    before = cttable.stats(d)
    base = packet_of(3, False, 0, False)
    base.length = header_length(base)
    data = bytearray(frame(base))
    flows = 70_000
    for i in range(flows):
        # the flow: UDP source port and the source address's last byte
        # (10.0.0.3, then 10.0.0.4: above B, so B is the key's first end)
        struct.pack_into("!H", data, 34, 1024 + i % 60000)
        data[29] = 3 + i // 60000
        run_frame(prog.fd, bytes(data))
    after = cttable.stats(d)
    assert after.inserts - before.inserts == flows
    assert after.entries <= 65536
    assert after.evictions - before.evictions >= flows - 65536
    keys = {r.key for r in cttable.read(d)}
    assert (B, ip_to_int("10.0.0.3"), 53, 1024, 17) not in keys      # the oldest: evicted
    assert (B, ip_to_int("10.0.0.4"), 53, 1024 + (flows - 1) % 60000, 17) in keys
    cttable.flush(d)
