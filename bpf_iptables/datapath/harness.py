"""Differential check of the data path against the reference semantics.

Builds tables through the real command parser, compiles and installs them
in a (cached) loaded program, runs packets with BPF_PROG_TEST_RUN and
compares verdicts and every rule and policy counter with
``reference.evaluate`` on the same packets."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field, replace

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
from .testrun import NF_VERDICTS, test_run, test_run_nf

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


NF_HOOKNUM = {"INPUT": 1, "FORWARD": 2, "OUTPUT": 3}   # NF_INET_LOCAL_IN, ...


def nf_frame(pkt: Packet) -> bytes:
    """The test run's data for ``pkt`` at its netfilter hook: the IP packet
    as netfilter sees it (FORWARD's TTL already lowered), behind an
    Ethernet header except at LOCAL_OUT, where bpf_prog_test_run_nf takes
    the bytes as the IP packet itself."""
    seen = replace(pkt, hook="INPUT")   # the frame's TTL = the TTL seen
    data = frame(seen)
    return data[14:] if pkt.hook == "OUTPUT" else data


@dataclass
class Report:
    packets: int = 0
    mismatches: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, min_shape: Shape | None = None,
                 interfaces: dict[str, int] | None = None, hook: str = "INPUT",
                 nf: bool = False):
        """``hook``: INPUT or FORWARD (both XDP programs of filter.c); the
        FORWARD classifier is run directly, as the dispatcher would call it
        (so packets must be ones the kernel forwards: TTL >= 1 after the
        decrement, and for -o a route in this namespace).
        ``nf``: the netfilter-hook build (--mode netfilter) at the hook's
        netfilter hook, OUTPUT too (see ``_nf_run``)."""
        self.cache = ProgramCache(nf=nf)
        self.min_shape = min_shape
        self.interfaces = interfaces if interfaces is not None else interfaces_here()
        self.hook = hook
        self.nf = nf

    def close(self) -> None:
        self.cache.close()

    def load(self, table: Table) -> tuple[LoadedProgram, Compiled]:
        if self.nf:
            from .fields import netfilter_layout
            with netfilter_layout():
                compiled = compile_chain(table, self.hook, self.interfaces, self.min_shape)
        else:
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
            if tracker is not None:
                pkt.time = time.monotonic()
            if self.nf:
                got_name = self._nf_run(prog, pkt)
            else:
                ifindex = self.interfaces[pkt.in_iface] if pkt.in_iface else 0
                got = test_run(prog.fd, frame(pkt), ifindex=ifindex)
                got_name = XDP_TO_VERDICT.get(got.verdict, got.name)
            if tracker is not None:
                want = track_and_evaluate(table, tracker, pkt)[0].verdict
            else:
                want = evaluate(table, pkt).verdict
            report.packets += 1
            if got_name != want:
                report.mismatches.append(f"{pkt}: data path {got_name}, reference {want}")
        self._compare_counters(table, prog, report)
        return report

    def _nf_run(self, prog: LoadedProgram, pkt: Packet) -> str:
        """The netfilter build's verdict. bpf_prog_test_run_nf gives every
        hook the loopback as output device and no input device (it picks
        them by its default hook, LOCAL_OUT, before taking ours): the
        reference packet is made to match. skb->pkt_type is what
        eth_type_trans() makes of the frame's destination MAC."""
        pkt.in_iface = ""
        pkt.out_iface = "" if self.hook == "INPUT" else "lo"
        pkt.src_mac = None
        if self.hook == "OUTPUT":
            pkt.pkttype = "host"   # (the test run takes LOCAL_OUT's data as the IP packet)
        elif pkt.pkttype == "broadcast":
            # the loopback's broadcast address is all zeros: ff:ff:ff:ff:ff:ff
            # is a multicast address to eth_type_trans() there
            pkt.pkttype = "multicast"
        got = test_run_nf(prog.fd, nf_frame(pkt), NF_HOOKNUM[self.hook])
        return NF_VERDICTS.get(got.verdict, str(got.verdict))

    def _compare_counters(self, table: Table, prog: LoadedProgram, report: Report) -> None:
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
