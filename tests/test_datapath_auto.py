"""Enforcement by default: the first change that gives the filter table
something to do attaches the data path (datapath/auto.py).

The test suite runs with BPF_IPTABLES_DATAPATH=off (tests/conftest.py);
these tests turn it back on, as a user's shell has it."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.support.netns import bpf_command
from tests.test_datapath_traffic import datapath_command, ensure_bpffs, topology, udp

ON = {"BPF_IPTABLES_DATAPATH": "on"}


@pytest.fixture(scope="module", autouse=True)
def bpffs():
    ensure_bpffs()


def ours(ns, *args: str, input: str | None = None, env=ON):
    return ns.run(bpf_command("iptables", *args), input=input, env=env)


def attached(ns) -> bool:
    r = ns.run([sys.executable, "-c",
                "from bpf_iptables import state; print(state.namespace_dir())"])
    path = os.path.join(r.stdout.strip(), "datapath.json")
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        return bool(json.load(fh))


def test_first_rule_attaches_and_is_enforced_when_the_command_returns():
    with topology("dau") as t:
        s = t.server
        r = ours(s, "-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP")
        assert r.returncode == 0, r.stderr
        assert attached(s)
        st = s.run(datapath_command("status"))
        assert st.returncode == 0, st.stdout + st.stderr
        assert "interface watcher pid" in st.stdout
        assert udp(t, 5001, 3) == 0          # dropped from the moment -A returned
        assert udp(t, 5002, 2) == 2
        rules = ours(s, "-S", "INPUT", "-v").stdout
        assert "--dport 5001 -c 3 " in rules, rules
        # a later change is a plain update of the attached data path
        assert ours(s, "-D", "INPUT", "1").returncode == 0
        assert udp(t, 5001, 2) == 2


def test_restore_attaches_too():
    with topology("dar") as t:
        s = t.server
        rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 5003 -j DROP\nCOMMIT\n"
        r = s.run(bpf_command("iptables-restore"), input=rules, env=ON)
        assert r.returncode == 0, r.stderr
        assert attached(s)
        assert udp(t, 5003, 2) == 0


def test_a_rule_set_with_nothing_to_enforce_does_not_attach():
    with topology("dan") as t:
        s = t.server
        for args in (("-N", "spare"), ("-A", "spare", "-j", "DROP"), ("-P", "INPUT", "ACCEPT"),
                     ("-F", "INPUT"), ("-Z",)):
            r = ours(s, *args)
            assert r.returncode == 0, (args, r.stderr)
        assert not attached(s)
        assert ours(s, "-S", "spare").stdout == "-N spare\n-A spare -j DROP\n"


def test_what_the_data_path_cannot_enforce_is_refused_and_changes_nothing():
    with topology("daf") as t:
        s = t.server
        r = ours(s, "-A", "INPUT", "-m", "limit", "--limit", "1/s", "-m", "length", "--length", "1:2",
                 "-j", "ACCEPT")   # limit before another match: refused
        assert r.returncode == 2, r.stderr
        assert "not supported" in r.stderr or "eBPF" in r.stderr, r.stderr
        assert not attached(s)
        assert ours(s, "-S", "INPUT").stdout == "-P INPUT ACCEPT\n"
        # model-only (BPF_IPTABLES_DATAPATH=off) stores what the front end knows
        off = ours(s, "-A", "INPUT", "-m", "limit", "--limit", "1/s", "-j", "ACCEPT",
                   env={"BPF_IPTABLES_DATAPATH": "off"})
        assert off.returncode == 0, off.stderr
        assert not attached(s)


def test_what_only_netfilter_hooks_enforce_attaches_there():
    """--ctstate DNAT needs the nat table's view (kube-proxy's KUBE-FIREWALL):
    generic XDP refuses it, so the first change attaches --mode netfilter;
    a rule set that mode refuses too (LOG) gets generic XDP's refusal."""
    both = ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate DNAT -j ACCEPT\n"
            "-A INPUT -p udp --dport 5004 -j LOG\nCOMMIT\n")
    nat_only = ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate DNAT -j ACCEPT\n"
                "-A INPUT -p udp --dport 5004 -j DROP\nCOMMIT\n")
    with topology("dak") as t:
        s = t.server
        r = s.run(bpf_command("iptables-restore"), input=both, env=ON)
        assert r.returncode == 2, r.stderr
        assert "--mode netfilter" in r.stderr, r.stderr
        assert not attached(s)
        r = s.run(bpf_command("iptables-restore"), input=nat_only, env=ON)
        assert r.returncode == 0, r.stderr
        st = s.run(datapath_command("status"))
        assert st.returncode == 0, st.stdout + st.stderr
        assert "attached mode netfilter" in st.stdout, st.stdout
        assert udp(t, 5004, 2) == 0
        assert udp(t, 5005, 2) == 2
        # the DROP rule counted both datagrams (the netfilter hook's counters)
        assert ours(s, "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()[3].split()[0] == "2"
