"""The served update's fixed costs made cheaper must give what the plain
code gives: find_rule's prefilter (tableops) finds the rule the full
comparison of every rule finds."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings, strategies as st

from bpf_iptables import tableops
from bpf_iptables.errors import Op, TableOpError
from bpf_iptables.model import Chain, Match, Rule, Table, Target
from bpf_iptables.netaddr import IPv4Net

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
