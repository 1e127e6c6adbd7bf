"""The command server's memo of checked rules (server.ValidatedRules)
accepts and refuses exactly what validate.validate_table does, through
random runs of inserts, deletes and appends of rules (some refused in
some hooks: -m mac reached from OUTPUT; some jumping to user chains,
which changes which hooks reach a chain, or makes a loop), checking the
whole table each time. No kernel: the memo is pure bookkeeping."""
from __future__ import annotations

import random

from bpf_iptables.cmdline import parse as P
from bpf_iptables.commands import Outcome, execute
from bpf_iptables.datapath.server import ValidatedRules
from bpf_iptables.errors import TableOpError
from bpf_iptables.model import RuleSet
from bpf_iptables.validate import validate_table

POOL = [
    "-A INPUT -s 10.0.0.1 -j DROP",
    "-A INPUT -j X",
    "-A OUTPUT -j X",
    "-A OUTPUT -j Y",
    "-A X -m mac --mac-source 00:11:22:33:44:55 -j ACCEPT",
    "-A X -j Y",
    "-A Y -j X",
    "-A Y -p tcp --dport 22 -j ACCEPT",
    "-A Z -j X",
    "-A FORWARD -j Z",
]


def pool() -> tuple[object, list]:
    """A filter table with the user chains and, per POOL line, its rule object."""
    table = RuleSet().table("filter")
    for chain in ("X", "Y", "Z"):
        execute(P.CommandParser(["iptables", "-N", chain]).parse(), table, Outcome())
    rules = []
    for line in POOL:
        execute(P.CommandParser(["iptables", *line.split()]).parse(), table, Outcome())
        chain = line.split()[1]
        rules.append((chain, table.chains[chain].rules.pop()))
    return table, rules


def outcome(check, table) -> str:
    try:
        check(table)
        return "ok"
    except TableOpError as exc:
        return f"{exc.err}: {exc}"


def test_memo_agrees_with_validate_table() -> None:
    rng = random.Random(11)
    refused = 0
    for run in range(40):
        table, rules = pool()
        memo = ValidatedRules()
        for step in range(30):
            undo = {name: list(c.rules) for name, c in table.chains.items()}
            # one change, or several at once (a restore: a chain changed
            # and newly reached by another in the same commit)
            for _ in range(rng.choice((1, 1, 2, 3))):
                chain_name, rule = rng.choice(rules)
                chain = table.chains[chain_name]
                if chain.rules and rng.random() < 0.35:
                    del chain.rules[rng.randrange(len(chain.rules))]
                else:
                    chain.rules.insert(rng.randrange(len(chain.rules) + 1), rule)
            want = outcome(validate_table, table)
            assert outcome(memo, table) == want, (run, step)
            if want != "ok":   # the command fails: its change never stays
                refused += 1
                for name, was in undo.items():
                    table.chains[name].rules[:] = was
    assert refused > 20   # the runs did meet refusals (mac from OUTPUT, loops)


def test_added_removed_covers_every_new_rule() -> None:
    """server._added_removed on random edit runs (one to three changes,
    objects repeated): when it answers, every rule of the new list that
    its "added" leaves out is one of the old list (by identity, counted),
    and every old rule gone is in its "removed"; a single change or a
    removal followed by one change is always answered."""
    from collections import Counter

    from bpf_iptables.datapath.server import _added_removed

    rng = random.Random(5)
    objs = [object() for _ in range(6)]
    answered = 0
    for _ in range(4000):
        before = [rng.choice(objs) for _ in range(rng.randrange(7))]
        rules = list(before)
        removal_first = bool(rules) and rng.random() < 0.5
        if removal_first:
            del rules[rng.randrange(len(rules))]
        changes = rng.choice((1, 1, 2))
        for _ in range(changes):
            kind = rng.randrange(3)
            if kind == 0 or not rules:
                rules.insert(rng.randrange(len(rules) + 1), rng.choice(objs))
            elif kind == 1:
                del rules[rng.randrange(len(rules))]
            else:
                rules[rng.randrange(len(rules))] = rng.choice(objs)
        found = _added_removed(before, rules)
        if changes == 1:
            assert found is not None, (before, rules)
        if found is None:
            continue
        answered += 1
        new, gone = found
        now, was = Counter(map(id, rules)), Counter(map(id, before))
        assert not now - Counter(map(id, new)) - was
        assert not was - Counter(map(id, gone)) - now
    assert answered > 3000
