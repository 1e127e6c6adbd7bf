"""The address layout of one added or removed prefix, patched from the
previous layout (compiler._layout_edit), is the full build's, field by field."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from bpf_iptables.datapath import compiler as C


def _prefix(addr: int, length: int) -> tuple[int, int]:
    return (addr & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF if length else 0, length)


# clustered addresses so prefixes nest and share starts and ends
_addr = st.one_of(st.integers(0, 0xFFFFFFFF),
                  st.sampled_from([0, 0x0A000000, 0x0A0A0000, 0x0A0A0A00, 0xFFFFFFFF,
                                   0xFFFF0000, 0x0A0AFF00, 0x0A0B0000]),
                  st.integers(0x0A000000, 0x0A00FFFF))
_len = st.one_of(st.integers(0, 32), st.sampled_from([0, 1, 8, 16, 24, 31, 32]))
_pfx = st.builds(_prefix, _addr, _len)


def _full(keys: set) -> C._Layout:
    pairs = sorted(keys)
    addrs = np.array([a for a, _ in pairs], dtype=np.int64)
    lengths = np.array([m for _, m in pairs], dtype=np.int64)
    return C._layout(pairs, addrs, lengths)


def _same(got: C._Layout, want: C._Layout) -> None:
    for name in C._Layout.__dataclass_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if name == "internal_levels":
            assert len(g) == len(w)
            for (a, b), (c, d) in zip(g, w):
                assert a.tolist() == c.tolist() and b.tolist() == d.tolist()
        elif isinstance(w, np.ndarray):
            assert g.tolist() == w.tolist(), name
        else:
            assert g == w, name
    assert got.links == want.links


@settings(max_examples=300, deadline=None)
@given(st.sets(_pfx, max_size=40), _pfx, st.booleans())
def test_one_prefix_added_or_removed(base: set, p: tuple[int, int], remove: bool) -> None:
    keys = {C.ROOT, *base} - {p}
    if p == C.ROOT:
        return
    before, after = (keys | {p}, keys) if remove else (keys, keys | {p})
    _same(C._layout_edit(_full(before), p, not remove), _full(after))


@settings(max_examples=60, deadline=None)
@given(st.lists(_pfx, min_size=1, max_size=30))
def test_a_chain_of_edits(ps: list) -> None:
    """Edits in turn: each patched layout is the base of the next."""
    keys = {C.ROOT}
    layout = _full(keys)
    for p in ps:
        if p == C.ROOT:
            continue
        add = p not in keys
        keys = keys | {p} if add else keys - {p}
        layout = C._layout_edit(layout, p, add)
        _same(layout, _full(keys))
