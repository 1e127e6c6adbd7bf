"""libiptc's handle over bpf-iptables' store: read a table, change it in
memory, write it back in one step.

``Handle`` reads the namespace's rule set under the xtables lock (through
``attachment.wrap``, so an attached namespace shows the data path's
counters) and then lets go of the lock, as iptc_init() does: a script may
hold a table for as long as it likes without blocking the command line.
``commit()`` takes the lock again, checks the table as the kernel would and
saves it with one ``store.save()``: for an attached namespace that is one
atomic data-path update, whatever number of changes the handle holds.

Counters follow libiptc: a rule the handle read keeps counting across the
commit (what it counted since the read is added), a rule zeroed in the
handle keeps only what it counted since the read, a new rule starts from
the counters it was given; policy counters restart, except those set with
``set_policy(..., counters)``."""
from __future__ import annotations

from ..datapath import attachment
from ..errors import NotSupported as CliNotSupported
from ..errors import TableOpError, XtablesError
from ..model import Chain as ModelChain
from ..model import Counters, Rule, Table
from .. import state
from ..validate import validate_table
from .errors import IPTCError, NotSupported


def _since(now: Counters, then: Counters) -> Counters:
    return Counters(max(now.packets - then.packets, 0), max(now.bytes - then.bytes, 0))


class Handle:
    """One table as read, with the changes made to it since."""

    def __init__(self, name: str):
        self.name = name
        self.changed = False
        self.table = self._read()
        # every rule read: (chain, index, counters then), by object identity
        self.origin: dict[int, tuple[str, int, Counters]] = {}
        self.policy_read: dict[str, Counters] = {}
        self.policy_set: set[str] = set()
        self._remember()

    def _read(self) -> Table:
        with state.locked(-1) as store:
            store = attachment.wrap(store)
            ruleset = store.load()
            known = set(ruleset.tables)
            table = ruleset.table(self.name)
            if set(ruleset.tables) != known:
                # iptc_init() brings the table into being, as iptables-save does
                store.save(ruleset)
        return table

    def _remember(self) -> None:
        for chain in self.table.chains.values():
            for i, rule in enumerate(chain.rules):
                self.origin[id(rule)] = (chain.name, i, Counters(rule.counters.packets,
                                                                 rule.counters.bytes))
            if chain.builtin:
                self.policy_read[chain.name] = Counters(chain.counters.packets,
                                                        chain.counters.bytes)

    def commit(self) -> None:
        """Write the table (nothing to do when nothing changed)."""
        if not self.changed:
            return
        try:
            validate_table(self.table)
            with state.locked(-1) as store:
                store = attachment.wrap(store)
                fresh = store.load()
                table = self._merge(fresh.table(self.name))
                fresh.tables[self.name] = table
                store.save(fresh)
        except TableOpError as exc:
            raise IPTCError(f"can't commit: {exc}") from None
        except CliNotSupported as exc:
            raise NotSupported(exc.message) from None
        except XtablesError as exc:
            raise IPTCError(f"can't commit: {exc.message.rstrip()}") from None
        # the handle now stands for what was written
        self.table = table
        self.changed = False
        self.origin, self.policy_read, self.policy_set = {}, {}, set()
        self._remember()

    def _merge(self, fresh: Table) -> Table:
        """The handle's table, with each rule it read replaced by the same
        rule as stored now (the data path follows its counters by object),
        counting what that rule counted since the handle read it."""
        out = Table(self.name)
        for chain in self.table.ordered_chains():
            rules: list[Rule] = []
            for rule in chain.rules:
                rules.append(self._current(rule, fresh))
            counters = chain.counters
            if chain.builtin and chain.name not in self.policy_set:
                now = fresh.chains[chain.name].counters if chain.name in fresh.chains else Counters()
                counters = _since(now, self.policy_read.get(chain.name, Counters()))
            out.chains[chain.name] = ModelChain(chain.name, chain.policy,
                                                Counters(counters.packets, counters.bytes), rules)
        # built-in chains first, as Table.empty() orders them
        return out

    def _current(self, rule: Rule, fresh: Table) -> Rule:
        seen = self.origin.get(id(rule))
        if seen is None:
            return rule.clone()
        chain, index, then = seen
        stored = fresh.chains.get(chain)
        if stored is None or index >= len(stored.rules) or not stored.rules[index].same_rule(rule):
            return rule.clone()  # changed under us: libiptc would not know either
        now = stored.rules[index]
        moved = _since(now.counters, then)
        now.counters = Counters(rule.counters.packets + moved.packets,
                                rule.counters.bytes + moved.bytes)
        return now

