"""The numpy address tables and the image made from them give what the
big-int tables gave, bit for bit.

No timing here (see README "Updates"): equivalence only, on random prefix
constraints (nested and disjoint, negated ones too) over entries spread
across many bitvector words.
- ``address_table(..., nwords)`` (compiler.prefix_rows: a bit matrix)
  against ``address_table(...)`` (Python ints, ``_prefix_vectors``, itself
  tested against the stack walk in test_datapath_compile_edits);
- the image of each: the vector rows with their summaries
  (``matrix_rows`` / ``_tree_summaries`` against ``vector_rows``), the
  pair summary's AND and per-bucket ORs (``_every_of``, ``_buckets_of``,
  ``_tree_buckets`` against the int loops);
- ``entry_blob`` by column against the loop over the entries."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath import compiler, image
from bpf_iptables.datapath.compiler import Intervals
from bpf_iptables.datapath.fields import Prefix, PrefixField
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from tests.support import compile_golden as G
from tests.support.shared import ruleset


def random_prefix(bits: int, length: int) -> Prefix:
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return Prefix(bits & mask, length)


# prefixes crowded into a few /8s (nesting, several per pair bucket) and
# anywhere (disjoint, short ones spanning buckets)
prefixes = st.builds(random_prefix, st.one_of(
    st.integers(0, (1 << 32) - 1),
    st.sampled_from([10, 172, 192]).flatmap(
        lambda a: st.integers(0, 255).map(lambda k: a << 24 | k << 14))),
    st.integers(0, 32))

prefix_fields = st.builds(
    PrefixField,
    positive=st.one_of(st.none(), prefixes),
    negative=st.lists(prefixes, max_size=2).map(tuple))


def tables(entries: list[PrefixField], spread: list[int]
           ) -> tuple[int, int, Intervals, Intervals]:
    """(live, nwords, the matrix table, the int table) of ``entries`` at
    entry indices ``spread`` (sorted), the policy after them."""
    policy = (spread[-1] + 1) if spread else 0
    per_entry = list(zip(spread, entries)) + [(policy, PrefixField())]
    live = compiler.bits([e for e, _ in per_entry])
    nwords = compiler.pow2_at_least((policy + 64) // 64)
    matrix = compiler.address_table(live, per_entry, nwords)
    ints = compiler.address_table(live, per_entry)
    return live, nwords, matrix, ints


entry_lists = st.lists(prefix_fields, max_size=30).flatmap(
    lambda fs: st.tuples(st.just(fs), st.lists(st.integers(0, 9000), min_size=len(fs),
                                               max_size=len(fs), unique=True).map(sorted)))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(entry_lists, st.booleans())
def test_matrix_tables_equal_the_int_tables(drawn, fresh):
    if fresh:
        compiler.clear_caches()
    entries, spread = drawn
    live, nwords, matrix, ints = tables(entries, spread)
    assert matrix.bounds == ints.bounds and matrix.index == ints.index
    assert (bytes(matrix.top), matrix.probes) == (bytes(ints.top), ints.probes)
    negated = any(pf.negative for pf in entries)
    assert (matrix.tree is None) == negated       # (a tree only without negations)
    assert (matrix.rows is None) == (not negated)  # (its rows made on demand)
    assert len(matrix.vectors) == len(ints.vectors)
    assert list(matrix.vectors) == list(ints.vectors)
    assert matrix.matrix().shape == (len(ints.vectors), nwords)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(entry_lists, st.lists(st.integers(0, (1 << 9100) - 1), min_size=3, max_size=3),
       st.integers(1, 3), st.sampled_from([image.FEW_INTERNAL, 0]))
def test_images_of_matrix_tables_equal_the_int_ones(drawn, masks, count, few):
    entries, spread = drawn
    kept, image.FEW_INTERNAL = image.FEW_INTERNAL, few   # (0: the reduceat path)
    try:
        check_images(entries, spread, masks, count)
    finally:
        image.FEW_INTERNAL = kept


def check_images(entries: list[PrefixField], spread: list[int], masks: list[int],
                 count: int) -> None:
    live, nwords, matrix, ints = tables(entries, spread)
    chosen = tuple([None, *[m & live for m in masks]][:count])
    got = image.matrix_rows(matrix, nwords, chosen)
    assert got == image.vector_rows(list(ints.vectors), nwords, chosen)
    bigger = image.matrix_rows(matrix, nwords * 2, chosen)   # a larger program
    assert bigger == image.vector_rows(list(ints.vectors), nwords * 2, chosen)
    spec = masks[0] & live
    assert image._every_of(matrix, live) == image._every(list(ints.vectors), live)
    assert image._buckets_of(matrix, spec) == image._buckets(ints, spec)


def test_entry_blob_by_column_equals_the_loop():
    """ClassBench entries, and rules with a non-contiguous mask (the
    residual test laid out by entry_bytes) and hashlimit/recent words."""
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    table_from_lines([
        "-I INPUT 3 -s 10.0.0.1/255.0.255.0 -p tcp -j DROP",
        "-A INPUT ! -d 10.0.7.0/255.255.0.255 -j ACCEPT",
        "-I INPUT 9 -m recent --name a --rcheck -j DROP",
        "-A INPUT -m hashlimit --hashlimit-upto 5/s --hashlimit-name h -j ACCEPT"], table)
    c = compiler.compile_chain(table, "INPUT", G.INTERFACES)
    assert len(c.entries) > 500
    assert any(e.fields.src.residual for e in c.entries)
    assert any(e.recent for e in c.entries) and any(e.hashlimit for e in c.entries)
    assert image.entry_blob(c.entries) == image._entry_blob_loop(c.entries)


def test_classbench_tables_are_trees():
    """The compiler takes the tree path for ClassBench's addresses (few
    internal prefixes), and the image never makes the rows elsewhere."""
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    c = compiler.compile_chain(table, "INPUT", G.INTERFACES)
    image.map_image(c, c.shape)
    for iv in (c.src_iv, c.dst_iv):
        assert iv is not None and iv.tree is not None and iv.rows is None
        assert iv.tree.internal.shape[0] * 10 < len(iv.vectors)

