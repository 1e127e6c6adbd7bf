"""The faster map image writes the same bytes as the implementation it
replaced (kept verbatim in tests/support/image_reference.py), and the
looped copies' program is given INPUT's image whenever the image would be
the same.

No timing here (speed: /work/prof/upd.sh and bench): equivalence only,
on ClassBench sets (fw1-1k, acl1-1k: address vectors, the pair summary)
and on random rule sets of the property test's generators (every field),
each in its own compiled shape and in the roomy shape an update loads."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest

from bpf_iptables.datapath import generation, image
from bpf_iptables.datapath.compiler import (PAIR_MIN_WORDS, Compiled, Shape, compile_chain,
                                            summary_words)
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from tests.support import compile_golden as G
from tests.support import image_reference as reference
from tests.support.shared import ruleset


def flat(images) -> list[tuple[str, bool, bytes, bytes]]:
    # the reference's Packed is its own class: joined by its own method
    return [(m.name, m.clear, *map(bytes, m.items.joined() if hasattr(m.items, "joined")
                                   else image.joined(m.items))) for m in images]


def without_ports_pair(got: list, shape: Shape) -> list:
    """The image as it was before the source x ports summary (filter.c
    PORTS_PAIR, checked from the bytes in test_datapath_pair): without
    ports_pair_map and the source vectors' third summary (pw)."""
    if not image.ports_pair(shape):
        return got
    nsum = summary_words(shape.nwords)
    old, new = (shape.nwords + 2 * nsum) * 8, (shape.nwords + 3 * nsum) * 8
    out = []
    for name, clear, keys, values in got:
        if name == "ports_pair_map":
            continue
        if name == "src_map":
            values = b"".join(values[at:at + old] for at in range(0, len(values), new))
        out.append((name, clear, keys, values))
    return out


def assert_same(c: Compiled, shape: Shape) -> None:
    shape = shape.union(c.shape)   # a program's shape covers the chain's
    generation.fit(c, shape)
    want = flat(reference.map_image(c, shape))
    got = without_ports_pair(flat(image.map_image(c, shape)), shape)
    assert [g[0] for g in got] == [w[0] for w in want]
    wrong = [g[0] for g, w in zip(got, want) if g != w]
    assert not wrong, wrong


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_classbench_images_are_the_reference_bytes(name):
    table = table_from_save(ruleset(name).read_text())
    c = compile_chain(table, "INPUT", G.INTERFACES)
    assert_same(c, c.shape)
    roomy = generation.roomy(c)
    assert image.pair_summary(roomy) or roomy.nwords < PAIR_MIN_WORDS
    assert_same(c, roomy)
    # and with the pair summary, twice: a second image of the same chain
    # must not differ from the first (whatever is kept between calls)
    big = replace(roomy, nwords=max(roomy.nwords, 2 * PAIR_MIN_WORDS))
    assert image.pair_summary(big)
    assert_same(c, big)
    assert_same(c, big)


def test_random_rule_set_images_are_the_reference_bytes():
    from tests.test_datapath_property import SHAPE
    warnings.simplefilter("ignore")
    cases = json.loads(G.GOLDEN.read_text())["cases"]
    done = 0
    for case in cases:
        table = table_from_lines(G.unsqueeze(case["lines"]))
        for min_shape in (None, SHAPE):
            try:
                c = compile_chain(table, case["hook"], G.INTERFACES, min_shape)
            except Exception:   # refused rule sets (NotSupported) have no image
                continue
            assert_same(c, c.shape)
            assert_same(c, generation.roomy(c))
            done += 1
    assert done >= 250


def test_looped_copies_share_the_image_when_only_the_program_differs():
    """After a restore, INPUT runs the server's spare (loaded for the
    restored set's intervals) and the looped copies' program one loaded
    for the first update's: the shapes differ in what the program is
    compiled for only, and one image is written to both."""
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    c = compile_chain(table, "INPUT", G.INTERFACES)
    shape = generation.roomy(c)
    compiled = generation.with_looped({"INPUT": c}, "xdpgeneric")
    other = replace(shape, src_nbounds=shape.src_nbounds + 2, steps=shape.steps - 1,
                    ncounters=shape.ncounters * 2, proto_max=shape.proto_max + 8)
    hooks = {"INPUT": {"shape": generation.shape_json(shape)},
             generation.LOOPED: {"shape": generation.shape_json(other)}}
    assert generation.twins(hooks, compiled) == {"INPUT": (generation.LOOPED,)}
    # the image really is the same for both shapes
    assert flat(image.map_image(c, shape)) == flat(image.map_image(c, other))
    # a shape whose image differs (more bitvector words) gets its own
    wider = replace(shape, nwords=shape.nwords * 2)
    hooks[generation.LOOPED] = {"shape": generation.shape_json(wider)}
    assert generation.twins(hooks, compiled) == {}


def test_kept_pair_tables_follow_the_rule_set():
    """Updates alternate: base, -A (one address open), base, -I 1, base.
    Each pair table is the reference's; the base's is built once and
    given again after the append and after the insert (two are kept)."""
    text = ruleset("classbench-fw1-1k.rules").read_text()
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("-A INPUT"))
    first = min(i for i, line in enumerate(lines) if line.startswith("-A INPUT"))
    rule = "-A INPUT -s 10.255.1.1/32 -p tcp -m tcp --dport 8080 -j ACCEPT"
    appended = lines[:last + 1] + [rule] + lines[last + 1:]
    inserted = lines[:first] + [rule] + lines[first:]
    chains = {name: compile_chain(table_from_save("\n".join(body) + "\n"), "INPUT", G.INTERFACES)
              for name, body in (("base", lines), ("appended", appended),
                                 ("inserted", inserted))}
    shape = replace(generation.roomy(chains["inserted"]), nwords=2 * PAIR_MIN_WORDS)
    tables = []
    for name in ("base", "appended", "base", "inserted", "base"):
        c = chains[name]
        generation.fit(c, shape)
        parts = image.pair_parts(c)
        got = image.pair_table(parts, shape.nwords)
        assert got == reference.pair_table(reference.pair_parts(c), shape.nwords), name
        tables.append(got)
    assert tables[0] is tables[1] is tables[2] is tables[4]
    assert tables[3] != tables[0]
