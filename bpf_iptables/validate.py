"""Checks the kernel makes when a table is committed (translate_table).

The kernel refuses a table with a jump loop (ELOOP) and any rule whose
match or target is not allowed where the rule is reachable from (EINVAL:
wrong protocol for tcp/udp/icmp, a match restricted to some hooks)."""
from __future__ import annotations

import errno
from typing import Protocol

from . import extensions as registry
from .errors import TableOpError
from .model import Rule, Table


def chain_hooks(table: Table) -> dict[str, frozenset[str]]:
    """Which built-in chains (hooks) reach each chain; raises ELOOP on a cycle."""
    hooks: dict[str, set[str]] = {name: set() for name in table.chains}

    def visit(name: str, hook: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise TableOpError(errno.ELOOP)
        if hook in hooks[name] and not path:
            return
        hooks[name].add(hook)
        for rule in table.chains[name].rules:
            t = rule.target
            if t.is_standard and t.name in table.chains and not table.chains[t.name].builtin:
                visit(t.name, hook, path + (name,))

    for chain in table.chains.values():
        if chain.builtin:
            visit(chain.name, chain.name, ())
    return {k: frozenset(v) for k, v in hooks.items()}


def validate_table(table: Table) -> None:
    hooks = chain_hooks(table)
    for chain in table.chains.values():
        for rule in chain.rules:
            validate_rule(rule, hooks[chain.name], table)


def validate_rule(rule: Rule, hooks: frozenset[str], chains: "ChainLookup") -> None:
    """The kernel's checks of one rule reachable from ``hooks``."""
    target = rule.target
    if target.is_standard and chains.is_builtin_chain(target.name):
        # the kernel refuses a jump or goto into a built-in chain
        raise TableOpError(errno.EINVAL)
    # by name, not through registry.matches(): that imports every
    # extension, which is most of the work of one -A
    exts = [(registry.match_named(m.name), m.data) for m in rule.matches]
    if not target.is_standard:
        exts.append((registry.target_named(target.name), target.data))
    for ext, data in exts:
        if ext.required_proto is not None and (
                rule.proto != ext.required_proto or rule.proto_inv):
            raise TableOpError(errno.EINVAL)
        if ext.allowed_hooks is not None and not hooks <= ext.allowed_hooks:
            raise TableOpError(errno.EINVAL)
        if not ext.kernel_check(data, rule, hooks):
            raise TableOpError(errno.EINVAL)


class ChainLookup(Protocol):
    def is_chain(self, name: str) -> bool: ...

    def is_builtin_chain(self, name: str) -> bool: ...
