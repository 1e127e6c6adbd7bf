"""The field tables of a patched single edit derived from the previous
compile's (compiler.Derived: proto, sport, dport, length, ttl) equal a
full build: random flat chains of port, protocol, length and TTL rules
(negations, overlapping and shared boundaries, rules that never match),
random single edits, each compile compared with one from cold caches."""
from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath import compiler, image
from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import table_from_lines
from bpf_iptables.errors import TableOpError, XtablesError
from bpf_iptables.model import Rule
from tests.support import compile_golden as G
from tests.test_datapath_compile_edits import snapshot
from tests.test_datapath_compile_patch import cold, warm

# few values: edits often add or remove the last use of a boundary
PORTS = [0, 1, 22, 53, 80, 1024, 65535]
PREFIXES = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "10.1.2.4/31", "10.2.0.0/16",
            "192.0.2.1", "192.0.2.0/24", "128.0.0.0/1"]


@st.composite
def port_range(draw) -> str:
    a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    return str(a) if a == b or draw(st.booleans()) else f"{a}:{b}"


@st.composite
def flat_rule(draw) -> str:
    parts = []
    proto = draw(st.sampled_from(["", "-p tcp", "-p udp", "! -p tcp", "-p icmp", "! -p 47"]))
    parts.append(proto)
    if proto in ("-p tcp", "-p udp"):
        for opt in ("--sport", "--dport"):
            if draw(st.booleans()):
                parts.append(("! " if draw(st.booleans()) else "") + f"{opt} {draw(port_range())}")
    if draw(st.integers(0, 3)) == 0:
        lo, hi = sorted(draw(st.sampled_from([0, 40, 60, 1500, 65535])) for _ in range(2))
        neg = "! " if draw(st.booleans()) else ""
        parts.append(f"-m length {neg}--length {lo}:{hi}")
    if draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["--ttl-eq", "--ttl-lt", "--ttl-gt"]))
        parts.append(f"-m ttl {op} {draw(st.sampled_from([0, 1, 64, 128, 255]))}")
    # nested and disjoint prefixes, now and then a negated one (no derived
    # address table while one is in the chain: the full build)
    for opt in ("-s", "-d"):
        if draw(st.booleans()):
            neg = "! " if draw(st.integers(0, 9)) == 0 else ""
            parts.append(f"{neg}{opt} {draw(st.sampled_from(PREFIXES))}")
    parts.append(draw(st.sampled_from(["-j ACCEPT", "-j DROP", ""])))
    return " ".join(p for p in parts if p)


def parsed(chain: str, text: str) -> Rule | None:
    try:
        t = table_from_lines([f"-A {chain} {text}"])
    except (XtablesError, TableOpError):
        return None
    return t.chains[chain].rules[0]


def contents(images: list) -> list:
    return [(m.name, image.joined(m.items), m.clear) for m in images]


def assert_image_as_built(c, wider: bool = False) -> None:
    """map_image of ``c`` (entry and address rows patched from the last
    image of its hook where they can be) == the image built in full (the
    same compile, without the serial that ties it to the last one);
    ``wider``: in a program with twice the words too (after which the
    next edit's image is built in full: the kept rows have another width)."""
    shapes = [c.shape] + ([replace(c.shape, nwords=c.shape.nwords * 2)] if wider else [])
    for shape in shapes:
        patched = contents(image.map_image(c, shape))
        assert patched == contents(image.map_image(replace(c, serial=0, edit=None), shape))


edits = st.lists(st.tuples(st.sampled_from(["append", "insert", "delete", "replace"]),
                           st.integers(0, 1000), flat_rule()), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["INPUT", "FORWARD"]), st.lists(flat_rule(), max_size=12), edits)
def test_derived_tables_equal_full_build(hook, lines, steps):
    compiler.clear_caches()
    try:
        table = table_from_lines([f"-A {hook} {line}" for line in lines])
    except (XtablesError, TableOpError):
        return
    first = compile_chain(table, hook, G.INTERFACES, trust_identity=True)
    assert snapshot(first) == cold(table, hook)
    assert image.entry_rows(first) == image.entry_blob(first.entries)
    assert_image_as_built(first)
    for kind, at, text in steps:
        rules = table.chains[hook].rules
        rule = parsed(hook, text)
        if rule is None or (kind in ("delete", "replace") and not rules):
            continue
        if kind == "append":
            rules.append(rule)
        elif kind == "insert":
            rules.insert(at % (len(rules) + 1), rule)
        elif kind == "delete":
            del rules[at % len(rules)]
        else:
            rules[at % len(rules)] = rule
        rec = compiler._flat.get(hook)
        derivable = rec is not None and rec.tables is not None
        c = compile_chain(table, hook, G.INTERFACES, trust_identity=True)
        assert snapshot(c) == cold(table, hook), (kind, at, text)
        # the image patched from the last one's equals a full build
        assert image.entry_rows(c) == image.entry_blob(c.entries)
        assert_image_as_built(c)
        if derivable and hook in compiler._flat:
            # the tables were derived (a flat chain stays flat)
            assert compiler._flat[hook].edit.tables is not None


def test_an_edit_derives_and_splits_and_merges():
    """A new boundary splits an interval, the removal of its only user
    merges it again: the bounds follow, the tables equal a full build."""
    compiler.clear_caches()
    table = table_from_lines(["-A INPUT -p tcp --dport 80 -j ACCEPT",
                              "-A INPUT -p udp ! --sport 53 -j DROP"])
    c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
    assert c.dport_bounds == [0, 80, 81]
    rules = table.chains["INPUT"].rules
    rules.insert(1, parsed("INPUT", "-p tcp --dport 1000:2000 -j DROP"))
    c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
    assert compiler._flat["INPUT"].edit.tables is not None
    assert c.dport_bounds == [0, 80, 81, 1000, 2001]
    assert warm(table, "INPUT") == cold(table, "INPUT")
    del rules[1]
    c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
    assert compiler._flat["INPUT"].edit.tables is not None
    assert c.dport_bounds == [0, 80, 81]
    assert warm(table, "INPUT") == cold(table, "INPUT")


def test_a_wider_bitvector_is_built_again():
    """An edit that changes the bitvectors' width (64 -> 65 entries and
    back) builds the address tables in full; the ones after derive again."""
    compiler.clear_caches()
    table = table_from_lines([f"-A INPUT -s 10.0.{i}.0/24 -p tcp --dport {i} -j DROP"
                              for i in range(63)])
    rules = table.chains["INPUT"].rules
    first = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
    for change in (lambda: rules.append(parsed("INPUT", "-d 10.9.9.9 -j ACCEPT")),
                   lambda: rules.pop(0), lambda: rules.insert(5, parsed("INPUT", "-s 10.0.1.1"))):
        change()
        c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
        assert snapshot(c) == cold(table, "INPUT")
        assert image.entry_rows(c) == image.entry_blob(c.entries)
        assert_image_as_built(c)
    assert_image_as_built(c, wider=True)
    assert first.shape.nwords == 1 and c.shape.nwords == 2
    assert set(compiler._flat["INPUT"].tables.addresses) == {"src", "dst"}


def test_classbench_edits_derive_tables_and_image():
    """fw1-1k (ports, protocols, nested prefixes): -A, -D, -I 1, -D 1 and an
    insert in the middle, of a rule with a new address and of one without: the
    derived tables equal a cold compile, the patched image the full one."""
    from tests.support.shared import ruleset
    from bpf_iptables.datapath.harness import table_from_save

    compiler.clear_caches()
    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    rules = table.chains["INPUT"].rules
    c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
    assert_image_as_built(c)
    texts = ["-s 10.255.1.1 -p tcp --dport 8080 -j ACCEPT", "-p udp --sport 53 -j DROP"]
    for text in texts:
        rule = parsed("INPUT", text)
        for change in (lambda: rules.append(rule), lambda: rules.pop(),
                       lambda: rules.insert(0, rule), lambda: rules.pop(0),
                       lambda: rules.insert(len(rules) // 2, rule),
                       lambda: rules.pop(len(rules) // 2)):
            change()
            c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
            assert compiler._flat["INPUT"].edit.tables is not None
            assert snapshot(c) == cold(table, "INPUT")
            assert_image_as_built(c)
