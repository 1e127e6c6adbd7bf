"""Differential check of the data path against the reference semantics.

Builds tables through the real command parser, compiles and installs them
in a (cached) loaded program, runs packets with BPF_PROG_TEST_RUN and
compares verdicts and every rule and policy counter with
``reference.evaluate`` on the same packets."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from ..cmdline import parse as P
from ..commands import execute
from ..conntrack.reference import run as track_and_evaluate
from ..conntrack.tracker import Tracker
from ..model import Table
from ..reference.evaluate import evaluate
from ..reference.packet import Packet
from ..validate import validate_table
from .compiler import Compiled, Shape, compile_chain, interfaces_here
from .packets import DEFAULT_SRC_MAC, frame
from .program import LoadedProgram, ProgramCache
from .testrun import test_run

# XDP_TX: a REJECT whose reply was built (a packet due no reply is dropped)
XDP_TO_VERDICT = {1: "DROP", 2: "ACCEPT", 3: "REJECT"}


def table_from_lines(lines: list[str], table: Table | None = None) -> Table:
    """Apply iptables command lines ("-A INPUT ...", "-N X", "-P INPUT DROP")."""
    table = table or Table.empty("filter")
    for line in lines:
        parsed = P.CommandParser(["iptables", *shlex.split(line)]).parse()
        execute(parsed, table)
    validate_table(table)
    return table


def table_from_save(text: str) -> Table:
    """The *filter section of an iptables-save file, parsed line by line."""
    chains, rules = [], []
    for line in text.splitlines():
        if line.startswith("-A "):
            rules.append(line)
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            chains.append(f"-N {name}" if policy == "-" else f"-P {name} {policy}")
    return table_from_lines(chains + rules)


def normalise(pkt: Packet) -> None:
    """Make the reference packet what the kernel would see for its frame:
    every frame has an Ethernet header, which xt_mac sees on every device
    but the loopback (not ARPHRD_ETHER: ``src_mac`` None), and a frame on
    lo always has a zero destination MAC (PACKET_HOST). No interface: the
    test run's device is the loopback."""
    if pkt.in_iface in ("lo", ""):
        pkt.src_mac, pkt.pkttype = None, "host"
    elif pkt.src_mac is None:
        pkt.src_mac = DEFAULT_SRC_MAC


@dataclass
class Report:
    packets: int = 0
    mismatches: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, min_shape: Shape | None = None,
                 interfaces: dict[str, int] | None = None, hook: str = "INPUT"):
        """``hook``: INPUT or FORWARD (both XDP programs of filter.c); the
        FORWARD classifier is run directly, as the dispatcher would call it
        (so packets must be ones the kernel forwards: TTL >= 1 after the
        decrement, and for -o a route in this namespace)."""
        self.cache = ProgramCache()
        self.min_shape = min_shape
        self.interfaces = interfaces if interfaces is not None else interfaces_here()
        self.hook = hook

    def close(self) -> None:
        self.cache.close()

    def load(self, table: Table) -> tuple[LoadedProgram, Compiled]:
        compiled = compile_chain(table, self.hook, self.interfaces, self.min_shape)
        prog = self.cache.get(compiled.shape)
        prog.install(compiled)
        return prog, compiled

    def check(self, table: Table, packets: list[Packet], stateful: bool = False) -> Report:
        """Run ``packets``; ``table``'s counters must start at zero.

        ``stateful``: the packets are a sequence in time, as the data path
        sees them: each is stamped with the clock when it runs (limit,
        recent and hashlimit count time), and netfilter's tracker model
        gives it its conntrack state and confirms what is accepted, as the
        program's own (fresh) table does."""
        prog, _ = self.load(table)
        report = Report()
        tracker = Tracker() if stateful else None
        for pkt in packets:
            pkt.hook = self.hook
            normalise(pkt)
            ifindex = self.interfaces[pkt.in_iface] if pkt.in_iface else 0
            if tracker is not None:
                pkt.time = time.monotonic()
            got = test_run(prog.fd, frame(pkt), ifindex=ifindex)
            if tracker is not None:
                want = track_and_evaluate(table, tracker, pkt)[0].verdict
            else:
                want = evaluate(table, pkt).verdict
            report.packets += 1
            if XDP_TO_VERDICT.get(got.verdict) != want:
                report.mismatches.append(f"{pkt}: data path {got.name}, reference {want}")
        for (chain, index), c in prog.rule_counters().items():
            ref = table.chains[chain].rules[index].counters
            if (c.packets, c.bytes) != (ref.packets, ref.bytes):
                report.mismatches.append(
                    f"counters of {chain} rule {index + 1}: data path {c}, reference {ref}")
        policy = prog.policy_counters()
        ref = table.chains[self.hook].counters
        if (policy.packets, policy.bytes) != (ref.packets, ref.bytes):
            report.mismatches.append(
                f"{self.hook} policy counters: data path {policy}, reference {ref}")
        return report
