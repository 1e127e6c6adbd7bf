"""The map images an update writes are the golden ones, and the looped
copies' program is given INPUT's image whenever the image would be the same.

No timing here (speed: /work/prof/upd.sh and bench): equivalence only.
The image code was rewritten for speed (numpy rows, kept pair tables) and
checked then byte for byte against the implementation it replaced; the
golden digests (tests/support/compile_golden.py) keep that: the chains' own
shapes in test_datapath_compile_speed, the shapes programs are loaded with
(``generation.roomy``, and one with the pair summary) here."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bpf_iptables.datapath import generation, image
from bpf_iptables.datapath.compiler import PAIR_MIN_WORDS, compile_chain
from bpf_iptables.datapath.harness import table_from_save
from tests.support import compile_golden as G
from tests.support.shared import ruleset

GOLDEN = json.loads(G.GOLDEN.read_text())


def flat(images) -> list[tuple[str, bool, bytes, bytes]]:
    return [(m.name, m.clear, *map(bytes, image.joined(m.items))) for m in images]


@pytest.mark.parametrize("name", G.SHAPED)
def test_images_in_program_shapes_are_the_golden_ones(name):
    c = compile_chain(table_from_save(ruleset(name).read_text()), "INPUT", G.INTERFACES)
    shapes = G.program_shapes(c)
    assert image.pair_summary(shapes["pair"])
    assert image.pair_summary(shapes["roomy"]) or shapes["roomy"].nwords < PAIR_MIN_WORDS
    want = GOLDEN["shaped"][name]
    # twice: whatever the image code keeps between calls must not change a byte
    for _ in range(2):
        got = G.shaped_digests(c)
        assert {k: {m: v for m, v in d.items() if v != want[k][m]} for k, d in got.items()} \
            == {k: {} for k in want}


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
    Each pair table is the one built from scratch; the base's is built
    once and given again after the append and after the insert (two are
    kept)."""
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
        assert got == image.build_pair_table(parts, shape.nwords), name
        tables.append(got)
    assert tables[0] is tables[1] is tables[2] is tables[4]
    assert tables[3] != tables[0]
