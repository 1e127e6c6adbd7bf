"""Carry out one parsed iptables command on a table (do_command4's switch)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from . import extensions as registry
from . import tableops
from .cmdline import parse as P
from .errors import XtablesError
from .model import Counters, Target, Table


@dataclass
class Outcome:
    ok: bool = True
    changed: bool = False
    stdout: list[str] = field(default_factory=list)
    rules: list = field(default_factory=list)   # the command's rules (-A -D -C -I -R)


# Targets are immutable: the rules of a table share one per verdict or
# chain name, which keeps a stored 10k-rule set smaller and quicker to load.
_STANDARD_TARGETS: dict[tuple[str, bool], Target] = {}


def standard_target(name: str, goto: bool) -> Target:
    target = _STANDARD_TARGETS.get((name, goto))
    if target is None:
        if len(_STANDARD_TARGETS) > 4096:
            _STANDARD_TARGETS.clear()
        target = _STANDARD_TARGETS[(name, goto)] = Target(name=name, goto=goto)
    return target


def resolve_target(p: P.ParsedCommand, table: Table) -> Target:
    """Turn -j/-g NAME into a model target, as do_command4 does."""
    name = p.jumpto
    ext = p.target.ext if p.target is not None else None
    if ext is not None and ext.name != "standard" and table.is_chain(name):
        sys.stderr.write(f"Warning: using chain {name}, not extension\n")
        ext = None
    if ext is None or ext.name == "standard":
        if name == "" or table.is_chain(name) or ext is not None:
            return standard_target(name, p.goto)
        if p.goto:
            raise XtablesError(f"goto '{name}' is not a chain")
        registry.require_target(name)  # raises "Couldn't load target" / not supported
        raise AssertionError("unreachable")
    return Target(name=name, data=p.target_data, goto=p.goto)


def append_with_index(p: P.ParsedCommand, index, out: Outcome) -> list | None:
    """``-A`` checked against a chain index instead of the loaded table.

    Returns the rules to journal, or None when the full path must run: the
    chain is unknown (the full path reports it) or the rule jumps to a
    user chain (which can change the hooks, and so the checks, of other
    chains). Prints and fails exactly as ``execute`` + ``validate_table``."""
    from .validate import validate_rule

    if p.command != P.CMD_APPEND or not index.is_chain(p.chain):
        return None
    target = resolve_target(p, index)
    if target.is_standard and index.is_chain(target.name) and not index.is_builtin_chain(target.name):
        return None
    rules = p.rules(target)
    if p.options & P.OPT_VERBOSE:
        from .render import listing

        out.stdout.extend(listing.print_firewall(r, 0, listing.FMT_PRINT_RULE) for r in rules)
    for rule in rules:
        validate_rule(rule, index.hooks[p.chain], index)
    return rules


def execute(p: P.ParsedCommand, table: Table, out: Outcome | None = None,
            commit: bool = True) -> Outcome:
    """Apply ``p`` to ``table``. TableOpError propagates to the caller;
    what was printed before the failure is in ``out`` (pass one in).

    ``commit``: the change is committed on its own, so the policy counters
    restart as libiptc's commit makes them (a restore commits at COMMIT)."""
    out = out if out is not None else Outcome()
    cmd = p.command
    verbose = bool(p.options & P.OPT_VERBOSE)
    rules = []
    if cmd in (P.CMD_APPEND, P.CMD_DELETE, P.CMD_CHECK, P.CMD_INSERT, P.CMD_REPLACE):
        rules = out.rules = p.rules(resolve_target(p, table))

    def show(rule) -> None:
        if verbose:
            from .render import listing  # only -v needs the renderer
            out.stdout.append(listing.print_firewall(rule, 0, listing.FMT_PRINT_RULE))

    def each_rule(op) -> None:
        """iptables' append/insert/delete/check_entry(): one libiptc call per
        address pair, carrying on after a failure (each rule is still printed
        with -v) and reporting the last error."""
        error = None
        for rule in rules:
            show(rule)
            try:
                op(rule)
            except tableops.TableOpError as exc:
                error = exc
        if error is not None:
            raise error

    if cmd == P.CMD_APPEND:
        each_rule(lambda rule: tableops.append(table, p.chain, rule))
        out.changed = True
    elif cmd == P.CMD_DELETE:
        each_rule(lambda rule: tableops.delete(table, p.chain, rule))
        out.changed = True
    elif cmd == P.CMD_DELETE_NUM:
        tableops.delete_num(table, p.chain, p.rulenum - 1)
        out.changed = True
    elif cmd == P.CMD_CHECK:
        each_rule(lambda rule: tableops.check(table, p.chain, rule))
    elif cmd == P.CMD_REPLACE:
        show(rules[0])
        tableops.replace(table, p.chain, rules[0], p.rulenum - 1)
        out.changed = True
    elif cmd == P.CMD_INSERT:
        # each address pair is inserted at the same index, so the last
        # combination ends up first, as in iptables
        each_rule(lambda rule: tableops.insert(table, p.chain, rule, p.rulenum - 1))
        out.changed = True
    elif cmd == P.CMD_FLUSH:
        for_each_chain(table, p.chain, verbose, "Flushing", tableops.flush, out, builtins=True)
        out.changed = True
    elif cmd == P.CMD_ZERO:
        for_each_chain(table, p.chain, verbose, "Zeroing", tableops.zero, out, builtins=True)
        out.changed = True
    elif cmd == P.CMD_ZERO_NUM:
        tableops.zero_counter(table, p.chain, p.rulenum)
        out.changed = True
    elif cmd & P.CMD_LIST:
        from .render import listing
        flags = listing.list_format(verbose, p.numeric, bool(p.options & P.OPT_EXPANDED),
                                    bool(p.options & P.OPT_LINENUMBERS))
        text, found = listing.list_entries(table, p.chain, p.rulenum, flags)
        out.stdout.append(text)
        if not found:
            raise tableops.TableOpError(2)  # ENOENT
        zero_after_list(p, table, verbose, out)
    elif cmd & P.CMD_LIST_RULES:
        from .render import save
        text, found = save.list_rules(table, p.chain, p.rulenum, verbose)
        out.stdout.append(text)
        if not found:
            raise tableops.TableOpError(2)
        zero_after_list(p, table, verbose, out)
    elif cmd == P.CMD_NEW_CHAIN:
        tableops.create_chain(table, p.chain)
        out.changed = True
    elif cmd == P.CMD_DELETE_CHAIN:
        # -X without a chain and without user chains calls libiptc for
        # nothing, so nothing is committed
        had_user_chains = any(not c.builtin for c in table.chains.values())
        for_each_chain(table, p.chain, verbose, "Deleting", tableops.delete_chain, out,
                       builtins=False)
        out.changed = p.chain is not None or had_user_chains
    elif cmd == P.CMD_RENAME_CHAIN:
        tableops.rename_chain(table, p.chain, p.newname)
        out.changed = True
    elif cmd == P.CMD_SET_POLICY:
        counters = Counters(p.pcnt, p.bcnt) if p.options & P.OPT_COUNTERS else None
        tableops.set_policy(table, p.chain, p.policy, counters)
        out.changed = True
    if out.changed and commit:
        keep = p.chain if cmd == P.CMD_SET_POLICY and p.options & P.OPT_COUNTERS else None
        tableops.reset_policy_counters(table, keep)
    return out


def zero_after_list(p: P.ParsedCommand, table: Table, verbose: bool, out: Outcome) -> None:
    if p.command & P.CMD_ZERO:
        for_each_chain(table, p.chain, verbose, "Zeroing", tableops.zero, out, builtins=True)
        out.changed = True
    if p.command & P.CMD_ZERO_NUM:
        tableops.zero_counter(table, p.chain, p.rulenum)
        out.changed = True


def for_each_chain(table: Table, chain: str | None, verbose: bool, verb: str, fn,
                   out: Outcome, builtins: bool) -> None:
    """A chain command on one chain, or on every chain when none is named.

    Over all chains iptables keeps going after a failure and reports the
    last error, so we do the same."""
    if chain is not None:
        if verbose:
            out.stdout.append(f"{verb} chain `{chain}'\n")
        fn(table, chain)
        return
    error = None
    for c in [c.name for c in table.ordered_chains()]:
        if not builtins and table.chains[c].builtin:
            continue
        if verbose:
            out.stdout.append(f"{verb} chain `{c}'\n")
        try:
            fn(table, c)
        except tableops.TableOpError as exc:
            error = exc
    if error is not None:
        raise error
