"""A single-rule edit of a flat hook chain patches the previous compile
(compiler._Flat, compile_chain's ``trust_identity``) instead of walking
every rule: every patched compile equals, field by field, a compile from
cold caches without it (whose bytes the golden digests tie to the
compiler's), on random rule sets with user chains, -g and RETURN and
random edits of any chain (flat rules and rules that need the walk)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath import compiler
from bpf_iptables.datapath.compiler import compile_chain, single_edit
from bpf_iptables.datapath.harness import table_from_lines, table_from_save
from bpf_iptables.errors import NotSupported
from bpf_iptables.model import Rule, Table
from tests.support import compile_golden as G
from tests.support.shared import ruleset
from tests.test_datapath_compile_edits import cold_snapshot as cold, drawn_table, snapshot
from tests.test_datapath_property import rule_sets

# flat rules first; then rules a flat chain cannot take (they need the walk)
POOL = ["-s 10.255.1.1 -p tcp --dport 8080 -j ACCEPT", "-d 192.0.2.0/24 -j DROP",
        "-p udp --sport 53", "-s 10.0.0.0/8 ! -d 10.1.0.0/16 -j DROP", "-f -j DROP",
        "-m iprange --src-range 10.1.3.249-10.1.3.86 -j ACCEPT",   # reversed: never (not live)
        "-p tcp --tcp-flags SYN,ACK SYN -m length --length 40:60 -j DROP",  # hot-drop guard
        "-j U0", "-g U1", "-j RETURN", "-p tcp -j REJECT --reject-with tcp-reset",
        "-j LOG", "-m limit --limit 5/s -j ACCEPT",
        "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]


def pool_rule(k: int, chain: str) -> Rule:
    lines = ["-N U0", "-N U1", f"-A {chain if chain in ('INPUT', 'OUTPUT') else 'U0'} {POOL[k]}"]
    t = table_from_lines(lines)
    return next(r for c in t.chains.values() for r in c.rules)


def warm(table: Table, hook: str) -> dict | str:
    try:
        return snapshot(compile_chain(table, hook, G.INTERFACES, trust_identity=True))
    except NotSupported as exc:
        return f"NotSupported: {exc}"


def apply(table: Table, chain: str, kind: str, at: int, rule: Rule) -> None:
    """One single-rule change as the front end makes it (new Rule objects)."""
    if chain not in table.chains:
        return
    rules = table.chains[chain].rules
    if kind == "append":
        rules.append(rule)
    elif kind == "insert":
        rules.insert(at % (len(rules) + 1), rule)
    elif kind == "insert1":
        rules.insert(0, rule)
    elif kind == "delete" and rules:
        del rules[at % len(rules)]
    elif kind == "replace" and rules:
        rules[at % len(rules)] = rule
    elif kind == "two" and rules:   # two rules at once: not a single edit
        rules.insert(0, rule)
        del rules[-1]


edits = st.lists(st.tuples(st.sampled_from(["INPUT"] * 4 + ["OUTPUT", "U0"]),
                           st.sampled_from(["append", "insert", "insert1", "delete", "delete",
                                            "replace", "none", "two"]),
                           st.integers(0, 10_000),
                           st.one_of(st.integers(0, 5), st.integers(0, len(POOL) - 1))),
                 min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(rule_sets(sorted(G.INTERFACES), "INPUT"), edits, st.booleans())
def test_patched_compiles_equal_cold_walks(drawn, steps, fresh):
    table = drawn_table(drawn, fresh)
    if table is None:
        return
    for hook in ("INPUT", "OUTPUT"):
        assert warm(table, hook) == cold(table, hook)
    for chain, kind, at, k in steps:
        apply(table, chain, kind, at, pool_rule(k, chain))
        for hook in ("INPUT", "OUTPUT"):
            assert warm(table, hook) == cold(table, hook), (chain, kind, at, k, hook)
        assert compiler.counter_slots(table) == fresh_slots(table)


def fresh_slots(table: Table) -> dict[tuple[str, int], int]:
    """counter_slots without its kept dict: the rules in ordered_chains() order."""
    keys = [(c.name, i) for c in table.ordered_chains() for i in range(len(c.rules))]
    return {key: compiler.FIRST_RULE_COUNTER + n for n, key in enumerate(keys)}


def test_single_edit_by_identity():
    a, b, c, x = (Rule() for _ in range(4))
    assert single_edit([a, b, c], [a, b, c]) == ("same", 0)
    assert single_edit([a, b, c], [a, b, c, x]) == ("insert", 3)
    assert single_edit([a, b, c], [x, a, b, c]) == ("insert", 0)
    assert single_edit([a, b, c], [a, x, b, c]) == ("insert", 1)
    assert single_edit([a, b, c], [a, c]) == ("delete", 1)
    assert single_edit([a, b, c], [b, c]) == ("delete", 0)
    assert single_edit([a, b, c], [a, x, c]) == ("replace", 1)
    assert single_edit([a, b, c], [x, b, x]) is None
    assert single_edit([a, b, c], [b, a, c]) is None
    assert single_edit([a, b, c], [a, x, x, b, c]) is None
    assert single_edit([a, b, c], [a, b, Rule()]) == ("replace", 2)   # equal content, other object


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules"])
def test_the_bench_edits_patch_the_previous_compile(name):
    """-A, -D, -I 1, -D 1 at fw1-1k: each compile reuses the entries of the
    one before (the patch ran, no walk) and equals a cold one."""
    compiler.clear_caches()
    table = table_from_save(ruleset(name).read_text())
    rules = table.chains["INPUT"].rules
    assert warm(table, "INPUT") == cold(table, "INPUT")
    for step in range(4):
        before = compiler._flat["INPUT"].entries[500]
        rule = pool_rule(step, "INPUT")
        for change in (lambda: rules.append(rule), lambda: rules.pop(),
                       lambda: rules.insert(0, rule), lambda: rules.pop(0)):
            change()
            c = compile_chain(table, "INPUT", G.INTERFACES, trust_identity=True)
            assert any(e is before for e in c.entries)
            assert snapshot(c) == cold(table, "INPUT")


@pytest.mark.parametrize("lines, tracks", [
    (["-N X", "-A X -m conntrack --ctstate NEW -j DROP", "-A INPUT -s 10.0.0.1 -j DROP"], True),
    (["-A INPUT -m conntrack --ctstate NEW -j DROP", "-A INPUT -s 10.0.0.1 -j DROP"], True),
    (["-N X", "-A X -j DROP", "-A INPUT -s 10.0.0.1 -j DROP"], False),
])
def test_compile_all_finds_conntrack_beside_a_flat_input(lines, tracks):
    """live.compile_all leaves a flat INPUT out of its scan for conntrack
    matches (an empty OUTPUT needs a program when the namespace tracks):
    a match in another chain is still found, one in a non-flat INPUT too."""
    from bpf_iptables.datapath.live import compile_all

    compiler.clear_caches()
    table = table_from_lines(lines)
    for _ in range(2):   # cold, then from the caches (INPUT patched: no change)
        compiled = compile_all(table, G.INTERFACES)
        assert compiled["INPUT"].flat == (not any("-A INPUT -m" in line for line in lines))
        assert ("OUTPUT" in compiled) == tracks
        assert ("ctstate" in compiled["INPUT"].shape.fields) == tracks
