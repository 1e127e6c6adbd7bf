"""--mode netfilter on real traffic, against iptables-legacy.

The same rule sets and traffic as tests/test_datapath_traffic.py: INPUT
and OUTPUT on a client -- server pair, FORWARD (with -i, a user chain
reached from FORWARD and OUTPUT) through a router, then an update of the
attached router (-o, -m ttl after the router's decrement) and a detach.
Same delivered/dropped packets, same `-L -v` counters."""
from __future__ import annotations

from tests.support.netns import bpf_command
from tests.test_datapath_traffic import (OIF_TTL_RULES, ROUTER_RULES, RULES, FAR_IP, Pair,
                                         datapath_command, ensure_bpffs, routed,
                                         routed_traffic, topology, traffic, udp, ping,
                                         without_output)

LISTING = ("-L", "-v", "-x", "-n")


def attach(ns) -> str:
    r = ns.run(datapath_command("attach", "--mode", "netfilter"))
    assert r.returncode == 0, r.stderr
    assert "netfilter hooks" in r.stdout
    status = ns.run(datapath_command("status"))
    assert status.returncode == 0, status.stdout
    return status.stdout


def test_input_output_as_iptables_legacy():
    ensure_bpffs()
    with topology("nfl") as legacy, topology("nfb") as ours:
        assert legacy.server.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        r = ours.server.run(bpf_command("iptables-restore"), input=RULES)
        assert r.returncode == 0, r.stderr
        status = attach(ours.server)
        assert "INPUT program" in status and "OUTPUT program" in status
        assert status.count(": ok") == 3, status   # the three hooks' links
        want = traffic(legacy)
        assert want == {"icmp": 3, "udp5001": 0, "udp5002": 5, "udp5003": 0,
                        "tcp8080": 2, "tcp8081": 0, "out6000": 0, "out5001": 0, "out6001": 4}
        assert traffic(ours) == want
        listing = legacy.server.iptables(*LISTING).stdout
        assert ours.server.bpf_iptables(*LISTING).stdout == listing
        assert legacy.server.iptables("-Z").returncode == 0
        assert ours.server.bpf_iptables("-Z").returncode == 0
        assert ping(legacy, 1) == ping(ours, 1) == 1
        assert ours.server.bpf_iptables(*LISTING).stdout == legacy.server.iptables(*LISTING).stdout


def test_forward_update_detach_as_iptables_legacy():
    ensure_bpffs()
    with routed("nfrl") as legacy, routed("nfrb") as ours:
        assert legacy.router.run(["iptables-legacy-restore"], input=ROUTER_RULES).returncode == 0
        r = ours.router.run(bpf_command("iptables-restore"), input=ROUTER_RULES)
        assert r.returncode == 0, r.stderr
        assert "FORWARD program" in attach(ours.router)
        want = routed_traffic(legacy)
        assert want["udp5001"] == 0 and want["udp5002"] == 4 and want["own5007"] == 0
        assert routed_traffic(ours) == want
        assert ours.router.bpf_iptables(*LISTING).stdout == legacy.router.iptables(*LISTING).stdout

        # an update of the attached namespace: the other generation, one switch
        for t, cmd in ((legacy, ["iptables-legacy-restore"]), (ours, bpf_command("iptables-restore"))):
            r = t.router.run(cmd, input=OIF_TTL_RULES)
            assert r.returncode == 0, r.stderr

        def run(t) -> dict[str, int]:
            p = Pair(t.client, t.server)
            return {"udp5001": udp(p, 5001, 3, far=FAR_IP), "udp5002": udp(p, 5002, 2, far=FAR_IP),
                    "icmp": ping(p, 2, FAR_IP)}

        want = run(legacy)
        assert want == {"udp5001": 3, "udp5002": 0, "icmp": 2}
        assert run(ours) == want
        assert (without_output(ours.router.bpf_iptables(*LISTING).stdout)
                == without_output(legacy.router.iptables(*LISTING).stdout))
        assert ours.router.run(datapath_command("status")).returncode == 0

        r = ours.router.run(datapath_command("detach"))
        assert r.returncode == 0 and "detached" in r.stdout, r.stderr
        assert "not attached" in ours.router.run(datapath_command("status")).stdout
        # the links are gone: what FORWARD dropped passes
        assert udp(Pair(ours.client, ours.server), 5002, 2, far=FAR_IP) == 2


def test_refused_in_netfilter_mode():
    """What the netfilter build cannot enforce yet is refused (exit 2) by
    an update of an attached namespace, which keeps filtering as before."""
    ensure_bpffs()
    with topology("nfx") as pair:
        ns = pair.server
        assert ns.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001",
                               "-j", "DROP").returncode == 0
        attach(ns)
        for rule in ("-A INPUT -j LOG", "-A INPUT -m mac --mac-source 0a:00:00:00:00:01",
                     "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
                     "-A INPUT -m conntrack --ctstate NEW"):
            r = ns.bpf_iptables(*rule.split())
            assert r.returncode == 2, (rule, r.stdout, r.stderr)
            assert "netfilter" in r.stderr
        assert ns.bpf_iptables("-S", "INPUT").stdout.count("-A INPUT") == 1
        assert udp(pair, 5001, 1) == 0   # the attached rule set still filters
