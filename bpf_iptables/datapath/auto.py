"""Enforcement without a separate step: the first change that gives the
filter table something to do attaches the data path.

A namespace that is not attached gets this store from ``attachment.wrap()``
(unless ``BPF_IPTABLES_DATAPATH=off``). Reading is the plain store's. A
save whose rule set needs no program (every built-in chain empty with
policy ACCEPT: what a fresh namespace has, or a flush) is only stored. Any
other save attaches first — generic XDP on every interface, TC egress for
OUTPUT, the interface watcher — with the new rule set, which is stored only
once its programs filter: a rule set the data path refuses (exit 2) or
cannot load (exit 1) changes nothing, as for an attached namespace. So
`bpf-iptables -A INPUT ... -j DROP` drops from the moment it returns, and no
accepted rule is ever left unenforced.

A rule set generic XDP refuses but netfilter's hooks enforce (NAT state,
marks from the nat table: kube-proxy's chains) attaches in ``--mode
netfilter`` instead (``attach_enforcing``).

``bpf-iptables-datapath attach --mode xdp|tc|netfilter`` chooses another mode
(before or after), ``detach`` removes everything (the next change attaches
again)."""
from __future__ import annotations

import sys

from ..model import RuleSet

AUTO_MODE = "xdpgeneric"   # works on every device, native driver support or not


def needs_program(ruleset: RuleSet) -> bool:
    table = ruleset.tables.get("filter")
    if table is None:
        return False
    return any(chain.rules or (chain.policy or "ACCEPT") != "ACCEPT"
               for name, chain in table.chains.items() if name in ("INPUT", "FORWARD", "OUTPUT"))


def attach_enforcing(store, ruleset: RuleSet) -> None:
    """Attach in AUTO_MODE or, for a rule set that mode refuses but
    netfilter's hooks enforce (what depends on the nat table: --ctstate
    DNAT, a mark set in PREROUTING, as kube-proxy's chains), in --mode
    netfilter. A rule set both refuse gets AUTO_MODE's refusal (exit 2)."""
    from ..errors import NotSupported
    from . import live
    from .generation import NETFILTER

    try:
        live.attach(store, AUTO_MODE, ruleset)
    except NotSupported as refused:
        try:
            live.attach(store, NETFILTER, ruleset)
        except (NotSupported, live.DatapathError):
            raise refused from None


class AutoAttach:
    """A state.Store that attaches the data path on the first change that needs it."""

    def __init__(self, inner):
        self.inner = inner
        self.directory = inner.directory

    def load(self) -> RuleSet:
        return self.inner.load()

    def load_index(self, table: str):
        return None   # every change goes through save(): it may have to attach

    def append(self, table, chain, rules):  # never reached (load_index is None)
        raise AssertionError("journal append before the data path is attached")

    def save(self, ruleset: RuleSet) -> None:
        if not needs_program(ruleset):
            self.inner.save(ruleset)
            return
        from . import watch

        attach_enforcing(self.inner, ruleset)
        try:
            watch.start(self.directory)
        except watch.WatcherError as exc:
            # the rule set is enforced; only interfaces created later wait
            # for the next change
            sys.stderr.write(f"warning: {exc}: interfaces created later are covered at the "
                             "next change only\n")
