"""Table and Chain: python-iptables' libiptc-shaped API over a ``Handle``.

As in python-iptables, ``Table(name)`` is one object per table name, and
with ``autocommit`` (the default) every change is committed at once (then
the handle is read again); with ``autocommit = False`` changes collect in
the handle until ``commit()``, and ``refresh()`` drops them. Unlike
python-iptables, a commit that fails raises ``IPTCError`` in autocommit
mode too (python-iptables ignores it there, and the change is silently
lost): a rule is never reported added and then missing."""
from __future__ import annotations

import errno
import functools
import weakref
from typing import Any, Callable

from .. import tableops
from ..errors import Op, TableOpError, table_strerror
from ..model import Counters, Rule as ModelRule
from .errors import IPTCError, NotSupported
from .handle import Handle
from .rule import Policy, Rule

# tables iptables knows; bpf-iptables has only filter
_KNOWN = ("filter", "mangle", "raw", "nat", "security")


def is_table_available(name: str) -> bool:
    return name == "filter"


def _fail(what: str, exc: TableOpError) -> IPTCError:
    """python-iptables' message: "can't <what>: <libiptc strerror>", the
    strerror of libiptc's last call, which tableops models (a failed
    delete_chain reads "Too many links", as from python-iptables)."""
    return IPTCError(f"{what}: {exc}")


def autocommit(fn: Callable) -> Callable:
    """A change: committed (then read again) at once in autocommit mode;
    a failed commit leaves the table as it was before the change."""

    @functools.wraps(fn)
    def run(self: "Table", *args: Any) -> Any:
        ret = fn(self, *args)
        if self.autocommit:
            try:
                self._handle.commit()  # the handle then stands for the table as written
            except Exception:
                self._handle = Handle(self.name)
                raise
        return ret

    return run


class Chain:
    """A chain of a table (one object per table and name)."""

    _cache: "weakref.WeakValueDictionary[str, Chain]" = weakref.WeakValueDictionary()

    def __new__(cls, table: "Table", name: str) -> "Chain":
        key = f"{type(table).__name__}.{table.name}.{name}"
        obj = Chain._cache.get(key)
        if obj is None:
            obj = object.__new__(cls)
            Chain._cache[key] = obj
        return obj

    def __init__(self, table: "Table", name: str):
        self.name = name
        self.table = table

    def delete(self) -> None:
        self.table.delete_chain(self.name)

    def rename(self, new_name: str) -> None:
        self.table.rename_chain(self.name, new_name)

    def flush(self) -> None:
        self.table.flush_entries(self.name)

    def get_counters(self) -> tuple[int, int] | None:
        policy, counters = self.table.get_policy(self.name)
        return counters

    def zero_counters(self) -> None:
        self.table.zero_entries(self.name)

    def set_policy(self, policy: Any, counters: Any = None) -> None:
        if isinstance(policy, Policy):
            policy = policy.name
        self.table.set_policy(self.name, policy, counters)

    def get_policy(self) -> Policy | None:
        policy, counters = self.table.get_policy(self.name)
        return policy

    def is_builtin(self) -> bool:
        return self.table.builtin_chain(self.name)

    def append_rule(self, rule: Rule) -> None:
        rule.final_check()
        self.table.append_entry(self.name, rule.model())

    def insert_rule(self, rule: Rule, position: int = 0) -> None:
        rule.final_check()
        self.table.insert_entry(self.name, rule.model(), position)

    def replace_rule(self, rule: Rule, position: int = 0) -> None:
        self.table.replace_entry(self.name, rule.model(), position)

    def delete_rule(self, rule: Rule) -> None:
        rule.final_check()
        self.table.delete_entry(self.name, rule.model())

    def get_target(self, rule: Rule) -> str | None:
        target = rule.model().target
        return target.name if target.is_standard else None

    def _get_rules(self) -> list[Rule]:
        chain = self.table._handle.table.chains.get(self.name)
        if chain is None:
            return []
        return [Rule(entry, self) for entry in chain.rules]

    rules = property(_get_rules)


class Table:
    """A table (only ``filter`` in bpf-iptables), one object per name."""

    FILTER = "filter"
    MANGLE = "mangle"
    RAW = "raw"
    NAT = "nat"
    SECURITY = "security"
    ALL = ["filter", "mangle", "raw", "nat", "security"]

    _cache: dict[str, "Table"] = {}

    def __new__(cls, name: str, autocommit: bool | None = None) -> "Table":
        obj = Table._cache.get(name)
        if obj is None:
            obj = object.__new__(cls)
            obj._init(name, True if autocommit is None else autocommit)
            Table._cache[name] = obj
        elif autocommit is not None:
            obj.autocommit = autocommit
        return obj

    def __init__(self, name: str, autocommit: bool | None = None):
        pass  # everything happens once, in _init()

    def _init(self, name: str, autocommit: bool) -> None:
        if not is_table_available(name):
            if name in _KNOWN:
                raise NotSupported(f"table `{name}' is not supported by bpf-iptables")
            raise IPTCError(f"can't initialize {name}: Table does not exist (do you need to insmod?)")
        self.name = name
        self.autocommit = autocommit
        self._handle = Handle(name)

    # -- the handle ------------------------------------------------------------

    def commit(self) -> None:
        """Write every pending change: one update of the data path."""
        self._handle.commit()

    def refresh(self) -> None:
        """Commit pending changes in autocommit mode, drop them otherwise,
        and read the table again (rules, policies, counters)."""
        if self.autocommit:
            self._handle.commit()
        self._handle = Handle(self.name)

    def close(self) -> None:
        if self.autocommit:
            self._handle.commit()

    def strerror(self) -> str:
        return ""

    # -- reading -----------------------------------------------------------------

    @property
    def _t(self):
        return self._handle.table

    def is_chain(self, chain: Any) -> bool:
        return self._t.is_chain(chain.name if isinstance(chain, Chain) else chain)

    def builtin_chain(self, chain: Any) -> bool:
        return self._t.is_builtin_chain(chain.name if isinstance(chain, Chain) else chain)

    def _get_chains(self) -> list[Chain]:
        return [Chain(self, c.name) for c in self._t.ordered_chains()]

    chains = property(_get_chains)

    def get_policy(self, chain: Any) -> tuple[Policy | None, tuple[int, int] | None]:
        name = chain.name if isinstance(chain, Chain) else chain
        if not self.builtin_chain(name):
            return None, None
        c = self._t.chains[name]
        out = Policy(c.policy), (c.counters.packets, c.counters.bytes)
        if self.autocommit:  # python-iptables' get_policy refreshes the table
            self.refresh()
        return out

    # -- changes -------------------------------------------------------------------

    def _change(self, what: str, fn: Callable, *args: Any) -> None:
        try:
            fn(self._t, *args)
        except TableOpError as exc:
            raise _fail(what, exc) from None
        self._handle.changed = True

    @autocommit
    def create_chain(self, chain: Any) -> Chain:
        name = chain.name if isinstance(chain, Chain) else chain
        if len(name.encode()) > tableops.CHAINLABEL_MAX - 2:
            # libiptc refuses names that do not fit the kernel's error target
            raise IPTCError(f"can't create chain {name}: {table_strerror(Op.OTHER, errno.EINVAL)}")
        self._change(f"can't create chain {name}", tableops.create_chain, name)
        return Chain(self, name)

    @autocommit
    def delete_chain(self, chain: Any) -> None:
        name = chain.name if isinstance(chain, Chain) else chain
        self._change(f"can't delete chain {name}", tableops.delete_chain, name)

    @autocommit
    def rename_chain(self, chain: Any, new_name: str) -> None:
        name = chain.name if isinstance(chain, Chain) else chain
        self._change(f"can't rename chain {name}", tableops.rename_chain, name, new_name)

    @autocommit
    def flush_entries(self, chain: Any) -> None:
        name = chain.name if isinstance(chain, Chain) else chain
        self._change(f"can't flush chain {name}", tableops.flush, name)

    @autocommit
    def zero_entries(self, chain: Any) -> None:
        name = chain.name if isinstance(chain, Chain) else chain
        self._change(f"can't zero chain {name} counters", tableops.zero, name)

    @autocommit
    def set_policy(self, chain: Any, policy: Any, counters: Any = None) -> None:
        name = chain.name if isinstance(chain, Chain) else chain
        if isinstance(policy, Policy):
            policy = policy.name
        given = Counters(int(counters[0]), int(counters[1])) if counters else None
        self._change(f"can't set policy {policy} on chain {name}", tableops.set_policy, name, policy, given)
        if given is not None:
            self._handle.policy_set.add(name)

    def _check_jump(self, chain: str, what: str, rule: ModelRule) -> None:
        """libiptc refuses a jump to a chain it does not have (ENOENT)."""
        t = rule.target
        if t.is_standard and t.name not in ("", "ACCEPT", "DROP", "RETURN", "QUEUE") \
                and not self._t.is_chain(t.name):
            raise IPTCError(f"{what} {chain}: {table_strerror(Op.OTHER, errno.ENOENT)}")

    @autocommit
    def append_entry(self, chain: str, entry: ModelRule) -> None:
        self._check_jump(chain, "can't append entry to chain", entry)
        self._change(f"can't append entry to chain {chain}", tableops.append, chain, entry)

    @autocommit
    def insert_entry(self, chain: str, entry: ModelRule, position: int) -> None:
        if position < 0:  # libiptc's index is unsigned
            raise IPTCError(f"can't insert entry into chain {chain}: "
                            f"{table_strerror(Op.INSERT_ENTRY, errno.E2BIG)}")
        self._check_jump(chain, "can't insert entry into chain", entry)
        self._change(f"can't insert entry into chain {chain}", tableops.insert, chain, entry, position)

    @autocommit
    def replace_entry(self, chain: str, entry: ModelRule, position: int) -> None:
        if position < 0:
            raise IPTCError(f"can't replace entry in chain {chain}: "
                            f"{table_strerror(Op.REPLACE_ENTRY, errno.E2BIG)}")
        self._check_jump(chain, "can't replace entry in chain", entry)
        self._change(f"can't replace entry in chain {chain}", tableops.replace, chain, entry, position)

    @autocommit
    def delete_entry(self, chain: str, entry: ModelRule, mask: Any = None) -> None:
        self._change(f"can't delete entry from chain {chain}", tableops.delete, chain, entry)

    def flush(self) -> None:
        """Flush every chain, then delete the user-defined ones."""
        for chain in self.chains:
            chain.flush()
        for chain in self.chains:
            if not self.builtin_chain(chain):
                self.delete_chain(chain)

    def create_rule(self, entry: ModelRule | None = None, chain: Chain | None = None) -> Rule:
        return Rule(entry, chain)
