"""The rule-set model: tables, chains, rules, matches and targets.

A rule mirrors iptables' ``ipt_entry``: the fixed IPv4 header part, a list of
matches (extension name + the extension's parsed, immutable data), one target
and counters. Two rules are "the same rule" for -C/-D exactly when their
fields other than counters are equal, as libiptc compares entries.

Nothing here knows about command-line syntax; extensions own that."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from .netaddr import ANY, IPv4Net

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
STANDARD_VERDICTS = ("ACCEPT", "DROP", "QUEUE", "RETURN")
POLICY_VERDICTS = ("ACCEPT", "DROP")


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0

    def add(self, packets: int, nbytes: int) -> None:
        self.packets += packets
        self.bytes += nbytes


@dataclass(frozen=True)
class Match:
    """One ``-m NAME ...`` (or an implicitly loaded protocol match)."""

    name: str
    data: Any


@dataclass(frozen=True)
class Target:
    """The rule's target.

    ``name`` is "" for a rule without target, a standard verdict (ACCEPT,
    DROP, RETURN), a user chain name, or an extension target (REJECT, LOG)
    whose options are in ``data``. ``goto`` marks ``-g CHAIN``."""

    name: str = ""
    data: Any = None
    goto: bool = False

    @property
    def is_standard(self) -> bool:
        return self.data is None


@dataclass
class Rule:
    src: IPv4Net = ANY
    dst: IPv4Net = ANY
    src_inv: bool = False
    dst_inv: bool = False
    in_iface: str = ""
    out_iface: str = ""
    in_inv: bool = False
    out_inv: bool = False
    proto: int = 0
    proto_inv: bool = False
    fragment: bool = False
    frag_inv: bool = False
    matches: tuple[Match, ...] = ()
    target: Target = Target()
    counters: Counters = field(default_factory=Counters, compare=False)

    def spec(self) -> tuple:
        """Everything that identifies the rule (counters excluded)."""
        return (self.src, self.dst, self.src_inv, self.dst_inv, self.in_iface,
                self.out_iface, self.in_inv, self.out_inv, self.proto,
                self.proto_inv, self.fragment, self.frag_inv, self.matches,
                self.target)

    def same_rule(self, other: "Rule") -> bool:
        return self.spec() == other.spec()

    def clone(self) -> "Rule":
        return replace(self, counters=Counters(self.counters.packets, self.counters.bytes))


@dataclass
class Chain:
    name: str
    policy: str | None = None  # None for user-defined chains
    counters: Counters = field(default_factory=Counters)  # policy counters
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass
class Table:
    """One table: built-in chains in hook order, then user chains by name.

    libiptc keeps user-defined chains sorted, so listings and saves print
    them alphabetically whatever order they were created in."""

    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str) -> "Table":
        table = cls(name)
        for chain in BUILTIN_CHAINS[name]:
            table.chains[chain] = Chain(chain, policy="ACCEPT")
        return table

    def ordered_chains(self) -> list[Chain]:
        builtins = [c for c in self.chains.values() if c.builtin]
        users = sorted((c for c in self.chains.values() if not c.builtin),
                       key=lambda c: c.name.encode())
        return builtins + users

    def is_chain(self, name: str) -> bool:
        return name in self.chains

    def is_builtin_chain(self, name: str) -> bool:
        chain = self.chains.get(name)
        return chain is not None and chain.builtin

    def references(self, name: str) -> int:
        """How many rules jump or go to chain ``name``."""
        return sum(1 for c in self.chains.values() for r in c.rules
                   if r.target.is_standard and r.target.name == name)

    def copy(self) -> "Table":
        return copy.deepcopy(self)


@dataclass
class RuleSet:
    """All tables of one network namespace (only ``filter`` for now)."""

    tables: dict[str, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table.empty(name)
        return self.tables[name]
