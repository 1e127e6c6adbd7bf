"""The compiler's caches across single-rule edits, and its faster address
vectors, give what the compiler gave before.

No timing here (see README "Compile of one update"): equivalence only.
- ``_prefix_vectors`` against the implementation it replaced (kept below
  as the reference), on random prefix constraints, with the cached prefix
  trees reused and not.
- Sequences of single edits (append, delete, insert at 1, replace, a rule
  changed in place) on ClassBench sets and on random rule sets: every
  compile with the caches of the ones before equals, field by field, a
  compile from cold caches (which the golden digests of
  test_datapath_compile_speed tie to the old compiler's bytes)."""
from __future__ import annotations

import copy
from array import array
from dataclasses import asdict, fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath import compiler
from bpf_iptables.datapath.compiler import Compiled, Entry, Intervals, compile_chain
from bpf_iptables.datapath.fields import Prefix, PrefixField
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from bpf_iptables.errors import NotSupported, TableOpError, XtablesError
from bpf_iptables.model import Rule, Table
from tests.support import compile_golden as G
from tests.support.shared import ruleset
from tests.test_datapath_property import rule_sets


def reference_prefix_vectors(live: int, per_entry: list[tuple[int, PrefixField]]
                             ) -> tuple[list[tuple[int, int]], list[int]]:
    """compiler._prefix_vectors as of 6e84799 (a stack walk per compile)."""
    pos: dict[tuple[int, int], int] = {}
    neg: dict[tuple[int, int], int] = {}
    positive: list[int] = []
    for e, pf in per_entry:
        p = pf.positive
        if p is not None:
            key = (p.addr, p.length)
            pos[key] = pos.get(key, 0) | 1 << e
            positive.append(e)
        if pf.negative:
            for p in pf.negative:
                key = (p.addr, p.length)
                neg[key] = neg.get(key, 0) | 1 << e
    no_positive = live & ~compiler.bits(positive)
    order = sorted({(0, 0), *pos, *neg})
    vectors = []
    stack: list[tuple[int, int, int]] = [(1 << 33, 0, 0)]
    for key in order:
        addr = key[0]
        while stack[-1][0] <= addr:
            stack.pop()
        _, ok, bad = stack[-1]
        ok |= pos.get(key, 0)
        b = neg.get(key)
        if b is not None:
            bad |= b
        stack.append((addr + (1 << (32 - key[1])), ok, bad))
        vectors.append((ok | no_positive) & ~bad if bad else ok | no_positive)
    return order, vectors


# a small pool of nested and disjoint prefixes (0/0 included: a positive
# 0/0 is what an extension's lowering may leave)
POOL = [Prefix(0, 0), Prefix(10 << 24, 8), Prefix(10 << 24, 16), Prefix(10 << 24 | 1 << 8, 24),
        Prefix(10 << 24 | 1 << 8 | 7, 32), Prefix(10 << 24 | 2 << 16, 16), Prefix(192 << 24, 2),
        Prefix(192 << 24 | 168 << 16, 16), Prefix(0, 1), Prefix(1 << 31, 1)]

prefix_fields = st.builds(
    PrefixField,
    positive=st.one_of(st.none(), st.sampled_from(POOL)),
    negative=st.lists(st.sampled_from(POOL), max_size=2).map(tuple))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(prefix_fields, st.booleans()), max_size=40), st.booleans())
def test_prefix_vectors_equal_the_stack_walk(entries, fresh):
    if fresh:
        compiler.clear_caches()
    per_entry = [(i, pf) for i, (pf, is_live) in enumerate(entries) if is_live]
    live = compiler.bits([i for i, _ in per_entry] + [len(entries)])   # + the policy
    per_entry.append((len(entries), PrefixField()))
    order, vectors = compiler._prefix_vectors(live, per_entry)
    want_order, want_vectors = reference_prefix_vectors(live, per_entry)
    assert [tuple(k) for k in order] == want_order
    assert vectors == want_vectors
    iv = compiler.address_table(live, per_entry)
    want = compiler.address_intervals({Prefix(*k): v for k, v in zip(want_order, want_vectors)})
    assert snapshot_intervals(iv) == snapshot_intervals(want)


# -- compiles with warm caches equal cold ones, field by field ------------------

def snapshot_intervals(iv: Intervals | None) -> tuple | None:
    if iv is None:
        return None
    return (list(iv.bounds), list(iv.index), list(iv.vectors), bytes(iv.top), iv.probes)


def snapshot_entry(e: Entry) -> tuple:
    return tuple(getattr(e, f.name) for f in fields(Entry))


def snapshot(c: Compiled) -> dict:
    """Every field of ``c`` as plain values (entries slot by slot)."""
    out = {}
    for f in fields(Compiled):
        if f.name in ("serial", "edit"):   # (bookkeeping of the patch, not contents)
            continue
        v = getattr(c, f.name)
        if f.name == "entries":
            v = [snapshot_entry(e) for e in v]
        elif f.name == "shape":
            v = asdict(v)
        elif isinstance(v, Intervals) or f.name in ("src_iv", "dst_iv"):
            v = snapshot_intervals(v)
        elif isinstance(v, array):
            v = bytes(v)
        out[f.name] = v
    return out


def cold_snapshot(table: Table, hook: str) -> dict | str:
    """A compile from empty caches, without the patch of flat chains; the
    warm caches are put back after."""
    saved = (dict(compiler._fields_cache), list(compiler._layouts), dict(compiler._flat))
    compiler.clear_caches()
    try:
        return snapshot(compile_chain(table, hook, G.INTERFACES))
    except NotSupported as exc:
        return f"NotSupported: {exc}"
    finally:
        compiler.clear_caches()
        compiler._fields_cache.update(saved[0])
        compiler._layouts[:] = saved[1]
        compiler._flat.update(saved[2])


def warm_snapshot(table: Table, hook: str) -> dict | str:
    try:
        return snapshot(compile_chain(table, hook, G.INTERFACES))
    except NotSupported as exc:
        return f"NotSupported: {exc}"


def edit(table: Table, hook: str, kind: str, at: int, other: Rule) -> None:
    """One single-rule change of ``hook``'s rules, in place (as the server's table)."""
    rules = table.chains[hook].rules
    if kind == "append":
        rules.append(other)
    elif kind == "insert1":
        rules.insert(0, other)
    elif kind == "insert" and rules:
        rules.insert(at % (len(rules) + 1), other)
    elif kind == "delete" and rules:
        del rules[at % len(rules)]
    elif kind == "delete1" and rules:
        del rules[0]
    elif kind == "replace" and rules:
        rules[at % len(rules)] = other
    elif kind == "mutate" and rules:
        # the same rule object with other content: its cached constraints are stale
        rule = rules[at % len(rules)]
        rule.dst_inv = not rule.dst_inv


EXTRA = ["-s 10.255.1.1 -p tcp --dport 8080 -j ACCEPT", "-d 192.0.2.0/24 -j DROP",
         "-p udp --sport 53 -j ACCEPT", "-s 10.0.0.0/8 ! -d 10.1.0.0/16 -j DROP",
         "-p tcp --tcp-flags SYN,ACK SYN -m length --length 40:60 -j DROP"]


def extra_rule(k: int, hook: str = "INPUT") -> Rule:
    return table_from_lines([f"-A {hook} {EXTRA[k % len(EXTRA)]}"]).chains[hook].rules[0]


SEQUENCE = ["append", "delete", "insert1", "delete1", "replace", "insert", "mutate",
            "append", "delete1", "replace"]


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_classbench_edit_sequences_equal_cold_compiles(name):
    table = table_from_save(ruleset(name).read_text())
    compiler.clear_caches()
    assert warm_snapshot(table, "INPUT") == cold_snapshot(table, "INPUT")
    n = len(table.chains["INPUT"].rules)
    for step, kind in enumerate(SEQUENCE):
        edit(table, "INPUT", kind, n // 2 + 7 * step, extra_rule(step))
        assert warm_snapshot(table, "INPUT") == cold_snapshot(table, "INPUT"), (step, kind)
    # an edit back to a rule set compiled before finds the older layouts
    edit(table, "INPUT", "delete1", 0, extra_rule(0))
    assert warm_snapshot(table, "INPUT") == cold_snapshot(table, "INPUT")


def drawn_table(drawn, fresh: bool) -> "Table | None":
    """The table of a drawn rule set (None: the front end refuses it);
    ``fresh``: from empty compile caches, else with those of earlier examples."""
    lines, _ = drawn
    try:
        table = table_from_lines(lines)
    except (XtablesError, TableOpError):
        return None
    if fresh:
        compiler.clear_caches()
    return table


edits = st.lists(st.tuples(st.sampled_from(SEQUENCE + ["delete", "insert"]),
                           st.integers(0, 10_000), st.integers(0, len(EXTRA) - 1)),
                 min_size=1, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(rule_sets(sorted(G.INTERFACES), "INPUT"), edits, st.booleans())
def test_random_edit_sequences_equal_cold_compiles(drawn, steps, fresh):
    """User chains, -g, RETURN, every field; the caches of earlier examples
    kept or not."""
    table = drawn_table(drawn, fresh)
    if table is None:
        return
    assert warm_snapshot(table, "INPUT") == cold_snapshot(table, "INPUT")
    for kind, at, k in steps:
        edit(table, "INPUT", kind, at, extra_rule(k))
        assert warm_snapshot(table, "INPUT") == cold_snapshot(table, "INPUT"), (kind, at, k)


def test_a_copied_rule_set_compiles_as_the_original():
    """Same content, other objects (the content map, not the identity map)."""
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    compiler.clear_caches()
    want = warm_snapshot(table, "INPUT")
    assert warm_snapshot(copy.deepcopy(table), "INPUT") == want


@pytest.mark.parametrize("lines, tracks", [
    (["-N X", "-A X -m conntrack --ctstate NEW -j DROP", "-A INPUT -j ACCEPT"], True),
    (["-N X", "-A X -s 10.0.0.1 -m conntrack --ctstate NEW -j DROP", "-A INPUT -j X"], True),
    (["-A INPUT -m state --state INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED -j DROP"], True),
    (["-A OUTPUT -m conntrack --ctstate NEW -j DROP", "-A INPUT -s 10.0.0.1 -j DROP"], True),
    (["-N X", "-A X -j DROP", "-A INPUT -p tcp -j X", "-A OUTPUT -j ACCEPT"], False),
])
def test_a_conntrack_match_anywhere_puts_the_tracker_in_every_hook(lines, tracks):
    """Walked chains answer from their decompositions (twice: the second
    compile from the caches), the others are scanned."""
    compiler.clear_caches()
    table = table_from_lines(lines)
    for _ in range(2):
        assert ("ctstate" in compile_chain(table, "INPUT", G.INTERFACES).shape.fields) == tracks


def reference_buckets(bounds: list[int]) -> tuple[bytes, int]:
    """compiler.with_buckets as of 6e84799 (top and probes)."""
    from collections import Counter
    top = array("I", bytes(4 << 16))
    firsts = [(lo + 0xFFFF) >> 16 for lo in bounds]
    firsts.append(1 << 16)
    for i in range(len(bounds)):
        first, last = firsts[i], firsts[i + 1]
        if first < last:
            top[first:last] = array("I", [i]) * (last - first)
    inside = Counter(b >> 16 for b in bounds if b & 0xFFFF)
    return bytes(top), max(inside.values(), default=0).bit_length()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sets(st.one_of(st.integers(1, (1 << 32) - 1),
                         st.integers(0, 0xFFFF).map(lambda h: h << 16),
                         st.integers(0, 40).map(lambda k: (10 << 24) + k * 4096)), max_size=60))
def test_buckets_equal_the_loop(starts):
    bounds = sorted({0, *starts})
    iv = compiler.with_buckets(Intervals(bounds, [0] * len(bounds), []))
    assert (bytes(iv.top), iv.probes) == reference_buckets(bounds)


def reference_layout(order: list[tuple[int, int]]) -> tuple:
    """compiler._layout as of 6e84799: (bounds, index, owners, top, probes)."""
    ends = [a + (1 << (32 - n)) for a, n in order]
    cuts = sorted({0, *(a for a, _ in order), *(e for e in ends if e < 1 << 32)})
    stack: list[int] = []
    ids = [-1] * len(order)
    owners: list[int] = []
    index: list[int] = []
    nxt = 0
    for start in cuts:
        while stack and ends[stack[-1]] <= start:
            stack.pop()
        while nxt < len(order) and order[nxt][0] == start:
            stack.append(nxt)
            nxt += 1
        top = stack[-1]
        if ids[top] < 0:
            ids[top] = len(owners)
            owners.append(top)
        index.append(ids[top])
    return (cuts, index, owners, *reference_buckets(cuts))


def random_prefix(draw_bits: int, length: int) -> Prefix:
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return Prefix(draw_bits & mask, length)


prefix_sets = st.sets(st.builds(random_prefix, st.one_of(
    st.integers(0, (1 << 32) - 1), st.integers(0, 255).map(lambda k: (10 << 24) | k << 12)),
    st.integers(0, 32)), max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(prefix_sets)
def test_layouts_equal_the_sweep(prefixes):
    """The numpy layout (from the set, and from a sorted list) against the
    sweep it replaced; links against a parent search by containment."""
    keys = {compiler.ROOT, *prefixes}
    order = sorted((a, n) for a, n in keys)
    want = reference_layout(order)
    compiler.clear_caches()
    for layout in (compiler._layout_of(keys), compiler._layout(order)):
        assert [tuple(k) for k in layout.order] == order
        assert (layout.bounds, layout.index, layout.owners, bytes(layout.top),
                layout.probes) == want
        parents = []
        for i, k in enumerate(order[1:], 1):
            holders = [j for j in range(i) if Prefix(*order[j]).contains(Prefix(*k))]
            parents.append((i, max(holders, key=lambda j: order[j][1])))
        assert layout.links == parents
