"""fail2ban's ipset action against iptables-legacy + ipset, with traffic.

Twin namespaces: one with the real ``ipset`` and iptables-legacy, one with
bpf-iptables-set and bpf-iptables (data path attached). Both get
fail2ban's iptables-ipset rule (``-m multiport --dports ... -m set
--match-set f2b-test src -j DROP``), its ``-C`` check, then 100 addresses
are banned while UDP traffic from them runs, and unbanned in two halves.
After each step an exact round (3 datagrams from each of the 100 sources
to a socket on 10.9.0.1, every source on lo) must deliver the same
sources and leave the same counters in both. Set changes go to the maps
in place: the data path's record and the rule set do not change.

The 200 ban/unban commands of ours run in this process inside the
namespace (``execute``: the same code as the command line, without 200
interpreter starts); the command line itself is used for create, list and
destroy."""
from __future__ import annotations

import io
import json
import re
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from bpf_iptables import nsthread
from bpf_iptables.ipset.command import execute
from bpf_iptables.state import namespace_dir
from tests.support.netns import Namespace, bpf_command, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

ON = {"BPF_IPTABLES_DATAPATH": "on"}
SET = "f2b-test"
SOURCES = [f"10.9.0.{i}" for i in range(2, 102)]
RULE = ["INPUT", "-p", "udp", "-m", "multiport", "--dports", "9999", "-m", "set",
        "--match-set", SET, "src", "-j", "DROP"]

# Sends ``rounds`` rounds of ``per`` datagrams from every source (or keeps
# sending for ``seconds``), then reports which sources got through.
SENDER = """
import json, socket, sys, time
sources, per, seconds = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
rx.bind(("10.9.0.1", 9999))
tx = []
for a in sources:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 0))
    tx.append(s)
end = time.monotonic() + seconds
while True:
    for _ in range(per):
        for s in tx:
            try:
                s.sendto(b"x", ("10.9.0.1", 9999))
            except PermissionError:
                pass   # iptables' OUTPUT DROP fails the send (the data path drops at the device)
    if time.monotonic() >= end:
        break
got = {}
rx.settimeout(0.3)
try:
    while True:
        _, (a, _p) = rx.recvfrom(16)
        got[a] = got.get(a, 0) + 1
except socket.timeout:
    pass
print(json.dumps(got))
"""


@contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """This (main) thread in ``ns`` (for in-process commands), then back."""
    with nsthread.inside(ns.name):
        yield


def send(ns: Namespace, per: int = 3, seconds: float = 0.0) -> dict[str, int]:
    r = ns.run([sys.executable, "-c", SENDER, json.dumps(SOURCES), str(per), str(seconds)],
               timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def counters(ns: Namespace, ours: bool, chain: str = "INPUT") -> list[tuple[int, int]]:
    argv = (bpf_command("iptables", "-L", chain, "-v", "-x", "-n") if ours
            else ["iptables-legacy", "-L", chain, "-v", "-x", "-n"])
    out = ns.run(argv, env=ON).stdout.splitlines()
    policy = re.search(r"policy ACCEPT (\d+) packets, (\d+) bytes", out[0])
    assert policy, out
    rules = [(int(line.split()[0]), int(line.split()[1])) for line in out[2:] if line.strip()]
    return [(int(policy[1]), int(policy[2]))] + rules


def real_set(ns: Namespace, script: str) -> None:
    r = ns.run(["sh", "-c", script])
    assert r.returncode == 0, r.stderr


def our_set(ns: Namespace, commands: list[list[str]]) -> None:
    with inside(ns):
        directory = namespace_dir()
        for argv in commands:
            err = io.StringIO()
            assert execute(argv, directory, io.StringIO(), err) == 0, (argv, err.getvalue())


def record(ns: Namespace) -> str:
    """The data path's record (programs, shapes, serial) as a file."""
    with inside(ns):
        return (namespace_dir() / "datapath.json").read_text()


def exact_round(real: Namespace, ours: Namespace) -> dict[str, int]:
    for ns, argv in ((real, ["iptables-legacy"]), (ours, bpf_command("iptables"))):
        assert ns.run([*argv, "-Z"], env=ON).returncode == 0
    got_real, got_ours = send(real), send(ours)
    assert got_real == got_ours
    assert counters(real, False) == counters(ours, True)
    return got_real


def test_fail2ban_ban_and_unban_100_addresses():
    ensure_bpffs()
    with namespace("f2br") as real, namespace("f2bo") as ours:
        try:
            for ns in (real, ours):
                assert ns.run(["ip", "link", "set", "lo", "up"]).returncode == 0
                assert ns.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "lo"]).returncode == 0
            # actionstart
            create = ["-exist", "create", SET, "hash:ip", "timeout", "600", "maxelem", "65536"]
            assert real.run(["ipset", *create]).returncode == 0
            r = ours.run([sys.executable, "-m", "bpf_iptables.cli.ipset", *create])
            assert r.returncode == 0, r.stderr
            assert real.iptables("-I", *RULE).returncode == 0
            r = ours.run(bpf_command("iptables", "-I", *RULE), env=ON)
            assert r.returncode == 0, r.stderr
            # actioncheck
            assert real.iptables("-C", *RULE).returncode == 0
            assert ours.run(bpf_command("iptables", "-C", *RULE), env=ON).returncode == 0
            assert real.iptables("-S").stdout == ours.run(bpf_command("iptables", "-S")).stdout

            got = exact_round(real, ours)
            assert got == {a: 3 for a in SOURCES}
            # set changes go to the maps in place: the data path's record
            # (programs, shapes, serial) stays as it is (-Z changes it)
            before = record(ours)

            # ban all 100 while traffic runs (2 s of it in each namespace)
            flows = [threading.Thread(target=send, args=(ns, 1, 2.0)) for ns in (real, ours)]
            for t in flows:
                t.start()
            real_set(real, "".join(f"ipset -exist add {SET} {a} timeout 600\n" for a in SOURCES))
            our_set(ours, [["-exist", "add", SET, a, "timeout", "600"] for a in SOURCES])
            for t in flows:
                t.join()
            assert record(ours) == before
            assert exact_round(real, ours) == {}

            # unban the even half, then the rest
            half = SOURCES[::2]
            before = record(ours)
            real_set(real, "".join(f"ipset -exist del {SET} {a}\n" for a in half))
            our_set(ours, [["-exist", "del", SET, a] for a in half])
            assert record(ours) == before
            assert exact_round(real, ours) == {a: 3 for a in half}
            rest = SOURCES[1::2]
            real_set(real, "".join(f"ipset -exist del {SET} {a}\n" for a in rest))
            our_set(ours, [["-exist", "del", SET, a] for a in rest])
            assert exact_round(real, ours) == {a: 3 for a in SOURCES}
            assert real.iptables("-S").stdout == ours.run(bpf_command("iptables", "-S")).stdout

            # the rule holds the set: destroy fails as with ipset
            real_d = real.run(["ipset", "destroy", SET])
            ours_d = ours.run([sys.executable, "-m", "bpf_iptables.cli.ipset", "destroy", SET])
            assert (real_d.returncode, real_d.stderr) == (
                ours_d.returncode, ours_d.stderr.replace("bpf-iptables-set", "ipset")) == (
                1, "ipset v7.17: Set cannot be destroyed: it is in use by a kernel component\n")
            refs = [re.search(r"References: (\d+)", r.stdout)[1] for r in (
                real.run(["ipset", "list", SET]),
                ours.run([sys.executable, "-m", "bpf_iptables.cli.ipset", "list", SET]))]
            assert refs == ["1", "1"]
            # actionstop: the rule goes, then the set
            assert real.iptables("-D", *RULE).returncode == 0
            assert ours.run(bpf_command("iptables", "-D", *RULE), env=ON).returncode == 0
            assert real.run(["ipset", "destroy", SET]).returncode == 0
            assert ours.run([sys.executable, "-m", "bpf_iptables.cli.ipset", "destroy",
                             SET]).returncode == 0
        finally:
            ours.run(datapath_command("detach"))


def test_missing_set_is_refused_as_iptables_does():
    with namespace("f2bm") as real, namespace("f2bn") as ours:
        r = real.iptables("-A", *RULE)
        o = ours.run(bpf_command("iptables", "-A", *RULE), env=ON)
        assert r.returncode == o.returncode == 2
        assert o.stderr.replace("bpf-iptables v0.1.0 (bpf)", "iptables v1.8.9 (legacy)") \
            .replace("bpf-iptables", "iptables") == r.stderr
        assert "Set f2b-test doesn't exist." in r.stderr


def test_output_chain_with_a_port_set():
    """OUTPUT (TC egress): hash:ip,port on the destination address and
    port; deleting the element lets the same datagrams out."""
    ensure_bpffs()
    with namespace("setor") as real, namespace("setoo") as ours:
        try:
            for ns in (real, ours):
                assert ns.run(["ip", "link", "set", "lo", "up"]).returncode == 0
                assert ns.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "lo"]).returncode == 0
            rule = ["OUTPUT", "-m", "set", "--match-set", "svc", "dst,dst", "-j", "DROP"]
            real_set(real, "ipset create svc hash:ip,port\nipset add svc 10.9.0.1,udp:9999\n")
            our_set(ours, [["create", "svc", "hash:ip,port"], ["add", "svc", "10.9.0.1,udp:9999"]])
            assert real.iptables("-A", *rule).returncode == 0
            r = ours.run(bpf_command("iptables", "-A", *rule), env=ON)
            assert r.returncode == 0, r.stderr
            assert send(real) == send(ours) == {}
            assert counters(real, False, "OUTPUT") == counters(ours, True, "OUTPUT")
            assert counters(ours, True, "OUTPUT")[1][0] == 3 * len(SOURCES)
            real_set(real, "ipset del svc 10.9.0.1,udp:9999")
            our_set(ours, [["del", "svc", "10.9.0.1,udp:9999"]])
            assert send(real) == send(ours) == {a: 3 for a in SOURCES}
            assert counters(real, False, "OUTPUT") == counters(ours, True, "OUTPUT")
        finally:
            ours.run(datapath_command("detach"))
