"""Digests of map images, to check that a faster compiler writes the same bytes.

``tests/data/compile_golden.json`` holds random rule sets (drawn once from
the property test's generators) and the digests of every map image the
compiler and ``image.map_image`` produced for them at commit 831eb0e
(before the compile-speed work), without and with the property test's
``min_shape`` (fields the rule set does not use filled in). Regenerate
only with a known-good compiler: ``python -m tests.support.compile_golden``."""
from __future__ import annotations

import hashlib
import json
from array import array
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from bpf_iptables.datapath.compiler import Compiled, Shape, compile_chain
from bpf_iptables.datapath.image import (DENSE_WORDS, TOP_DENSE, TOP_DEPTH_SHIFT, joined,
                                         map_image)
from bpf_iptables.errors import NotSupported, TableOpError, XtablesError
from bpf_iptables.model import Table

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "compile_golden.json"
INTERFACES = {"lo": 1, "dp0": 2, "dp1": 3}


CLASSBENCH = ("classbench-fw1-1k.rules", "classbench-acl1-1k.rules",
              "classbench-fw1-10k.rules", "classbench-acl1-10k.rules")


def squeeze(lines: list[str]) -> list[list]:
    """Runs of equal lines as [count, line] (the filler blocks)."""
    out: list[list] = []
    for line in lines:
        if out and out[-1][1] == line:
            out[-1][0] += 1
        else:
            out.append([1, line])
    return out


def unsqueeze(runs: list[list]) -> list[str]:
    return [line for count, line in runs for _ in range(count)]


def without_depth(values: bytes, dense: bytes = b"") -> bytes:
    """A /16 table's values without the depth bits that image.py added after
    the golden digests were taken (image.top_with_depth; checked apart in
    tests/test_datapath_address_depth.py): the interval indexes alone. A
    /16 with a dense block (depth TOP_DENSE) names its slot instead: its
    interval is the block's first word's (image.dense_blocks)."""
    mask = (1 << TOP_DEPTH_SHIFT) - 1
    table = array("I", values)
    blocks = array("I", dense[:len(dense) // 3])    # the bases: a third of the blob
    return array("I", (blocks[(v & mask) * DENSE_WORDS] if v >> TOP_DEPTH_SHIFT == TOP_DENSE
                       else v & mask for v in table)).tobytes()


def digest(c: Compiled, shape: Shape | None = None) -> dict:
    """Every map's name, clear flag, keys and values (as one hash each), and
    the shape (``c``'s own unless a program's ``shape`` is given)."""
    out = {}
    images = map_image(c, shape or c.shape)
    # the dense blocks came after the digests: resolved into the /16
    # tables, checked apart (tests/test_datapath_address_depth.py)
    dense = {m.name[:-len("_dense_map")]: joined(m.items)[1] for m in images
             if m.name.endswith("_dense_map")}
    for image in images:
        if image.name.endswith("_dense_map"):
            continue
        keys, values = joined(image.items)
        if image.name.endswith("_top_map"):
            values = without_depth(values, dense.get(image.name[:-len("_top_map")], b""))
        h = hashlib.sha256(keys)
        h.update(b"|")
        h.update(values)
        out[image.name] = f"{int(image.clear)}:{len(image.items)}:{h.hexdigest()[:24]}"
    shape = asdict(shape or c.shape)
    shape["fields"] = sorted(shape["fields"])   # a frozenset's order varies by process
    # added with limit, LOG and conntrack's checks: at their defaults they are
    # left out, which keeps the older digests
    for k, default in (("nlimits", 0), ("nlogs", 0), ("ctextra_max", 1), ("nhashlimits", 0),
                       ("nrecent", 0), ("memo", 0), ("stateful", 0), ("nsets", 0)):
        if shape.get(k) == default:
            del shape[k]
    # the dense blocks' slots came later still: left out whatever they are
    # (their images are resolved above; the slots are checked apart)
    for k in ("src_dense", "dst_dense"):
        del shape[k]
    out["shape"] = repr(sorted(shape.items()))
    out["counter_of"] = hashlib.sha256(repr(sorted(c.counter_of.items())).encode()).hexdigest()[:24]
    return out


def compile_digest(table: Table, hook: str, min_shape: Shape | None) -> str:
    """One hash of ``digest()`` (its parts are kept for the ClassBench sets only)."""
    try:
        d = digest(compile_chain(table, hook, INTERFACES, min_shape))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:20]
    except NotSupported as exc:
        return f"NotSupported: {exc}"


# the ClassBench 1k sets' images in the shapes a program is loaded with
# (generation.roomy) and in one with the pair summary: an update writes
# these, not the chain's own shape's
SHAPED = ("classbench-fw1-1k.rules", "classbench-acl1-1k.rules")


def program_shapes(c: Compiled) -> dict[str, Shape]:
    from dataclasses import replace

    from bpf_iptables.datapath.compiler import PAIR_MIN_WORDS
    from bpf_iptables.datapath.generation import roomy

    loaded = roomy(c)
    return {"roomy": loaded,
            "pair": replace(loaded, nwords=max(loaded.nwords, 2 * PAIR_MIN_WORDS))}


def shaped_digests(c: Compiled) -> dict[str, dict]:
    import copy

    from bpf_iptables.datapath.generation import fit

    out = {}
    for name, shape in program_shapes(c).items():
        shape = shape.union(c.shape)   # a program's shape covers the chain's
        fitted = copy.copy(c)          # fit() sets the chain's shape: c's stays
        fit(fitted, shape)
        out[name] = digest(fitted, shape)
    return out


def main() -> None:
    from bpf_iptables.datapath.harness import table_from_lines, table_from_save
    from tests.support.shared import ruleset
    from tests.test_datapath_property import SHAPE, rule_sets

    warnings.simplefilter("ignore")
    ifnames = sorted(INTERFACES)
    cases = []
    if "--keep-cases" in sys.argv:   # new digests of the same rule sets
        for case in json.loads(GOLDEN.read_text())["cases"]:
            table = table_from_lines(unsqueeze(case["lines"]))
            cases.append({**case, "plain": compile_digest(table, case["hook"], None),
                          "min_shape": compile_digest(table, case["hook"], SHAPE)})
    for base, count in (("INPUT", 160), ("FORWARD", 80), ("OUTPUT", 40)):
        while sum(c["hook"] == base for c in cases) < count:
            lines, _ = rule_sets(ifnames, base).example()
            if base == "OUTPUT":   # the generator's -i: -o at OUTPUT
                lines = [line.replace("-i ", "-o ") for line in lines]
            try:
                table = table_from_lines(lines)
            except (XtablesError, TableOpError):
                continue
            cases.append({"lines": squeeze(lines), "hook": base,
                          "plain": compile_digest(table, base, None),
                          "min_shape": compile_digest(table, base, SHAPE)})
    sets = {}
    for name in CLASSBENCH:
        table = table_from_save(ruleset(name).read_text())
        sets[name] = digest(compile_chain(table, "INPUT", INTERFACES))
    shaped = {}
    for name in SHAPED:
        table = table_from_save(ruleset(name).read_text())
        shaped[name] = shaped_digests(compile_chain(table, "INPUT", INTERFACES))
    GOLDEN.write_text(json.dumps({"classbench": sets, "cases": cases, "shaped": shaped},
                                 indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
