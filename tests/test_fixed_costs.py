"""The served update's fixed costs made cheaper must give what the plain
code gives: find_rule's prefilter (tableops) finds the rule the full
comparison of every rule finds; the new generation's rule counters
derived from the laid values around an edit (live.kept_rule_counts) are
every rule's counters, also through the command server (no traffic: the
counters are the ones given with -c, as a model-only namespace has them)."""
from __future__ import annotations

import errno
import operator

import pytest
from hypothesis import given, settings, strategies as st

from bpf_iptables import tableops
from bpf_iptables.errors import Op, TableOpError
from bpf_iptables.model import Chain, Match, Rule, Table, Target
from bpf_iptables.netaddr import IPv4Net
from tests.support.netns import namespace
from tests.test_datapath_server import Attached, attached, own_lock  # noqa: F401

# few distinct values, so that rules often share addresses and differ
# elsewhere (the prefilter lets them through; same_rule decides)
_nets = st.sampled_from([IPv4Net(0, 0), IPv4Net(0x0A000000, 0xFF000000),
                         IPv4Net(0x0A000000, 0xFFFF0000), IPv4Net(0x0A000001, 0xFFFFFFFF)])
_rules = st.builds(
    Rule, src=_nets, dst=_nets, src_inv=st.booleans(), proto=st.sampled_from([0, 6, 17]),
    in_iface=st.sampled_from(["", "eth0"]),
    matches=st.sampled_from([(), (Match("comment", "x"),)]),
    target=st.sampled_from([Target("ACCEPT"), Target("DROP"), Target("")]))


def _first_equal(rules: list[Rule], rule: Rule) -> int | None:
    """find_rule as it was: the first rule whose spec() is rule's."""
    for i, existing in enumerate(rules):
        if existing.same_rule(rule):
            return i
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(_rules, max_size=12), _rules)
def test_find_rule_is_the_first_equal_rule(rules: list[Rule], probe: Rule) -> None:
    table = Table("filter", {"INPUT": Chain("INPUT", "ACCEPT", rules=rules)})
    for wanted in [probe, *rules]:
        want = _first_equal(rules, wanted.clone())
        if want is None:
            with pytest.raises(TableOpError) as exc:
                tableops.find_rule(table, "INPUT", wanted.clone(), Op.DELETE_ENTRY)
            assert exc.value.err == errno.ENOENT
        else:
            assert tableops.find_rule(table, "INPUT", wanted.clone(), Op.DELETE_ENTRY) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(_rules, max_size=10),
       st.lists(st.tuples(st.sampled_from(["append", "insert", "delete", "replace", "find",
                                           "-D"]),
                          st.floats(0, 1), _rules), max_size=12))
def test_find_rule_follows_edits_of_the_chain(rules: list[Rule], steps) -> None:
    """The keys kept for the last chain searched, patched after one rule
    inserted or deleted, made anew after anything else."""
    table = Table("filter", {"INPUT": Chain("INPUT", "ACCEPT", rules=rules)})
    for kind, where, new in steps:
        at = int(where * len(rules))
        if kind == "append":
            rules.append(new)
        elif kind == "insert":
            rules.insert(at, new)
        elif kind in ("delete", "replace") and at < len(rules):
            rules[at:at + 1] = [new] if kind == "replace" else []
        elif kind == "-D" and at < len(rules):   # by rule: the first equal one goes
            before, first = list(rules), _first_equal(rules, rules[at])
            assert first is not None
            tableops.delete(table, "INPUT", rules[at].clone())
            after = before[:first] + before[first + 1:]
            assert len(rules) == len(after) and all(map(operator.is_, rules, after))
        for probe in [new, *rules[:3], *rules[-2:]]:
            want = _first_equal(rules, probe)
            try:
                got = tableops.find_rule(table, "INPUT", probe.clone(), Op.DELETE_ENTRY)
            except TableOpError:
                got = None
            assert got == want


# -- live.kept_rule_counts: the new rules' counters from the laid sums ------------------

def _chain_edits():
    """Per chain: (kind, position fraction, new rules' counters)."""
    return st.tuples(st.sampled_from(["keep", "append", "insert", "delete", "replace"]),
                     st.floats(0, 1), st.lists(st.tuples(st.integers(0, 2**40),
                                                         st.integers(0, 2**50)),
                                               min_size=1, max_size=3))


def _rule(packets: int, nbytes: int) -> Rule:
    rule = Rule(proto=6)
    rule.counters.packets, rule.counters.bytes = packets, nbytes
    return rule


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**50)), max_size=8),
                min_size=3, max_size=5),
       st.lists(_chain_edits(), min_size=5, max_size=5))
def test_kept_rule_counts_equal_every_rules_counters(counts, edits) -> None:
    from bpf_iptables.datapath import live
    from bpf_iptables.datapath.compiler import FIRST_RULE_COUNTER

    names = ["INPUT", "FORWARD", "OUTPUT", "a_user", "b_user"][:len(counts)]
    table = Table("filter", {name: Chain(name, "ACCEPT" if name.isupper() else None,
                                         rules=[_rule(*c) for c in rule_counts])
                             for name, rule_counts in zip(names, counts)})
    layout = live.counter_layout(table)
    spans = [(list(table.chains[name].rules), first) for name, _, first in layout]
    sums = live.C.zeros(FIRST_RULE_COUNTER + sum(map(len, counts)))
    for rules, first in spans:   # what the data path laid on them
        for i, rule in enumerate(rules):
            sums[2 * (first + i)], sums[2 * (first + i) + 1] = rule.counters.packets, \
                rule.counters.bytes
    for chain, (kind, where, new) in zip(table.chains.values(), edits):   # one edit each
        rules, fresh = chain.rules, [_rule(*c) for c in new]
        at = int(where * len(rules))
        if kind == "append":
            rules.extend(fresh)
        elif kind == "insert":
            rules[at:at] = fresh
        elif kind in ("delete", "replace") and at < len(rules):
            rules[at:at + 1] = fresh[:1] if kind == "replace" else []
    want = []
    for chain in table.ordered_chains():
        for rule in chain.rules:
            want += [rule.counters.packets, rule.counters.bytes]
    got = live.kept_rule_counts(table, spans, [n for n, _, _ in layout], sums)
    assert got is not None and list(got) == want
    # other chains than the spans': not derived
    assert live.kept_rule_counts(table, spans, [n for n, _, _ in layout][::-1], sums) is None \
        or len(layout) == 1


RESTORE = "*filter\n:USER - [0:0]\n" + "".join(
    f"[{i + 1}:{100 * (i + 1)}] -A INPUT -s 10.0.0.{i} -j ACCEPT\n" for i in range(6)) + \
    "[3:30] -A INPUT -j USER\n[4:40] -A USER -s 10.2.0.1 -j RETURN\n" \
    "[5:50] -A USER -s 10.2.0.2 -j RETURN\nCOMMIT\n"
EDITS = ["-A INPUT -s 10.1.0.1 -c 7 700 -j DROP", "-I INPUT 1 -s 10.1.0.2 -c 8 800 -j DROP",
         "-I INPUT 4 -s 10.1.0.3 -c 9 900 -j DROP", "-D INPUT -s 10.0.0.2 -j ACCEPT",
         "-D INPUT 2", "-A USER -s 10.1.0.4 -c 5 500 -j RETURN", "-D USER 1",
         "-I OUTPUT 1 -d 10.1.0.5 -c 6 600 -j DROP", "-D INPUT 1"]


def test_served_edits_keep_every_rules_counters(attached: Attached) -> None:  # noqa: F811
    a = attached
    a.wait_server()
    with namespace("bpft-fix") as model_ns:
        model = Attached(model_ns)
        off = {"BPF_IPTABLES_DATAPATH": "off"}
        for ns, env in ((a, None), (model, off)):
            r = ns.cmd("-c", input=RESTORE, tool="iptables-restore", env=env)
            assert r.returncode == 0, r.stderr
        for edit in EDITS:
            r = a.served(*edit.split())
            assert r.returncode == 0, (edit, r.stderr)
            assert model.cmd(*edit.split(), env=off).returncode == 0
            want = model.cmd("-S", "-v", env=off).stdout
            # the server's listing shows its rule set's counters where the
            # data path's did not move since it laid them: a fresh process
            # reads every slot of the data path
            got = a.served("-S", "-v").stdout
            fresh = a.cmd("-S", "-v", env={"BPF_IPTABLES_SERVER": "off"}).stdout
            assert got == want and fresh == want, edit
        assert "-A INPUT -s 10.1.0.1/32 -c 7 700 -j DROP" in got


def test_write_atomic_replaces_whole_files(tmp_path) -> None:
    """attachment.write_atomic: the new content under the name, nothing
    left under the temporary one, also after a writer that died between
    its write and the swap (its temporary file is not taken for the
    record); the first write (nothing to swap with) renames."""
    from bpf_iptables.datapath.attachment import write_atomic

    path = tmp_path / "datapath.json"
    write_atomic(path, b"one")
    assert path.read_bytes() == b"one"
    was = path.stat().st_ino
    (tmp_path / "datapath.json.tmp").write_bytes(b"a dead writer's half")
    write_atomic(path, b"two" * 1000)
    assert path.read_bytes() == b"two" * 1000 and path.stat().st_ino != was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datapath.json"]
