"""Attaching the data path to a namespace, updating it, its counters, detaching.

Every test builds its own client/server namespaces (tests/test_datapath_traffic
.topology) and enforces in the server namespace only."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.netns import REPO, bpf_command, namespace
from tests.test_datapath_traffic import (datapath_command, ensure_bpffs, ping, topology,
                                         udp)

PY_ENV = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}


@pytest.fixture(scope="module", autouse=True)
def bpffs():
    ensure_bpffs()


def state_dir(ns) -> str:
    """The server namespace's state directory (its cookie, read inside it)."""
    r = ns.run([sys.executable, "-c",
                "from bpf_iptables import state; print(state.namespace_dir())"])
    return r.stdout.strip()


def record(ns) -> dict | None:
    path = os.path.join(state_dir(ns), "datapath.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def xdp_prog_ids(ns) -> dict[str, int]:
    out = subprocess.run(["ip", "-n", ns.name, "-j", "-d", "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    ids = {}
    for link in json.loads(out):
        prog = (link.get("xdp") or {}).get("prog") or {}
        ids[link["ifname"]] = int(prog.get("id", 0))
    return ids


def nsenter(ns, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """The other way in: the host's mounts (so /sys/fs/bpf is the host's)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns.name}", *argv], input=input,
                          capture_output=True, text=True, env=PY_ENV)


def test_attach_status_detach():
    with topology("dpa") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "7", "-j", "DROP").returncode == 0
        r = s.run(datapath_command("status"))
        assert (r.returncode, r.stdout) == (0, "not attached\n")
        r = s.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        rec = record(s)
        assert rec is not None and rec["mode"] == "xdpgeneric"
        ids = xdp_prog_ids(s)
        assert ids["s0"] == ids["lo"] == rec["prog_id"] != 0
        pins = f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}/gen-1"
        assert sorted(os.listdir(pins)) == ["counters", "prog", "self"]
        r = s.run(datapath_command("status"))
        assert r.returncode == 0 and "s0 ifindex" in r.stdout and " ok" in r.stdout
        # the same state seen through nsenter (host mounts, not ip netns exec's)
        r = nsenter(s, datapath_command("status"))
        assert r.returncode == 0 and f"program {rec['prog_id']}" in r.stdout, r.stderr

        r = s.run(datapath_command("detach"))
        assert (r.returncode, r.stdout) == (0, "detached\n")
        assert set(xdp_prog_ids(s).values()) == {0}
        assert not os.path.exists(os.path.dirname(pins))
        assert record(s) is None
        assert s.run(datapath_command("status")).stdout == "not attached\n"
        # the rule set itself is untouched
        assert s.bpf_iptables("-S", "INPUT").stdout == \
            "-P INPUT ACCEPT\n-A INPUT -p udp -m udp --dport 7 -j DROP\n"


def test_changes_take_effect_before_the_command_returns():
    with topology("dpu") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        first = record(s)["prog_id"]
        assert ping(t, 1) == 1
        r = s.bpf_iptables("-I", "INPUT", "-p", "icmp", "-j", "DROP")
        assert r.returncode == 0, r.stderr
        assert ping(t, 2) == 0
        rec = record(s)
        assert rec["generation"] == 2 and rec["prog_id"] != first
        assert set(xdp_prog_ids(s).values()) == {rec["prog_id"]}
        # the old generation's pins are gone, the new one's are there
        base = f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}"
        assert os.listdir(base) == ["gen-2"]
        # -A goes through the data path too (no journal shortcut while attached)
        assert s.bpf_iptables("-D", "INPUT", "1").returncode == 0
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP").returncode == 0
        assert ping(t, 1) == 1
        assert udp(t, 5001, 2) == 0 and udp(t, 5002, 2) == 2
        # restore commits too, and through nsenter as well
        rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 5002 -j DROP\nCOMMIT\n"
        r = nsenter(s, bpf_command("iptables-restore"), input=rules)
        assert r.returncode == 0, r.stderr
        assert udp(t, 5001, 2) == 2 and udp(t, 5002, 2) == 0


@pytest.mark.parametrize("args", [
    ("-A", "FORWARD", "-m", "limit", "--limit", "1/s", "-j", "DROP"),
    ("-A", "OUTPUT", "-j", "REJECT"),
    ("-A", "INPUT", "-p", "tcp", "-j", "REJECT"),
    ("-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"),
])
def test_unenforceable_changes_are_refused_while_attached(args):
    with topology("dpn") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "icmp", "-j", "ACCEPT").returncode == 0
        # accepted while not attached (the front end stores it) ...
        with namespace("dpnx") as other:
            assert other.bpf_iptables(*args).returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        # ... refused, with nothing changed, while attached
        r = s.bpf_iptables(*args)
        assert r.returncode == 2
        assert "is not supported by bpf-iptables" in r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert set(xdp_prog_ids(s).values()) == {before[1]["prog_id"]}
        assert ping(t, 1) == 1


def test_restore_refused_while_attached_changes_nothing():
    with topology("dpr") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        rules = "*filter\n:INPUT DROP [0:0]\n-A FORWARD -m limit --limit 1/s -j DROP\nCOMMIT\n"
        r = s.run(bpf_command("iptables-restore"), input=rules)
        assert r.returncode == 2 and "limit' in the eBPF data path" in r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert ping(t, 1) == 1


def test_attach_refuses_an_unenforceable_rule_set():
    with topology("dpf") as t:
        s = t.server
        assert s.bpf_iptables("-A", "FORWARD", "-m", "limit", "--limit", "1/s",
                              "-j", "DROP").returncode == 0
        r = s.run(datapath_command("attach"))
        assert r.returncode == 2 and "limit' in the eBPF data path" in r.stderr
        assert record(s) is None and set(xdp_prog_ids(s).values()) == {0}
        r = s.run(datapath_command("attach", "--mode", "tc"))
        assert r.returncode == 2


def counters_of(ns) -> str:
    return ns.bpf_iptables("-S", "INPUT", "-v").stdout


def test_counters_follow_rules_through_updates_and_zero():
    with topology("dpc") as t:
        s = t.server
        rules = ("*filter\n:INPUT ACCEPT [10:1000]\n"
                 "[5:500] -A INPUT -p icmp -j ACCEPT\nCOMMIT\n")
        assert s.run(bpf_command("iptables-restore", "-c"), input=rules).returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        # counters set by restore -c are where the data path counts from
        assert counters_of(s) == "-P INPUT ACCEPT -c 10 1000\n-A INPUT -p icmp -c 5 500 -j ACCEPT\n"
        assert ping(t, 2) == 2
        assert udp(t, 5001, 1) == 1
        # ICMP echo of 20 + 8 + 48 bytes; the UDP datagram 20 + 8 + 10
        want_icmp = "-A INPUT -p icmp -c 7 652 -j ACCEPT\n"
        assert counters_of(s) == "-P INPUT ACCEPT -c 11 1038\n" + want_icmp
        # an insert before it: the rule keeps its counters at its new position;
        # the policy counters restart, as iptables-legacy's commit does
        assert s.bpf_iptables("-I", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP").returncode == 0
        assert counters_of(s) == ("-P INPUT ACCEPT -c 0 0\n"
                                  "-A INPUT -p udp -m udp --dport 9 -c 0 0 -j DROP\n" + want_icmp)
        save = s.run(bpf_command("iptables-save", "-c")).stdout
        assert "[7:652] -A INPUT -p icmp -j ACCEPT\n" in save and ":INPUT ACCEPT [0:0]" in save
        listing = s.bpf_iptables("-L", "INPUT", "-v", "-x", "-n").stdout
        assert "       7      652 ACCEPT     1    --  *      *       0.0.0.0/0" in listing
        # -Z zeroes them in the data path
        assert s.bpf_iptables("-Z").returncode == 0
        assert ping(t, 1) == 1
        assert counters_of(s) == ("-P INPUT ACCEPT -c 0 0\n"
                                  "-A INPUT -p udp -m udp --dport 9 -c 0 0 -j DROP\n"
                                  "-A INPUT -p icmp -c 1 76 -j ACCEPT\n")
        # detach leaves the last counts in the stored rule set
        assert s.run(datapath_command("detach")).returncode == 0
        assert "-A INPUT -p icmp -c 1 76 -j ACCEPT\n" in counters_of(s)


def test_unattached_namespace_never_loads_bcc():
    with namespace("dpz") as ns:
        code = ("import sys; from bpf_iptables.cli import iptables; "
                "rc = iptables.run(['-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']); "
                "rc2 = iptables.run(['-L', '-v']); "
                "print(rc, rc2, 'bcc' in sys.modules, 'bpf_iptables.datapath.live' in sys.modules)")
        r = ns.run([sys.executable, "-c", code])
        assert r.stdout.splitlines()[-1] == "0 0 False False", r.stderr


def test_a_program_that_fails_to_load_changes_nothing(tmp_path):
    """bcc failing (here: a source tree whose filter.c does not compile)
    is exit 1, the old program stays attached and the rule set stored."""
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "filter.c").write_text("int xdp_filter(struct xdp_md *ctx) { return oops; }\n")
    with topology("dpe") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "icmp", "-j", "ACCEPT").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        r = s.run(bpf_command("iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP"),
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.returncode == 1 and "cannot load the eBPF program" in r.stderr, r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert set(xdp_prog_ids(s).values()) == {before[1]["prog_id"]}
        assert ping(t, 1) == 1
        r = s.run(bpf_command("iptables-restore"), input="*filter\n-F\nCOMMIT\n",
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.returncode == 1 and (s.bpf_iptables("-S").stdout, record(s)) == before


def test_interfaces_created_later_are_covered_by_the_next_update():
    with topology("dpi") as t:
        s = t.server
        # without the interface watcher (tests/test_datapath_watch.py has it)
        assert s.run(datapath_command("attach", "--no-watch")).returncode == 0
        subprocess.run(["ip", "-n", s.name, "link", "add", "s1", "type", "veth", "peer", "name",
                        "s2"], check=True)
        r = s.run(datapath_command("status"))
        assert r.returncode == 1 and "s1 not attached" in r.stdout
        assert s.bpf_iptables("-A", "INPUT", "-i", "s1", "-j", "DROP").returncode == 0
        r = s.run(datapath_command("status"))
        assert r.returncode == 0, r.stdout
        ids = xdp_prog_ids(s)
        assert ids["s1"] == ids["s2"] == ids["s0"] == record(s)["prog_id"]


def test_output_rules_refused_while_the_namespace_forwards():
    """TC egress also sees forwarded packets: OUTPUT is only enforced
    while the namespace does not forward."""
    with topology("dpo") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        subprocess.run(["ip", "netns", "exec", s.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True)
        r = s.bpf_iptables("-A", "OUTPUT", "-p", "udp", "-j", "DROP")
        assert r.returncode == 2 and "IP forwarding" in r.stderr
        subprocess.run(["ip", "netns", "exec", s.name, "sysctl", "-qw", "net.ipv4.ip_forward=0"],
                       check=True)
        assert s.bpf_iptables("-A", "OUTPUT", "-p", "udp", "-j", "DROP").returncode == 0
        assert record(s)["output_prog_id"] != 0
        tc = subprocess.run(["ip", "netns", "exec", s.name, "tc", "filter", "show", "dev", "s0",
                             "egress"], capture_output=True, text=True).stdout
        assert f"id {record(s)['output_prog_id']} " in tc
        r = s.run(datapath_command("status"))
        assert r.returncode == 0 and "s0 egress ok" in r.stdout, r.stdout
        # back to nothing in OUTPUT: the egress program goes away
        assert s.bpf_iptables("-F", "OUTPUT").returncode == 0
        assert record(s)["output_prog_id"] == 0
        tc = subprocess.run(["ip", "netns", "exec", s.name, "tc", "filter", "show", "dev", "s0",
                             "egress"], capture_output=True, text=True).stdout
        assert tc.strip() == ""
