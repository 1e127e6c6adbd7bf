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
import itertools
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


def images(c) -> list[tuple[str, bool, bytes, bytes]]:
    from bpf_iptables.datapath.image import joined, map_image
    return [(m.name, m.clear, *joined(m.items)) for m in map_image(c, c.shape)]


def cold(table: Table, hook: str = "INPUT"):
    compiler.clear_caches()
    try:
        return images(compile_chain(table, hook, G.INTERFACES))
    finally:
        compiler.clear_caches()


def variants(table: Table) -> list[tuple[str, Table]]:
    """``table`` with one INPUT rule appended, deleted in the middle,
    inserted at position 1, replaced in place (same object, other
    content), and as a deep copy (same content, other objects)."""
    rules = table.chains["INPUT"].rules
    extra = table_from_lines(["-A INPUT -s 192.0.2.7 -p tcp --dport 22 -j DROP"]
                             ).chains["INPUT"].rules[0]

    def with_rules(new_rules) -> Table:
        t = copy.copy(table)
        t.chains = dict(table.chains)
        t.chains["INPUT"] = copy.copy(table.chains["INPUT"])
        t.chains["INPUT"].rules = new_rules
        return t

    mid = len(rules) // 2
    changed = with_rules(list(rules))
    if rules:
        # a rule mutated in place: the identity map must not serve its old constraints
        victim = copy.copy(rules[mid])
        changed.chains["INPUT"].rules[mid] = victim
    out = [("append", with_rules(rules + [extra])),
           ("delete", with_rules(rules[:mid] + rules[mid + 1:])),
           ("insert1", with_rules([extra] + rules)),
           ("copy", copy.deepcopy(table))]
    if rules:
        out.append(("mutated", changed))
    return out


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_warm_compiles_equal_cold_ones(name):
    table = table_from_save(ruleset(name).read_text())
    for label, variant in variants(table):
        compiler.clear_caches()
        compile_chain(table, "INPUT", G.INTERFACES)      # the cache now holds ``table``
        if label == "mutated":
            victim = variant.chains["INPUT"].rules[len(table.chains["INPUT"].rules) // 2]
            compile_chain(variant, "INPUT", G.INTERFACES)   # cached by identity...
            victim.dst_inv = not victim.dst_inv                # ...then changed in place
        warm = images(compile_chain(variant, "INPUT", G.INTERFACES))
        assert warm == cold(variant), label


def test_warm_compiles_of_random_rule_sets_equal_cold_ones():
    """User chains, -g, RETURN, every field: each golden case compiled
    after the previous one (caches warm, many rules shared by content),
    then after its own variants."""
    compiler.clear_caches()
    rng = random.Random(5)
    picked = rng.sample(cases("INPUT"), 40) + rng.sample(cases("FORWARD"), 15)
    wrong = []
    for case in picked:
        table = table_from_lines(G.unsqueeze(case["lines"]))
        hook = case["hook"]
        warm = images(compile_chain(table, hook, G.INTERFACES))
        if warm != cold(table, hook):
            wrong.append(case["lines"])
        if hook == "INPUT":
            for label, variant in variants(table):
                compile_chain(table, hook, G.INTERFACES)
                if images(compile_chain(variant, hook, G.INTERFACES)) != cold(variant, hook):
                    wrong.append((label, case["lines"]))
    assert not wrong, wrong[:2]


def test_bitvectors_laid_out_together_equal_one_by_one(monkeypatch):
    """The numpy layout (in passes of rows, shared values once) equals bitvector()
    of each value: dense, sparse (zero words: summary bits clear), empty, full."""
    from bpf_iptables.datapath import image
    rng = random.Random(3)
    for nwords in (1, 2, 4, 64, 128, 256):
        top = nwords * 64
        values = [rng.getrandbits(top) for _ in range(10)]
        values += [sum(1 << rng.randrange(top) for _ in range(k)) for k in range(1, 12)]
        values += [0, (1 << top) - 1]
        values += [values[4]] * 5          # one object, several slots
        want = b"".join(image.bitvector(v, nwords) for v in values)
        assert image.bitvectors(values, nwords) == want
        monkeypatch.setattr(image, "PASS_ROWS", 3)   # rows per numpy pass
        assert image.bitvectors(values, nwords) == want
        monkeypatch.undo()


def test_packed_images_read_like_lists_of_pairs():
    """Hash maps (iif, icmp) are written as Packed batches; the writer
    that deletes stale keys iterates them as (key, value) pairs."""
    from bpf_iptables.datapath.image import Packed, map_image
    table = table_from_lines([
        "-A INPUT -i dp0 -p icmp --icmp-type 8 -j DROP",
        "-A INPUT -m mac --mac-source 0a:00:00:00:00:01 -j ACCEPT",
        "-A INPUT -i lo -j ACCEPT"])
    c = compile_chain(table, "INPUT", G.INTERFACES)
    seen = []
    for m in map_image(c, c.shape):
        if isinstance(m.items, Packed):
            # (bounded: an iteration that never ends must fail, not hang)
            pairs = list(itertools.islice(m.items, len(m.items) + 1))
            assert len(pairs) == len(m.items)
            assert b"".join(k for k, _ in pairs) == m.items.keys
            assert b"".join(v for _, v in pairs) == m.items.values
            assert m.items[-1] == pairs[-1]
            seen.append(m.name) if m.clear else None
    assert seen == ["iif_map", "icmp_map"]
