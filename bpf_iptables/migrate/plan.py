"""What a migration would load: the rules bpf-iptables enforces, and the others.

Each ``-A`` line of the saved filter table goes through the bpf-iptables
command-line parser and the data path's lowering for every hook that can
reach its chain: a rule either becomes part of the table to load, or is
reported with the reason it cannot be enforced."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..cmdline import parse as P
from ..commands import execute
from ..datapath.fields import EntryFields, add_rule
from ..errors import NotSupported, XtablesError
from ..model import Counters, Rule, Table
from ..render.save import save_table
from ..validate import chain_hooks, validate_table


@dataclass
class Refused:
    line: str
    reason: str


@dataclass
class Plan:
    table: Table
    refused: list[Refused] = field(default_factory=list)
    rules: int = 0

    def save_text(self) -> str:
        """The table to load, as bpf-iptables-restore input (with counters)."""
        return save_table(self.table, True)


class PlanError(Exception):
    pass


def filter_section(text: str) -> list[str]:
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("*"):
            inside = line.strip() == "*filter"
        elif inside and line.strip() == "COMMIT":
            inside = False
        elif inside and line.strip() and not line.startswith("#"):
            out.append(line)
    return out


def _command(table: Table, words: list[str]) -> P.ParsedCommand:
    parsed = P.CommandParser(["bpf-iptables", *words]).parse()
    execute(parsed, table)
    return parsed


def enforceable(rule: Rule, hooks: frozenset[str]) -> str | None:
    """None, or why the data path cannot enforce ``rule``."""
    from ..datapath.compiler import check_log, rule_stateful

    # the targets the compiler takes (compile_chain): standard ones, LOG
    # and REJECT, built in the data path
    if not rule.target.is_standard and rule.target.name not in ("LOG", "REJECT"):
        return f"target `{rule.target.name}' in the eBPF data path is not supported by bpf-iptables"
    try:
        for hook in sorted(hooks):
            if rule.target.name == "LOG":
                check_log(rule.target.data, hook)   # LOG: what the logger cannot write
            add_rule(EntryFields(), rule, hook)
        rule_stateful(rule)   # limit, recent, hashlimit: only as the rule's last match
    except NotSupported as exc:
        return exc.message
    return None


def make_plan(text: str) -> Plan:
    lines = filter_section(text)
    table = Table.empty("filter")
    plan = Plan(table)
    rule_lines: list[tuple[str, list[str], Counters | None]] = []
    policy_counters: dict[str, Counters] = {}
    for line in lines:
        if line.startswith(":"):
            words = line[1:].split()
            name, policy = words[:2]
            if policy == "-":
                _command(table, ["-N", name])
            else:
                _command(table, ["-P", name, policy])
                if len(words) > 2 and words[2].startswith("["):
                    p, b = words[2].strip("[]").split(":")
                    policy_counters[name] = Counters(int(p), int(b))
            continue
        counters = None
        if line.startswith("["):
            head, _, line = line.partition(" ")
            p, b = head.strip("[]").split(":")
            counters = Counters(int(p), int(b))
        rule_lines.append((line, shlex.split(line), counters))
    # chain hooks need every jump: parse all rules first, keep the refused apart
    for line, words, counters in rule_lines:
        before = len(table.chains[words[1]].rules) if len(words) > 1 and words[1] in table.chains else 0
        try:
            _command(table, words)
        except NotSupported as exc:
            plan.refused.append(Refused(line, exc.message))
            continue
        except XtablesError as exc:
            raise PlanError(f"cannot read `{line}': {exc.message.strip()}") from None
        if counters is not None:
            table.chains[words[1]].rules[before].counters = counters
    hooks = chain_hooks(table)
    for chain in table.ordered_chains():
        kept = []
        for rule in chain.rules:
            why = enforceable(rule, hooks.get(chain.name, frozenset()))
            if why is None:
                kept.append(rule)
            else:
                from ..render.save import rule_line

                plan.refused.append(Refused(rule_line(chain.name, rule).strip(), why))
        chain.rules = kept
    validate_table(table)
    for name, counters in policy_counters.items():
        # the policies' counters come along, as the rules' do (set last: the
        # commands above may give the chains fresh counters)
        table.chains[name].counters = counters
    plan.rules = sum(len(c.rules) for c in table.chains.values())
    return plan
