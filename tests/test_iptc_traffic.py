"""A python-iptables script's rules enforced: the same counters as iptables-legacy.

Two client/server topologies (tests/test_datapath_traffic.py): one server
is configured by python-iptables on iptables-legacy, the other by the same
script on ``bpf_iptables.iptc``, whose first commit attaches the data path
(the automatic attach). Only rules the data path enforces are used (tcp,
udp, multiport, comment; ACCEPT, DROP, RETURN, a user chain). The same
traffic must be delivered alike and leave the same counters, read through
the API itself and in ``-L -v -x -n``; an edit commit of several changes
is one data-path update and keeps the counters of the rules it keeps, and
so is an ``easy`` batch."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from tests.support.netns import REPO, Namespace, bpf_command
from tests.test_datapath_traffic import Pair, datapath_command, ensure_bpffs, ping, tcp, topology, udp

SCRIPT = r'''
import sys

if sys.argv[1] == "real":
    import iptc
    from iptc import easy
else:
    import bpf_iptables.iptc as iptc
    from bpf_iptables.iptc import easy

table = iptc.Table(iptc.Table.FILTER)
INPUT = iptc.Chain(table, "INPUT")


def rule(protocol=None, src=None, target=None, goto=False, **matches):
    r = iptc.Rule()
    if protocol:
        r.protocol = protocol
    if src:
        r.src = src
    for name, params in matches.items():
        m = r.create_match(name)
        for key, value in params.items():
            setattr(m, key, value)
    r.create_target(target or "", goto=goto)
    return r


def build():
    """Everything in one commit."""
    table.autocommit = False
    udpchk = table.create_chain("udpchk")
    INPUT.append_rule(rule("icmp", target="ACCEPT", comment={"comment": "ping"}))
    INPUT.append_rule(rule(src="10.99.0.0/24"))
    INPUT.append_rule(rule("udp", target="udpchk"))
    INPUT.append_rule(rule("tcp", target="ACCEPT", multiport={"dports": "8080,8090"}))
    udpchk.append_rule(rule("udp", target="DROP", udp={"dport": "5001"}))
    udpchk.append_rule(rule("udp", target="ACCEPT", udp={"dport": "5002"},
                            comment={"comment": "allowed"}))
    udpchk.append_rule(rule(target="RETURN"))
    iptc.Chain(table, "OUTPUT").append_rule(rule("udp", target="DROP", udp={"dport": "6000"}))
    INPUT.set_policy("DROP")
    table.commit()
    table.autocommit = True


def edit():
    """Delete one rule, insert another, zero a chain: one commit."""
    table.autocommit = False
    INPUT.delete_rule(rule(src="10.99.0.0/24"))
    INPUT.insert_rule(rule("udp", target="DROP", udp={"dport": "5003"}), 1)
    iptc.Chain(table, "udpchk").zero_counters()
    table.commit()
    # python-iptables keeps the handle as it was before the commit: a second
    # commit of it after zero_counters() would subtract again (counters wrap
    # below zero), so read the table again first, as its docs advise
    table.refresh()
    table.autocommit = True
    # an easy batch: one commit at batch_end() (python-iptables commits each call)
    easy.batch_begin()
    easy.add_rule("filter", "udpchk", {"protocol": "udp", "udp": {"dport": "5004"},
                                       "target": "ACCEPT"}, position=1)
    easy.add_rule("filter", "udpchk", {"protocol": "udp", "udp": {"dport": "5005"},
                                       "comment": {"comment": "five"}, "target": "DROP"})
    easy.batch_end()
    if sys.argv[1] == "bpf":
        refused()


def counters():
    table.refresh()
    for chain in table.chains:
        print(chain.name, chain.get_counters() if chain.is_builtin() else "")
        for r in chain.rules:
            print("  ", r.protocol, [m.name for m in r.matches], r.target.name, r.get_counters())


def refused():
    """What the data path cannot enforce is refused, and nothing changes."""
    before = [(c.name, len(c.rules)) for c in table.chains]
    r = rule(target="LOG")
    r.target.set_parameter("log-uid")   # the one LOG option the data path refuses
    try:
        INPUT.append_rule(r)
        print("LOG accepted")
    except iptc.NotSupported as exc:
        print("LOG refused:", exc)
    table.refresh()
    print("unchanged", before == [(c.name, len(c.rules)) for c in table.chains])


{"build": build, "edit": edit, "counters": counters}[sys.argv[2]]()
'''


def run_script(ns: Namespace, backend: str, step: str, tmp: Path) -> str:
    path = tmp / "script.py"
    path.write_text(SCRIPT)
    r = ns.run([sys.executable, str(path), backend, step],
               env={"PYTHONPATH": str(REPO), "BPF_IPTABLES_DATAPATH": "on"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def traffic(pair: Pair) -> dict[str, int]:
    out = {"icmp": ping(pair, 2), "udp5001": udp(pair, 5001, 2), "udp5002": udp(pair, 5002, 3),
           "tcp8080": tcp(pair, 8080, 1), "tcp8081": tcp(pair, 8081, 1),
           "out6000": udp(pair, 6000, 2, reverse=True)}
    time.sleep(0.1)
    return out


def generation(ns: Namespace) -> int:
    status = ns.run(datapath_command("status")).stdout
    found = re.search(r"generation (\d+)", status)
    assert found, status
    return int(found.group(1))


def listing(ns: Namespace, real: bool) -> str:
    args = ("-L", "-v", "-x", "-n")
    return (ns.iptables(*args) if real else ns.bpf_iptables(*args)).stdout


def test_same_counters_as_python_iptables_on_legacy(tmp_path):
    ensure_bpffs()
    with topology("ipl") as legacy, topology("ipb") as ours:
        run_script(legacy.server, "real", "build", tmp_path)
        run_script(ours.server, "bpf", "build", tmp_path)
        assert "attached mode xdpgeneric" in ours.server.run(datapath_command("status")).stdout

        want = traffic(legacy)
        assert want == {"icmp": 2, "udp5001": 0, "udp5002": 3, "tcp8080": 1, "tcp8081": 0,
                        "out6000": 0}
        assert traffic(ours) == want
        read = run_script(legacy.server, "real", "counters", tmp_path)
        assert "(2, " in read  # the ping rule counted
        assert run_script(ours.server, "bpf", "counters", tmp_path) == read
        assert listing(ours.server, False) == listing(legacy.server, True)

        # several changes, one commit: one update; kept rules keep counting
        # (and a rule the data path cannot enforce is refused, changing nothing)
        before = generation(ours.server)
        run_script(legacy.server, "real", "edit", tmp_path)
        out = run_script(ours.server, "bpf", "edit", tmp_path)
        assert "LOG refused: target `LOG' with --log-uid in the eBPF data path is not supported" \
            in out, out
        assert "unchanged True" in out
        assert "LOG" not in ours.server.run(bpf_command("iptables-save")).stdout
        assert generation(ours.server) == before + 2  # the Table commit, the easy batch
        assert ping(legacy, 1) == ping(ours, 1) == 1
        assert udp(legacy, 5003, 1) == udp(ours, 5003, 1) == 0
        assert udp(legacy, 5004, 2) == udp(ours, 5004, 2) == 2
        time.sleep(0.1)
        read = run_script(legacy.server, "real", "counters", tmp_path)
        assert "(3, " in read
        assert run_script(ours.server, "bpf", "counters", tmp_path) == read
        assert listing(ours.server, False) == listing(legacy.server, True)
