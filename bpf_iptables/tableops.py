"""Table operations with libiptc's semantics and errno values.

Each function changes a ``Table`` in place or raises ``TableOpError`` with
the errno (and the libiptc call) that iptables would report."""
from __future__ import annotations

import errno
import operator
from dataclasses import replace as dc_replace
from dataclasses import dataclass
from itertools import islice

from .errors import Op, TableOpError
from .model import POLICY_VERDICTS, Chain, Counters, Rule, Table


def get_chain(table: Table, name: str, op: str = Op.OTHER) -> Chain:
    chain = table.chains.get(name)
    if chain is None:
        raise TableOpError(errno.ENOENT, op)
    return chain


def append(table: Table, chain: str, rule: Rule) -> None:
    get_chain(table, chain).rules.append(rule)


def insert(table: Table, chain: str, rule: Rule, index: int) -> None:
    c = get_chain(table, chain)
    if index > len(c.rules):
        raise TableOpError(errno.E2BIG, Op.INSERT_ENTRY)
    c.rules.insert(index, rule)


def replace(table: Table, chain: str, rule: Rule, index: int) -> None:
    c = get_chain(table, chain)
    if index >= len(c.rules):
        raise TableOpError(errno.E2BIG, Op.REPLACE_ENTRY)
    c.rules[index] = rule


def delete_num(table: Table, chain: str, index: int) -> None:
    c = get_chain(table, chain)
    if index >= len(c.rules):
        raise TableOpError(errno.E2BIG, Op.DELETE_NUM_ENTRY)
    del c.rules[index]


def find_rule(table: Table, chain: str, rule: Rule, op: str) -> int:
    c = get_chain(table, chain, op)
    if rule.target.name not in ("", "ACCEPT", "DROP", "QUEUE", "RETURN"):
        # libiptc maps any other target name through TC_BUILTIN, which
        # becomes the "last call": ENOENT then reads as the generic message
        op = Op.OTHER
    rules = c.rules
    # the first rule equal to ``rule`` (Rule.same_rule), found by a cheap
    # necessary condition evaluated in C first (list.index on the rules'
    # keys): comparing every rule's spec() cost ~3.5 ms at 10k rules
    # (ClassBench), this ~0.2 ms once the keys are there
    keys, key, at = _prefilter_keys(rules), _PREFILTER(rule), 0
    while True:
        try:
            at = keys.index(key, at)
        except ValueError:
            raise TableOpError(errno.ENOENT, op) from None
        if rules[at].same_rule(rule):
            return at
        at += 1


# fields of Rule.spec() (plain ints) that two equal rules share; two are
# selective enough (more cost more per rule than they save)
_PREFILTER = operator.attrgetter("src.addr", "dst.addr")


@dataclass
class _Keys:
    """_PREFILTER of each rule of one chain's rule list, as it was."""

    rules: list   # the chain's list object
    then: list    # its rules when ``keys`` was last made true (held: ids stay theirs)
    keys: list


_keys: _Keys | None = None   # the last chain searched (a process that stays: the server)


def _prefilter_keys(rules: list) -> list:
    """The keys of ``rules``, patched when the list is the one searched
    last with one rule inserted or deleted since (by identity: a rule is
    never changed in place, commands replace rule objects), else made
    anew (~0.5 ms at 10k rules; a patch ~0.1 ms)."""
    global _keys
    memo = _keys
    if memo is not None and memo.rules is rules:
        then, n, m = memo.then, len(memo.then), len(rules)
        try:   # where they first differ, by one lazy pass in C
            head = operator.indexOf(map(operator.is_not, rules, then), True)
        except ValueError:
            head = min(n, m)
        if n == m and head == n:
            return memo.keys
        if m == n + 1 and all(map(operator.is_, islice(rules, head + 1, None),
                                  islice(then, head, None))):
            then.insert(head, rules[head])
            memo.keys.insert(head, _PREFILTER(rules[head]))
            return memo.keys
        if m == n - 1 and all(map(operator.is_, islice(rules, head, None),
                                  islice(then, head + 1, None))):
            del then[head], memo.keys[head]
            return memo.keys
    _keys = _Keys(rules, list(rules), list(map(_PREFILTER, rules)))
    return _keys.keys


def delete(table: Table, chain: str, rule: Rule) -> None:
    index = find_rule(table, chain, rule, Op.DELETE_ENTRY)
    rules = table.chains[chain].rules
    del rules[index]
    memo = _keys   # (find_rule made it this list's: the next -D finds it so)
    if memo is not None and memo.rules is rules and len(memo.then) == len(rules) + 1:
        del memo.then[index], memo.keys[index]


def check(table: Table, chain: str, rule: Rule) -> None:
    find_rule(table, chain, rule, Op.DELETE_ENTRY)


def flush(table: Table, chain: str) -> None:
    get_chain(table, chain).rules.clear()


def zero(table: Table, chain: str) -> None:
    c = get_chain(table, chain)
    c.counters = Counters()
    for rule in c.rules:
        rule.counters = Counters()


def zero_counter(table: Table, chain: str, rulenum: int) -> None:
    c = get_chain(table, chain)
    if rulenum < 1 or rulenum > len(c.rules):
        raise TableOpError(errno.E2BIG, Op.ZERO_COUNTER)
    c.rules[rulenum - 1].counters = Counters()


def create_chain(table: Table, name: str) -> None:
    if name in table.chains:
        raise TableOpError(errno.EEXIST, Op.CREATE_CHAIN)
    table.chains[name] = Chain(name)


def delete_chain(table: Table, name: str) -> None:
    c = get_chain(table, name)
    if c.builtin:
        raise TableOpError(errno.EINVAL, Op.OTHER)
    if table.references(name):
        raise TableOpError(errno.EMLINK, Op.OTHER)
    if c.rules:
        raise TableOpError(errno.ENOTEMPTY, Op.OTHER)
    del table.chains[name]


# libiptc's chain label buffer (IPT_CHAINLABEL) and the kernel's error
# target name (XT_FUNCTION_MAXNAMELEN - 1 characters survive a commit).
CHAINLABEL_MAX = 31
STORED_CHAIN_NAME_MAX = 29


def rename_chain(table: Table, old: str, new: str) -> None:
    """TC_RENAME_CHAIN: the new name is checked first (also against the
    standard verdicts), then the old one; a built-in chain is "not found"."""
    if new in table.chains or new in ("DROP", "ACCEPT", "QUEUE", "RETURN"):
        raise TableOpError(errno.EEXIST, Op.OTHER)
    c = table.chains.get(old)
    if c is None or c.builtin:
        raise TableOpError(errno.ENOENT, Op.OTHER)
    if len(new.encode()) > CHAINLABEL_MAX:
        raise TableOpError(errno.EINVAL, Op.OTHER)
    # -N refuses names this long, but -E does not: the kernel keeps only
    # the first 29 bytes of the name.
    new = new.encode()[:STORED_CHAIN_NAME_MAX].decode(errors="ignore")
    if new in table.chains and new != old:
        # iptables would end up with two chains of one name, which no
        # command can then address; refuse rather than lose a chain
        raise TableOpError(errno.EEXIST, Op.OTHER)
    chains = {}
    for name, chain in table.chains.items():
        if name == old:
            chain.name = new
            chains[new] = chain
        else:
            chains[name] = chain
    table.chains = chains
    for chain in table.chains.values():
        for i, rule in enumerate(chain.rules):
            if rule.target.is_standard and rule.target.name == old:
                chain.rules[i] = dc_replace(rule, target=dc_replace(rule.target, name=new))


def reset_policy_counters(table: Table, keep: str | None = None) -> None:
    """What a libiptc commit does to built-in chains' policy counters.

    libiptc reads policy counters as COUNTER_MAP_ZEROED, so every commit
    puts back only the packets counted since its own read: the policy
    counters restart from zero, unless this very command set them
    (``-P CHAIN POLICY -c P B`` keeps ``keep``'s counters)."""
    for chain in table.chains.values():
        if chain.builtin and chain.name != keep:
            chain.counters = Counters()


def set_policy(table: Table, chain: str, policy: str, counters: Counters | None) -> None:
    c = table.chains.get(chain)
    if c is None or not c.builtin:
        raise TableOpError(errno.ENOENT, Op.SET_POLICY)
    if policy not in POLICY_VERDICTS:
        raise TableOpError(errno.EINVAL, Op.SET_POLICY)
    c.policy = policy
    if counters is not None:
        c.counters = Counters(counters.packets, counters.bytes)
