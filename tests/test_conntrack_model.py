"""The Python model of netfilter's tracker (bpf_iptables/conntrack/tracker.py):
hand-written sequences with the states netfilter gives them."""
from __future__ import annotations

from bpf_iptables.conntrack.tracker import (CL, ES, ICMP, IPS_ASSURED, IPS_SEEN_REPLY, SR, SS,
                                            TCP, TW, UDP, F_ACK, F_FIN, F_RST, F_SYN, Flow,
                                            Tracker)

A, B, C = 0x0A000001, 0x0A000002, 0x0A000003
SYN, SYNACK, ACK, FINACK, RST = F_SYN, F_SYN | F_ACK, F_ACK, F_FIN | F_ACK, F_RST


def tcp(src, dst, sport, dport):
    return Flow(src, dst, TCP, sport, dport)


OUT = tcp(A, B, 40000, 80)
BACK = tcp(B, A, 80, 40000)


def step(t: Tracker, flow: Flow, flags: int = 0, now: float = 0.0, accept: bool = True,
         inner: Flow | None = None) -> str:
    seen = t.packet(flow, now, tcp_flags=flags, inner=inner)
    if accept:
        t.confirm(seen)
    return seen.state


def entry(t: Tracker, flow: Flow):
    from bpf_iptables.conntrack.tracker import flow_key
    key, _ = flow_key(flow)
    return t.table.get(key)


def test_tcp_handshake_transfer_close():
    t = Tracker()
    assert step(t, OUT, SYN) == "NEW"
    assert entry(t, OUT).tcp_state == SS
    assert step(t, BACK, SYNACK) == "ESTABLISHED"
    assert entry(t, OUT).tcp_state == SR
    assert step(t, OUT, ACK) == "ESTABLISHED"
    e = entry(t, OUT)
    assert e.tcp_state == ES and e.status & IPS_ASSURED and e.status & IPS_SEEN_REPLY
    assert e.expires == 432000
    for flow, flags in ((OUT, FINACK), (BACK, ACK), (BACK, FINACK), (OUT, ACK)):
        assert step(t, flow, flags) == "ESTABLISHED"
    assert entry(t, OUT).tcp_state == TW
    # a new SYN on the same ports reopens the closed connection: NEW again
    assert step(t, OUT, SYN, now=1) == "NEW"
    assert entry(t, OUT).tcp_state == SS


def test_dropped_syn_leaves_no_entry():
    t = Tracker()
    assert step(t, OUT, SYN, accept=False) == "NEW"
    assert t.table == {}
    assert step(t, BACK, SYNACK) == "INVALID"   # a SYN/ACK with no SYN seen


def test_loose_pickup_of_a_mid_stream_flow():
    t = Tracker()
    assert step(t, OUT, ACK) == "NEW"
    e = entry(t, OUT)
    assert e.tcp_state == ES and e.expires == 300   # unacknowledged timeout
    assert step(t, OUT, ACK) == "NEW"               # no reply yet
    assert step(t, BACK, ACK) == "ESTABLISHED"
    assert step(t, OUT, ACK) == "ESTABLISHED"
    strict = Tracker(loose=False)
    assert step(strict, OUT, ACK) == "INVALID"


def test_invalid_flag_combinations_and_states():
    t = Tracker()
    assert step(t, OUT, F_SYN | F_FIN) == "INVALID"
    assert step(t, OUT, 0) == "INVALID"
    assert step(t, OUT, F_FIN) == "INVALID"
    assert t.table == {}
    assert step(t, OUT, SYN) == "NEW"
    assert step(t, OUT, ACK) == "INVALID"           # ACK in SYN_SENT: no SYN/ACK yet
    assert step(t, OUT, FINACK) == "INVALID"
    assert entry(t, OUT).tcp_state == SS


def test_rst_as_only_reply_kills_the_entry():
    t = Tracker()
    step(t, OUT, SYN)
    assert step(t, BACK, RST | F_ACK) == "ESTABLISHED"
    assert t.table == {}
    assert step(t, OUT, SYN) == "NEW"


def test_rst_in_an_established_flow_closes_it():
    t = Tracker()
    for flow, flags in ((OUT, SYN), (BACK, SYNACK), (OUT, ACK)):
        step(t, flow, flags)
    assert step(t, BACK, RST) == "ESTABLISHED"
    e = entry(t, OUT)
    assert e.tcp_state == CL and e.expires == 10
    # the closing side reopens after its own RST? no: the RST came from the
    # reply side and no FIN was seen, so a SYN is ignored (kept CLOSE)
    assert step(t, OUT, SYN) == "ESTABLISHED"
    assert entry(t, OUT).tcp_state == CL
    # once CLOSE expires the flow is NEW again
    assert step(t, OUT, SYN, now=10) == "NEW"


def test_ignored_packets_keep_the_state():
    t = Tracker()
    for flow, flags in ((OUT, SYN), (BACK, SYNACK), (OUT, ACK)):
        step(t, flow, flags)
    assert step(t, OUT, SYN) == "ESTABLISHED"       # sIG
    assert entry(t, OUT).tcp_state == ES


def test_udp_new_until_reply_then_stream_and_timeouts():
    t = Tracker()
    out, back = Flow(A, B, UDP, 5000, 53), Flow(B, A, UDP, 53, 5000)
    assert step(t, out, now=0) == "NEW"
    assert step(t, out, now=1) == "NEW"
    assert step(t, back, now=1) == "ESTABLISHED"
    e = entry(t, out)
    assert e.status & IPS_SEEN_REPLY and not e.status & IPS_ASSURED and e.expires == 31
    assert step(t, out, now=3) == "ESTABLISHED"     # both ways, past 2 s: a stream
    assert e.status & IPS_ASSURED and e.expires == 123
    assert step(t, out, now=123) == "NEW"           # expired: a new connection


def test_udp_timeout_is_settable():
    t = Tracker()
    t.timeouts["nf_conntrack_udp_timeout"] = 2
    out = Flow(A, B, UDP, 5000, 53)
    assert step(t, out, now=0) == "NEW"
    assert step(t, out, now=1.5) == "NEW"
    assert len(t.table) == 1
    assert step(t, out, now=3.6) == "NEW"
    assert entry(t, out).expires == 5.6


def test_icmp_echo_and_errors():
    t = Tracker()
    ping, pong = Flow(A, B, ICMP, 7, 8 << 8), Flow(B, A, ICMP, 7, 0)
    assert step(t, pong) == "INVALID"               # a reply with no request
    assert step(t, ping) == "NEW"
    assert step(t, pong) == "ESTABLISHED"
    assert step(t, Flow(A, B, ICMP, 8, 8 << 8)) == "NEW"      # another identifier
    assert step(t, Flow(A, B, ICMP, 0, 9 << 8)) == "INVALID"  # not a query
    udp = Flow(A, C, UDP, 5000, 9)
    assert step(t, udp) == "NEW"
    unreach = Flow(C, A, ICMP, 0, 3 << 8 | 3)
    assert step(t, unreach, inner=udp) == "RELATED"
    assert step(t, Flow(B, A, ICMP, 0, 3 << 8 | 3), inner=udp) == "RELATED"  # from a router
    assert step(t, Flow(C, B, ICMP, 0, 3 << 8 | 3), inner=udp) == "INVALID"  # not to the sender
    assert step(t, unreach, inner=Flow(A, C, UDP, 5001, 9)) == "INVALID"     # unknown flow
    assert step(t, Flow(B, A, ICMP, 0, 11 << 8), inner=ping) == "RELATED"    # quoting a ping
