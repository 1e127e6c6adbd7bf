"""The ClassBench rule sets through the XDP classifier vs the reference.

fw1-1k: parsed line by line with the real command parser, every packet
checked with ``reference.evaluate``. fw1-10k and acl1-10k: parsed by the
real restore path (``Restorer``), a few thousand packets drawn inside the
rules' boxes (prefix and port-range edges included), just outside them,
uniformly and as non-first fragments, checked against a first-match scan
over the rules as tuples of ints (tests/support/classbench.py), itself
checked against ``reference.evaluate`` on a sample: verdicts, the counters
of every rule and the policy's."""
from __future__ import annotations

import difflib
import random

import pytest

from bpf_iptables.datapath.harness import Harness, table_from_save
from bpf_iptables.datapath.packets import header_length
from bpf_iptables.model import Rule, Table
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from bpf_iptables.render.save import save_table
from tests.support import classbench as cb
from tests.support.netns import bpf_command
from tests.support.shared import ruleset
from tests.support.wire import accept_foreign_sources, send_and_collect
from tests.test_datapath_traffic import datapath_command, ensure_bpffs, topology

# BPF_PROG_TEST_RUN tests: interfaces (and so ifindexes) are those of a
# namespace of the module's own
in_private_netns = pytest.mark.usefixtures("private_netns")

RULES = ruleset("classbench-fw1-1k.rules")
PACKETS = 400


def inside(rng: random.Random, addr: int, mask: int) -> int:
    return (addr & mask) | (rng.getrandbits(32) & ~mask & 0xFFFFFFFF)


def port_in(rng: random.Random, rule: Rule, which: str) -> int:
    for m in rule.matches:
        rng_ = getattr(m.data, which)
        edges = [p for p in (rng_.lo - 1, rng_.lo, rng_.hi, rng_.hi + 1) if 0 <= p <= 65535]
        return rng.choice(edges + [rng.randint(rng_.lo, rng_.hi)])
    return rng.randint(0, 65535)


def packets(table: Table, ifname: str, count: int, seed: int = 7) -> list[Packet]:
    rng = random.Random(seed)
    rules = table.chains["INPUT"].rules
    out = []
    for i in range(count):
        rule = rng.choice(rules)
        if i % 5 == 4:  # uniform traffic, mostly hitting the policy
            src, dst = rng.getrandbits(32), rng.getrandbits(32)
            proto = rng.choice((6, 17, 1))
        else:
            src = inside(rng, rule.src.addr, rule.src.mask)
            dst = inside(rng, rule.dst.addr, rule.dst.mask)
            proto = rule.proto or rng.choice((6, 17, 1))
        pkt = Packet(in_iface=ifname, src=src, dst=dst, proto=proto,
                     sport=port_in(rng, rule, "sport"), dport=port_in(rng, rule, "dport"),
                     tcp_flags=rng.choice((0x02, 0x10, 0x12)))
        pkt.length = header_length(pkt) + rng.randint(0, 1400)
        out.append(pkt)
    return out


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


@in_private_netns
def test_classbench_fw1_1k_matches_reference(harness):
    table = table_from_save(RULES.read_text())
    assert len(table.chains["INPUT"].rules) > 800
    ifname = sorted(harness.interfaces)[0]
    pkts = packets(table, ifname, PACKETS)
    report = harness.check(table, pkts)
    assert report.packets == PACKETS
    assert report.mismatches == []
    # the sample must exercise the classifier, not only the policy
    first_hits = {evaluate(table, p, count=False).hits[0] for p in pkts
                  if evaluate(table, p, count=False).hits}
    assert len(first_hits) > 100
    # ClassBench ends with a catch-all rule: uniform traffic lands there
    assert table.chains["INPUT"].rules[-1].counters.packets > 0


def test_classbench_compiles_ports_to_intervals():
    """Port ranges become a few intervals, not one entry per port."""
    from bpf_iptables.datapath.compiler import compile_chain

    table = table_from_save(RULES.read_text())
    c = compile_chain(table, "INPUT", {"lo": 1})
    ranges = {(getattr(m.data, "dport").lo, getattr(m.data, "dport").hi)
              for r in table.chains["INPUT"].rules for m in r.matches}
    assert any(hi - lo > 1000 for lo, hi in ranges)
    assert len(c.dport) <= 2 * len(ranges) + 2
    assert c.dport_bounds == sorted(set(c.dport_bounds))


# -- the 10k sets ---------------------------------------------------------------

PACKETS_10K = 3000
EVALUATE_SAMPLE = 300   # packets also run through reference.evaluate (~3 ms each)


def wide(rule) -> bool:
    """Any protocol, both prefixes /0 or /1."""
    return rule.proto == 0 and rule.src.cidr <= 1 and rule.dst.cidr <= 1


def without_catch_alls(table):
    """The table without the wide rules it ends with (ClassBench's catch-all
    and its halves): what they took falls to the policy now."""
    rules = list(table.chains["INPUT"].rules)
    while rules and wide(rules[-1]):
        rules.pop()
    short = Table.empty("filter")
    short.chains["INPUT"].policy = table.chains["INPUT"].policy
    short.chains["INPUT"].rules = rules
    return short


@in_private_netns
@pytest.mark.parametrize("name", ["classbench-fw1-10k", "classbench-acl1-10k"])
def test_classbench_10k_matches_reference(harness, name):
    table = cb.restore_table(ruleset(f"{name}.rules").read_text())
    bxs = cb.boxes(table)
    assert len(bxs) > 9000
    ifname = "dp0"
    pkts = cb.draw(bxs, PACKETS_10K, seed=1009, ifname=ifname)
    # the fast scan is the reference's first match on a spread-out sample
    assert cb.disagreements_with_evaluate(table, bxs, pkts[::PACKETS_10K // EVALUATE_SAMPLE]) == []

    want = cb.expect(bxs, table.chains["INPUT"].policy, pkts)
    prog, compiled = harness.load(table)
    assert len(compiled.counter_of) == len(bxs)
    assert cb.datapath_mismatches(prog, harness.interfaces[ifname], bxs, pkts, want) == []
    # the sample exercises many rules, both verdicts and the hot-drop
    assert len({i for i in want.first if i >= 0}) > 1500
    assert {"ACCEPT", "DROP"} <= set(want.verdicts)
    assert cb.HOTDROP in want.first

    # without the catch-alls, the packets they took fall to the policy
    # (the cut rules have no tcp match, so no hot-drop moves)
    short = without_catch_alls(table)
    sbxs = cb.boxes(short)
    assert len(sbxs) < len(bxs)
    first = [cb.POLICY if i >= len(sbxs) else i for i in want.first]
    want = cb.expect(sbxs, short.chains["INPUT"].policy, pkts, first)
    assert want.policy[0] > 100
    prog, compiled = harness.load(short)
    assert cb.datapath_mismatches(prog, harness.interfaces[ifname], sbxs, pkts, want) == []


# -- fw1-10k attached in a namespace, real packets ------------------------------

def counter_lines(save: str) -> list[str]:
    """iptables-save -c output without its comment lines."""
    return [line for line in save.splitlines() if not line.startswith("#")]


def diff(a: list[str], b: list[str], names: tuple[str, str]) -> str:
    return "\n".join(list(difflib.unified_diff(a, b, *names, n=0, lineterm=""))[:40])


def test_classbench_fw1_10k_enforced_live():
    """fw1-10k restored and attached (native XDP) in a server namespace, as
    iptables-legacy in a twin: frames from the client inside accepting and
    dropping rules' boxes (spoofed sources, destinations the server owns)
    are delivered or not as the reference says, and ``save -c`` shows the
    reference's counters for all 9,351 rules on both sides."""
    ensure_bpffs()
    text = ruleset("classbench-fw1-10k.rules").read_text()
    table = cb.restore_table(text)
    pkts = cb.live_packets(cb.boxes(table), random.Random(23))
    copies = {p.ip_id: 1 + p.ip_id % 3 for p in pkts}
    want = {}
    for p in pkts:
        for _ in range(copies[p.ip_id]):
            verdict = evaluate(table, p).verdict
        if verdict == "ACCEPT":
            want[p.ip_id] = copies[p.ip_id]
    assert 0 < len(want) < len(pkts)
    want_save = counter_lines(save_table(table, counters=True))
    batch = [(p, copies[p.ip_id]) for p in pkts]

    with topology("cbb") as ours, topology("cbl") as legacy:
        for t in (ours, legacy):
            accept_foreign_sources(t.server.name, "s0", {p.dst for p in pkts})
        r = legacy.server.run(["iptables-legacy-restore"], input=text)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(bpf_command("iptables-restore"), input=text)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach", "--mode", "xdp"))
        assert r.returncode == 0, r.stderr
        status = ours.server.run(datapath_command("status")).stdout
        assert "s0 ifindex 2 xdp ok" in status, status

        got = {name: send_and_collect(t.client.name, "c0", t.server.name, "s0", batch)
               for name, t in (("ours", ours), ("legacy", legacy))}
        assert got["legacy"] == want, "iptables-legacy disagrees with the reference"
        assert got["ours"] == want

        saves = {"ours": ours.server.run(bpf_command("iptables-save", "-c")),
                 "legacy": legacy.server.run(["iptables-legacy-save", "-c"])}
        for name, r in saves.items():
            assert r.returncode == 0, r.stderr
            lines = counter_lines(r.stdout)
            assert lines == want_save, diff(want_save, lines, ("reference", name))
