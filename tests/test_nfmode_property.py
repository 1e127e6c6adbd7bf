"""Property: the netfilter-hook build of the classifier (--mode netfilter,
``filter.c -DHOOK_NF``) agrees with the reference semantics.

The random rule sets and packets of tests/test_datapath_property.py
(without -m mac, which this mode refuses, and without -i,
see ``run``), run by
BPF_PROG_TEST_RUN at LOCAL_IN and FORWARD (the header window, the hook
state's devices, FORWARD's lowered TTL), plus OUTPUT cases at LOCAL_OUT.
Verdicts and every rule and policy counter must be equal."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.reference.packet import Packet
from tests.test_datapath_property import SHAPE, packet_for, rule_sets

pytestmark = pytest.mark.usefixtures("private_netns")

NF_SHAPE = type(SHAPE)(**{**{k: getattr(SHAPE, k) for k in SHAPE.__dataclass_fields__},
                          "fields": SHAPE.fields - {"mac"} | {"oif", "mark"}})


@pytest.fixture(scope="module")
def harnesses():
    made = {hook: Harness(NF_SHAPE, {"lo": 1, "dp0": 2, "dp1": 3}, hook=hook, nf=True)
            for hook in ("INPUT", "FORWARD", "OUTPUT")}
    yield made
    for h in made.values():
        h.close()


def run(h: Harness, data, base: str) -> None:
    ifnames = ["lo", "dp0", "dp1"]
    lines, boxes = data.draw(rule_sets(ifnames, base))
    # -i: the test run has no input device (bpf_prog_test_run_nf picks the
    # devices by its default hook, LOCAL_OUT, before taking ours), which
    # no packet at LOCAL_IN or FORWARD lacks; -i is compared with
    # iptables-legacy on real traffic (tests/test_nfmode_traffic.py)
    lines = [l for l in lines
             if "-m mac" not in l and " -i " not in l]
    table = table_from_lines(lines)
    packets = data.draw(st.lists(packet_for(boxes, ifnames, base), min_size=1, max_size=16))
    report = h.check(table, packets)
    assert len(h.cache.programs) == 1   # one load, maps rewritten per example
    assert report.mismatches == [], "\n".join(lines + report.mismatches)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_input_matches_reference(harnesses, data):
    run(harnesses["INPUT"], data, "INPUT")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_forward_matches_reference(harnesses, data):
    """-o is state->out; the TTL is the lowered one."""
    run(harnesses["FORWARD"], data, "FORWARD")


@pytest.mark.parametrize("rule, pkt, verdict", [
    ("-o lo -p udp --dport 53 -j DROP", Packet(proto=17, dport=53, length=40), "DROP"),
    ("! -o lo -p udp --dport 53 -j DROP", Packet(proto=17, dport=53, length=40), "ACCEPT"),
    ("-p tcp --tcp-flags SYN,ACK SYN -j DROP", Packet(proto=6, tcp_flags=2, length=60), "DROP"),
    ("-m ttl --ttl-eq 64 -j DROP", Packet(proto=1, ttl=64, length=28), "DROP"),
    ("-m ttl --ttl-eq 63 -j DROP", Packet(proto=1, ttl=64, length=28), "ACCEPT"),
    ("-m mark --mark 0 -j DROP", Packet(proto=17, length=40), "DROP"),
])
def test_output_at_local_out(harnesses, rule, pkt, verdict):
    """OUTPUT at LOCAL_OUT: the interface field is the output device."""
    table = table_from_lines([f"-A OUTPUT {rule}"])
    report = harnesses["OUTPUT"].check(table, [pkt])
    assert report.mismatches == []
    assert table.chains["OUTPUT"].rules[0].counters.packets == (verdict == "DROP")


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_classbench_1k(name):
    """The ClassBench 1k sets at LOCAL_IN: verdicts and every counter."""
    from bpf_iptables.datapath.harness import table_from_save
    from bpf_iptables.reference.evaluate import evaluate
    from tests.support.shared import ruleset
    from tests.test_datapath_classbench import packets

    table = table_from_save(ruleset(name).read_text())
    h = Harness(None, {"lo": 1}, hook="INPUT", nf=True)
    try:
        pkts = packets(table, "lo", 300)
        report = h.check(table, pkts)
    finally:
        h.close()
    assert report.packets == 300
    assert report.mismatches == []
    hits = {evaluate(table, p, count=False).hits[0] for p in pkts
            if evaluate(table, p, count=False).hits}
    assert len(hits) > 50   # the classifier, not only the policy
