"""What the kernel's verifier spends on the 10k-rule classifiers.

The scan loop, bounded by a count the verifier knew, was checked once per
step and per distinct state: fw1-10k's INPUT took 316,905 processed
instructions for XDP, 596,728 for TC (0.23 s and 0.43 s of every restore),
and xdp_reject's quote checksum 74k-80k. As may_goto loops (bpf/lib/loop.h)
they converge in a few passes, whatever the step count. Loads only: nothing
is attached, no packet is run."""
from __future__ import annotations

from dataclasses import replace

from bpf_iptables.datapath.harness import table_from_save
from bpf_iptables.datapath.verifier import parse, stats
from bpf_iptables.datapath.warm import shapes_of
from tests.support.shared import ruleset

# ten times what the programs take now (3k-11k), a fifth of the least they took before
CHEAP = 30_000


def fw1_shapes():
    return shapes_of(table_from_save(ruleset("classbench-fw1-10k.rules").read_text()))


def test_stats_log_is_parsed():
    log = ("verification time 2354 usec\nstack depth 200\nprocessed 3046 insns (limit "
           "1000000) max_states_per_insn 9 total_states 118 peak_states 118 mark_read 0\n")
    s = parse("xdp_filter", 889, log)
    assert (s.processed, s.total_states, s.peak_states, s.usec) == (3046, 118, 118, 2354)


def test_fw1_10k_classifiers_verify_cheaply():
    seen = []
    for shape, tc in fw1_shapes():
        for s in stats(shape, tc):
            seen.append((tc, s.function))
            assert 0 < s.processed < CHEAP, (tc, s)
    # what a first restore loads: the classifier and the REJECT reply
    # builder, for XDP (INPUT) and for TC (the looped copies' INPUT)
    assert sorted(seen) == [(False, "xdp_filter"), (False, "xdp_reject"),
                            (True, "xdp_filter"), (True, "xdp_reject")]


def test_scan_verification_does_not_depend_on_its_steps():
    """STEPS is only a value the program stores in map memory now; with
    the count known to the verifier, fw1-10k's XDP classifier took 567,272
    instructions at 60 steps and 971,200 at 600 (near the limit)."""
    shape = next(s for s, tc in fw1_shapes() if not tc)

    def scan(steps: int) -> int:
        return next(s.processed for s in stats(replace(shape, steps=steps))
                    if s.function == "xdp_filter")

    assert scan(60) == scan(600) < CHEAP
