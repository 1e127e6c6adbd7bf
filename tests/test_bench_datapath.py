"""The data-path benchmark end to end at its smallest: N=10 of ClassBench
fw1 and of the synthetic worst case through BPF_PROG_TEST_RUN (probes and
the traffic mix), live traffic of the synthetic set through every system
(bpf-iptables at XDP native, XDP generic and TC ingress, iptables-legacy,
iptables-nft, the bare XDP drop), restore and -A/-D of the 1k set, one run
each; then the report's structure, counted == sent, and the aims' PASS/MISS
logic."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

from bench import datapath, dpreport
from bench.frontend import env_for_children
from bench.testrun_worker import alternating, sample_order
from bench.control import (BPF_ATTACHED, BPF_TRAFFIC, BPF_UNATTACHED, LEGACY_SYS,
                           LEGACY_TRAFFIC, Timing)
from bench.live import BARE_NAME, BPF_NAME, LEGACY_NAME, SYSTEMS, LiveResult, LiveRun
from tests.support.shared import shared_dir


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_smallest_datapath_bench_end_to_end(tmp_path: Path) -> None:
    before = _namespaces()
    settings = datapath.Settings(counts=(10,), rulesets=("classbench-fw1-10k.rules",),
                                 synthetic_counts=(10,), mix_rule_packets=8,
                                 mix_policy_packets=2, mix_repeat=500, repeat=1000, runs=1,
                                 live_runs=1, live_seconds=0.1,
                                 live_synthetic_counts=(10,), live_rulesets=(datapath.SYNTHETIC,),
                                 restore_runs=1, update_runs=1,
                                 control_ruleset="classbench-fw1-1k.rules")
    res = datapath.run(settings, shared=shared_dir())
    # nothing of the bench's is left behind
    assert not {n for n in _namespaces() - before if n.startswith("bpft-bench")}

    entry, synthetic = res.testrun
    assert entry["rules"] == 10 and entry["requested"] == 10
    assert synthetic["ruleset"] == datapath.SYNTHETIC and synthetic["rules"] == 10
    # the synthetic probe misses the 9 rules on the destination port only
    assert [(p["position"], p["first_match"], p["verdict"]) for p in synthetic["probes"]] == \
        [("first", 0, "ACCEPT"), ("middle", 4, "ACCEPT"), ("last", 9, "DROP"),
         ("policy", None, "ACCEPT")]
    for e in res.testrun:
        m = e["mix"]
        assert m["packets"] == 10 and m["policy_packets"] >= 1
        assert m["counters_match"] and m["verdicts_match"] and m["counted"] == m["sent"]
        assert m["sent"] == 10 * (1 + 500) and 0 < m["mean_ns"] <= m["p90_ns"] * 10
    assert [p["position"] for p in entry["probes"]] == ["first", "middle", "last", "policy"]
    for p in entry["probes"] + synthetic["probes"]:
        assert p["counted"] == p["sent"] == 1 + 1000       # warm-up frame + repeat
        assert p["verdict"] == p["reference_verdict"]
        assert p["frame_bytes"] == 64 and 0 < p["samples_ns"][0] < 100_000
    assert entry["memlock_bytes"] > 0 and entry["maps"] > 0

    assert sorted(r.system for r in res.live) == sorted(SYSTEMS), res.notes
    for r in res.live:
        if r.system == BARE_NAME:
            assert r.rules == 0 and r.requested == 0
        else:
            # the frame misses 9 rules on --dport and is dropped by the 10th
            assert (r.rules, r.ruleset, r.first_match, r.verdict) == \
                (10, datapath.SYNTHETIC, 9, "DROP")
        assert len(r.runs) == 1 and r.runs[0].sent > 100 and r.all_counted, (r.system, r.runs)
        assert 0.01 < r.mpps < 100

    ops = {(t.operation, t.system) for t in res.control if t.times}
    for op in ("restore", "append", "delete", "insert"):
        for system in (LEGACY_SYS, BPF_UNATTACHED, BPF_ATTACHED):
            assert (op, system) in ops, res.notes
    for op in ("append", "delete", "insert"):
        for system in (LEGACY_TRAFFIC, BPF_TRAFFIC):
            assert (op, system) in ops, res.notes
    # the flow did run while the commands ran
    assert all(t.packets > 0 for t in res.control if t.system in (LEGACY_TRAFFIC, BPF_TRAFFIC)), \
        [(t.system, t.packets) for t in res.control]

    dpreport.write_csv(res, tmp_path / "d.csv")
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    kinds = {r["measurement"] for r in rows}
    assert {"ns_per_packet_test_run", "ns_per_packet_test_run_mix", "map_memlock",
            "ns_per_packet_live", "restore", "append", "delete", "insert"} <= kinds
    for r in rows:
        if r["measurement"].startswith("ns_per_packet"):
            assert r["sent"] == r["counted"]
    md = dpreport.markdown(res, None)
    assert md.startswith("# Data-path benchmark")
    table = dpreport.main_table(res)
    assert table[0] == "| rules | bpf-iptables, TEST_RUN, fw1-10k | " \
        "bpf-iptables, TEST_RUN, synthetic-worst |"
    assert table[2].startswith("| 10 | ")
    live_rows = dpreport.live_table(res, datapath.SYNTHETIC)
    assert live_rows[0].count("|") == 9 and live_rows[2].startswith("| 10 | ")
    # the ratios of XDP native to legacy and to the bare drop, same run
    assert live_rows[2].split(" | ")[-2].endswith("x") and live_rows[2].endswith("% |")
    assert live_rows[2].count("Mpps") == 5 and "counted != sent" not in live_rows[2]
    assert live_rows[3].startswith("| ceiling: bare XDP drop")
    verdicts = [a.verdict for a in dpreport.aims(res)]
    assert verdicts[:4] == ["n/a"] * 4          # no 10k / 50k run here
    # restore, then -A/-D/-I 1 idle and under traffic
    assert set(verdicts[4:]) <= {"PASS", "MISS"} and len(verdicts) == 4 + 1 + 6


def _entry(count: int, ns: list[int], mix: float | None = None) -> dict:
    probes = [{"position": "first", "first_match": 0, "samples_ns": ns, "sent": 1,
               "counted": 1, "verdict": "DROP", "reference_verdict": "DROP",
               "proto": 17, "frame_bytes": 64}]
    mixed = None if mix is None else {"mean_ns": mix, "p90_ns": int(mix * 1.2),
                                      "per_packet_ns": [mix], "counters_match": True,
                                      "verdicts_match": True}
    return {"ruleset": "classbench-fw1-10k.rules", "rules": count, "requested": count,
            "entries": count + 1, "maps": 1, "memlock_bytes": 100 * count, "probes": probes,
            "mix": mixed}


def _live(system: str, count: int, ns: int) -> LiveResult:
    # CPU time = wall time: the same ns/packet whichever clock the kernel needs
    res = LiveResult(system, count, None, "DROP", [LiveRun(1000, 1000, ns * 1e-6, ns * 1e-6)],
                     requested=count, ruleset="classbench-fw1-10k.rules" if count else "")
    return res


def test_aims_follow_the_numbers() -> None:
    settings = datapath.Settings(counts=(10, 10000), rulesets=("classbench-fw1-10k.rules",),
                                 synthetic_counts=(),
                                 live_rulesets=("classbench-fw1-10k.rules",))
    res = datapath.DatapathResults(settings, [_entry(10, [90, 100, 95], mix=60.0),
                                              _entry(10000, [140, 149, 160], mix=100.0)],
                                   [_live(BPF_NAME, 10000, 2000), _live(LEGACY_NAME, 10000, 40000),
                                    _live(BARE_NAME, 0, 1000)],
                                   [Timing("restore", BPF_ATTACHED, [0.9, 1.2, 1.1]),
                                    Timing("append", BPF_ATTACHED, [0.04, 0.03, 0.06]),
                                    Timing("delete", BPF_ATTACHED, [0.05, 0.05, 0.05]),
                                    Timing("insert", BPF_TRAFFIC, [0.02, 0.03, 0.2])], cpu=1)
    got = [(a.measured, a.verdict) for a in dpreport.aims(res)]
    assert got == [("100 / 60 ns = 1.67x (p90 120 / 72 ns)", "MISS"),
                   ("149 / 95 ns = 1.57x", "MISS"), ("100 ns (p90 120 ns)", "PASS"),
                   ("149 ns", "PASS"),
                   ("0.500 / 0.0250 Mpps = 20.0x (the bare XDP drop itself: 40.0x iptables-legacy)",
                    "MISS"), ("0.500 / 1.000 Mpps = 50%", "PASS"),
                   ("1.10 s", "MISS"), ("40.0 ms", "PASS"), ("50.0 ms", "MISS"),
                   ("30.0 ms", "PASS"), ("1.0 MiB (100 B/rule)", "PASS")]
    summary = dpreport.summary(res)
    assert "| aim (issue 6) |" in summary
    assert "| 10,000 | 1.00 MB (100 B/rule, 1 maps) |" in summary


def test_interleaved_testrun_keeps_each_probe_apart() -> None:
    """The worker loads every N first and takes sample k of every probe at
    every N before sample k + 1: each probe still gets exactly ``runs``
    samples of its own, and its counter check stays exact when probes
    share a rule (at N=1 the first, middle and last probes all first-match
    rule 0), as does each N's mix."""
    settings = datapath.Settings(counts=(), rulesets=(), synthetic_counts=(1, 10),
                                 repeat=1000, runs=3, mix_rule_packets=4,
                                 mix_policy_packets=2, mix_repeat=200)
    before = _namespaces()
    out = datapath.run_testrun(settings, [], datapath.bench_cpu(), env_for_children(),
                               lambda s: None)
    assert not {n for n in _namespaces() - before if n.startswith("bpft-bench")}
    one, ten = out
    assert (one["requested"], one["rules"], ten["requested"], ten["rules"]) == (1, 1, 10, 10)
    assert [p["first_match"] for p in one["probes"]] == [0, 0, 0, None]
    assert [p["first_match"] for p in ten["probes"]] == [0, 4, 9, None]
    for e in out:
        # each program's own maps, not every map the worker holds
        assert 0 < e["memlock_bytes"] < 64 * 2**20 and e["maps"] < 40
        for p in e["probes"]:
            assert len(p["samples_ns"]) == 3 and all(0 < s < 100_000 for s in p["samples_ns"])
            assert p["sent"] == p["counted"] == 1 + 3 * 1000, p
            assert p["verdict"] == p["reference_verdict"]
        m = e["mix"]
        assert len(m["per_packet_ns"]) == m["packets"] == 6
        assert m["counters_match"] and m["verdicts_match"] and m["sent"] == 6 * (1 + 200)


def test_sample_order_puts_the_first_n_next_to_the_largest() -> None:
    """The aims compare 10k and 50k rules with 10: within a round of
    interleaved samples the 10-rule program sits between the two largest,
    and every other round runs the order backwards."""
    counts = [10, 100, 1000, 10000, 50000]
    assert sample_order(counts) == [100, 1000, 10000, 10, 50000]
    assert sample_order([10, 10000]) == [10, 10000] and sample_order([10]) == [10]
    assert list(alternating(sample_order(counts), 0)) == [100, 1000, 10000, 10, 50000]
    assert list(alternating(sample_order(counts), 1)) == [50000, 10, 10000, 1000, 100]


def test_the_live_aims_use_the_bare_drop_measured_beside() -> None:
    """With a bare drop measured beside XDP native's 10k cell (its runs
    alternated: live.measure_beside_bare), the aims and the table's ratio
    use that one; the run's own bare drop stays the table's ceiling."""
    settings = datapath.Settings(counts=(10000,), rulesets=(), synthetic_counts=(),
                                 live_rulesets=("classbench-fw1-10k.rules",))
    beside = _live(BARE_NAME, 10000, 1500)
    res = datapath.DatapathResults(settings, [], [_live(BPF_NAME, 10000, 2000),
                                                  _live(LEGACY_NAME, 10000, 40000),
                                                  _live(BARE_NAME, 0, 1000), beside], [], cpu=1)
    assert dpreport.bare_result(res).requested == 0
    assert [(a.measured, a.verdict) for a in dpreport.live_aims(res)] == [
        ("0.500 / 0.0250 Mpps = 20.0x (the bare XDP drop itself: 26.7x iptables-legacy)", "MISS"),
        ("0.500 / 0.667 Mpps (runs alternated) = 75%", "PASS")]
    rows = dpreport.live_table(res, "classbench-fw1-10k.rules")
    assert rows[2].startswith("| 10,000 | ") and rows[2].endswith(" | 75% |")
    assert rows[3].startswith("| ceiling: bare XDP drop") and "1.000 Mpps" in rows[3]


def test_live_beside_the_bare_drop_alternates_two_topologies() -> None:
    """Both systems get every run, each counted == sent, and both pairs of
    namespaces are gone afterwards."""
    from bench import live, workload

    before = _namespaces()
    table = workload.load_source(datapath.SYNTHETIC, 10)
    probe = workload.live_probe(datapath.SYNTHETIC, table)
    live.ensure_bpffs()
    ours, bare = live.measure_beside_bare(
        BPF_NAME, workload.source_text(datapath.SYNTHETIC, 10), 10, probe, 2, 0.05,
        datapath.bench_cpu(), env_for_children(), "xdp")
    assert not {n for n in _namespaces() - before if n.startswith("bpft-bench")}
    assert (ours.system, bare.system) == (BPF_NAME, BARE_NAME)
    for res in (ours, bare):
        assert len(res.runs) == 2 and res.all_counted, res.runs
        assert all(r.sent > 0 for r in res.runs)
