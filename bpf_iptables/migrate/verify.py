"""The compiled programs against the reference semantics on the probe packets.

INPUT and FORWARD are run with BPF_PROG_TEST_RUN (``datapath.harness``):
verdicts and every counter must agree with ``reference.evaluate``. OUTPUT
runs at TC egress, which the harness cannot run: it is compiled (so a rule
set it cannot take is refused) but not probed, and the report says so."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..datapath.compiler import compile_chain, interfaces_here, uses_addrtype
from ..datapath.harness import Harness
from ..model import Counters, Table
from ..validate import chain_hooks
from .probes import probes


@dataclass
class Verification:
    packets: dict[str, int] = field(default_factory=dict)   # hook -> packets run
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _zeroed(table: Table) -> Table:
    t = copy.deepcopy(table)
    for chain in t.chains.values():
        chain.counters = Counters()
        for rule in chain.rules:
            rule.counters = Counters()
    return t


def _address_types(packets: list) -> None:
    """The probes' address types as the namespace's routes give them (what
    the compiled -m addrtype tests), for the reference to agree on."""
    from ..datapath.addrtypes import current
    from ..extensions.addrtype import RTN_NAMES

    types = current()
    for pkt in packets:
        pkt.src_type = frozenset({RTN_NAMES[types.type_of(pkt.src)]})
        pkt.dst_type = frozenset({RTN_NAMES[types.type_of(pkt.dst)]})


def verify(table: Table) -> Verification:
    out = Verification()
    here = interfaces_here()
    names = [n for n in here if n != "lo"] or ["lo"]
    hooks = chain_hooks(table)
    for hook in ("INPUT", "FORWARD"):
        if hook == "FORWARD" and any(
                r.out_iface or r.out_inv for c in table.chains.values()
                if "FORWARD" in hooks.get(c.name, ()) for r in c.rules):
            # -o in FORWARD is the route's device: probes would need routes
            out.notes.append("FORWARD: compiled, not probed (rules with -o)")
            compile_chain(table, "FORWARD", here)
            continue
        harness = Harness(interfaces=here, hook=hook)
        try:
            packets = probes(table, names if hook == "INPUT" else [])
            if hook == "FORWARD":
                for pkt in packets:
                    pkt.in_iface, pkt.ttl = "", 64
            if uses_addrtype(table):
                _address_types(packets)
            report = harness.check(_zeroed(table), packets, stateful=True)
        finally:
            harness.close()
        out.packets[hook] = report.packets
        out.mismatches += [f"{hook}: {m}" for m in report.mismatches]
    compile_chain(table, "OUTPUT", here)
    out.notes.append("OUTPUT: compiled, not probed (TC egress cannot be test-run here)")
    return out
