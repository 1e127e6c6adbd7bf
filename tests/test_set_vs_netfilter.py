"""-m set's reference semantics (ipset/match.py) against the kernel's xt_set.

The three-namespace topology of test_reference_vs_netfilter (A sends
crafted packets through B's FORWARD chain to C): B gets real ipsets and a
FORWARD chain of counting rules with set matches under iptables-legacy;
the reference evaluates the same packets with the same sets as
bpf-iptables-set keeps them. Every counter must be equal. This checks the
readings of the kernel that the data path follows too (its tests compare
it with the reference): hash:net's most specific prefix, ``nomatch``
and ``--return-nomatch``, hash:ip,port's protocols (SCTP and UDPLITE
ports, ICMP type/code, GRE with port 0, fragments), bitmap:port's
TCP/UDP-only rule, too few directions."""
from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass

from bpf_iptables.ipset.cmdline import Options, Out
from bpf_iptables.ipset.command import Session
from bpf_iptables.ipset.model import IpSet
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import ICMP, Packet
from bpf_iptables.reference.sets import using
from tests.test_reference_vs_netfilter import (C_IP, TRAFFIC, Spec, Topology, build_model,
                                               kernel_counters, load_kernel, model_counters,
                                               send_traffic, topo)  # noqa: F401 (fixture)
import tests.test_reference_vs_netfilter as base
from tests.support.netns import bpf_command
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

ON = {"BPF_IPTABLES_DATAPATH": "on"}

SCTP, UDPLITE, GRE = 132, 136, 47


@dataclass(frozen=True)
class SetSpec(Spec):
    """Spec with SCTP/UDPLITE ports and any ICMP type/code."""

    icmp_type: int = 8
    icmp_code: int = 0

    def l4(self) -> bytes:
        data = bytes(self.payload)
        if not self.frag_offset and self.proto in (SCTP, UDPLITE):
            # ports first, as ipset reads them (sctphdr: 12 bytes)
            return struct.pack("!HHII", self.sport, self.dport, 0, 0) + data
        if not self.frag_offset and self.proto == ICMP:
            return struct.pack("!BBHHH", self.icmp_type, self.icmp_code, 0, 0x4242, 1) + data
        return super().l4()

    def packet(self) -> Packet:
        p = super().packet()
        if self.proto == ICMP:
            p.icmp_type, p.icmp_code = self.icmp_type, self.icmp_code
        return p


EXTRA = (
    SetSpec(SCTP, sport=1000, dport=9, payload=4), SetSpec(SCTP, sport=9, dport=1000),
    SetSpec(UDPLITE, sport=7, dport=7), SetSpec(UDPLITE, sport=8, dport=53),
    SetSpec(GRE, payload=8), SetSpec(GRE, src="10.77.0.77", payload=8),
    SetSpec(ICMP, icmp_type=8), SetSpec(ICMP, icmp_type=3, icmp_code=1, payload=28),
    SetSpec(ICMP, icmp_type=0), SetSpec(GRE, payload=16, frag_offset=3),
    SetSpec(SCTP, sport=9, dport=9, payload=8, frag_offset=2),
    SetSpec(17, src="10.77.0.65", sport=80, dport=80), SetSpec(6, src="10.77.0.66", sport=22,
                                                                  dport=9),
)

SETS = [
    "create ban hash:ip", "add ban 10.77.0.77", "add ban 10.77.0.200",
    "create nets hash:net", "add nets 10.77.0.0/24", "add nets 10.77.0.64/26 nomatch",
    "add nets 10.77.0.66", "add nets 10.78.0.2",
    "create svc hash:ip,port", "add svc 10.78.0.2,tcp:80", "add svc 10.78.0.2,udp:53",
    "add svc 10.78.0.2,sctp:9", "add svc 10.78.0.2,udplite:7", "add svc 10.78.0.2,icmp:ping",
    "add svc 10.78.0.2,icmp:host-unreachable", "add svc 10.78.0.2,gre:0",
    "add svc 10.77.0.1,tcp:40000",
    "create ports bitmap:port range 0-10000", "add ports 9", "add ports 22", "add ports 53",
    "add ports 80", "add ports 7",
]

RULES = (
    "-A FORWARD -m set --match-set ban src",
    "-A FORWARD -m set --match-set nets src",
    "-A FORWARD -m set ! --match-set nets src -m set --match-set nets dst",
    "-A FORWARD -m set --match-set svc dst,dst",
    "-A FORWARD -m set --match-set svc dst,src",
    "-A FORWARD -m set --match-set svc src,src",
    "-A FORWARD -m set --match-set svc dst",
    "-A FORWARD -m set ! --match-set svc dst",
    "-A FORWARD -m set --match-set ports dst",
    "-A FORWARD -m set --match-set ports src,dst",
    "-A FORWARD -m set ! --match-set ports src",
    # hash:net: the nomatch elements match instead; other types ignore it
    "-A FORWARD -m set --match-set nets src --return-nomatch",
    "-A FORWARD -m set ! --match-set nets src --return-nomatch",
    "-A FORWARD -m set --match-set ban src --return-nomatch",
    # counter tests and updates act on sets with counters only
    "-A FORWARD -m set --match-set ban src --packets-gt 5 ! --update-counters",
    "-A FORWARD -m set ! --match-set ban src --bytes-lt 1 ! --update-subcounters",
    "-A FORWARD -m set --match-set ban src -j DROP",
)


def our_sets() -> dict[str, IpSet]:
    """The same sets, made by bpf-iptables-set's own commands (no store on disk)."""
    session = Session.__new__(Session)
    session.opts, session.out, session.changed = Options(), Out(), False

    class Memory:
        """A SetStore without a file or maps."""

        def __init__(self) -> None:
            self.sets: dict[str, IpSet] = {}

        def maps(self):
            return None

        def get(self, name):
            return self.sets[name]

        def new_id(self, settype):
            return len(self.sets) + 1

    session.store = Memory()  # type: ignore[assignment]
    for line in SETS:
        session.run(line.split())
    return session.store.sets


def test_set_matches_count_as_xt_set(topo: Topology) -> None:  # noqa: F811
    for line in SETS:
        r = topo.b.run(["ipset", *line.split()])
        assert r.returncode == 0, (line, r)
    sets = our_sets()
    traffic = TRAFFIC + EXTRA
    with using(sets):
        load_kernel(topo, RULES)
        table = build_model(RULES)
        for spec in traffic:
            pkt = spec.packet()
            if type(spec) is Spec and spec.proto == ICMP:
                pkt.icmp_type = 8   # what Spec.l4() sends (its packet() leaves 0)
            evaluate(table, pkt)
    ours = model_counters(table)
    saved, base.TRAFFIC = base.TRAFFIC, traffic
    try:
        send_traffic(topo)
    finally:
        base.TRAFFIC = saved
    deadline = time.monotonic() + 3.0
    kernel = kernel_counters(topo)
    while kernel != ours and time.monotonic() < deadline:
        time.sleep(0.1)
        kernel = kernel_counters(topo)
    assert kernel == ours
    counts = [n for n, _ in ours["FORWARD"][1]]
    # every rule exercised, differently; one direction on a two-dimension
    # set never matches (and inverted always does)
    assert counts[6] == 0 and counts[7] == len(traffic), counts
    assert all(counts[:6] + counts[8:]) and len(set(counts)) > 6, counts
    assert C_IP == "10.78.0.2"


def our_counters(topo: Topology) -> dict:
    """B's counters as bpf-iptables lists them (the same parsing)."""
    saved = topo.b.iptables

    def listing(*args: str):
        return topo.b.run(bpf_command("iptables", *args), env=ON)

    topo.b.iptables = listing  # type: ignore[method-assign]
    try:
        return kernel_counters(topo)
    finally:
        topo.b.iptables = saved  # type: ignore[method-assign]


def test_the_data_path_counts_the_same_in_forward(topo: Topology) -> None:  # noqa: F811
    """The same packets through bpf-iptables' FORWARD classifier in B (XDP on
    vin0), with the sets made by bpf-iptables-set: the counters the kernel
    and the reference agreed on."""
    ensure_bpffs()
    for reset in (("-F",), ("-X",), ("-Z",), ("-P", "FORWARD", "ACCEPT")):
        assert topo.b.iptables(*reset).returncode == 0   # iptables-legacy steps aside
    r = topo.b.run([sys.executable, "-m", "bpf_iptables.cli.ipset", "restore"],
                   input="".join(f"{line}\n" for line in SETS))
    assert r.returncode == 0, r.stderr
    traffic = TRAFFIC + EXTRA
    with using(our_sets()):
        table = build_model(RULES)
        for spec in traffic:
            pkt = spec.packet()
            if type(spec) is Spec and spec.proto == ICMP:
                pkt.icmp_type = 8
            evaluate(table, pkt)
    want = model_counters(table)
    try:
        r = topo.b.run(bpf_command("iptables-restore"),
                       input="*filter\n" + "".join(f"{line}\n" for line in RULES) + "COMMIT\n",
                       env=ON)
        assert r.returncode == 0, r.stderr
        saved, base.TRAFFIC = base.TRAFFIC, traffic
        try:
            send_traffic(topo)
        finally:
            base.TRAFFIC = saved
        deadline = time.monotonic() + 3.0
        got = our_counters(topo)
        while got != want and time.monotonic() < deadline:
            time.sleep(0.1)
            got = our_counters(topo)
        assert got == want
    finally:
        topo.b.run(datapath_command("detach"))
        topo.b.run(bpf_command("iptables", "-F"))
