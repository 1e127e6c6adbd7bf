"""kube-proxy's filter chains (tests/data/realworld/kube-proxy.rules)
enforced in --mode netfilter, against iptables-legacy.

client 10.99.1.1 -- node (router) 10.99.1.2 / 10.99.2.2 -- pod 10.99.2.1.
The node's nat table (real iptables-legacy on both sides) is kube-proxy's
shape: KUBE-SERVICES from PREROUTING and OUTPUT, the ClusterIP
172.30.0.41:80 DNATed to the pod's 8080 with KUBE-MARK-MASQ's 0x4000 mark
for sources outside the cluster CIDR, and a node port 30080 DNATed to
127.0.0.1:8080 (route_localnet's "localhost node port"). The filter table
is kube-proxy.rules: iptables-legacy on one node, bpf-iptables attached
in netfilter mode on the other. Same outcome (the service with endpoints
reachable through FORWARD's 0x4000 rule, svc6 without endpoints REJECTed
from a client and from the node, KUBE-FIREWALL dropping 127/8 traffic
that was not DNATed and letting the DNATed node port through), same
`-L -v` counters."""
from __future__ import annotations

import difflib
import socket
from contextlib import ExitStack

from tests.support.netns import bpf_command
from tests.support.shared import REPO
from tests.test_datapath_traffic import FAR_IP, datapath_command, ensure_bpffs, inside, routed

RULES = (REPO / "tests" / "data" / "realworld" / "kube-proxy.rules").read_text()
NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SEP-LOCAL - [0:0]
:KUBE-SEP-POD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -d 10.99.1.2/32 -p tcp -m tcp --dport 30080 -j KUBE-SEP-LOCAL
-A KUBE-SVC-WEB ! -s 10.244.0.0/16 -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -j KUBE-SEP-POD
-A KUBE-SEP-POD -p tcp -m tcp -j DNAT --to-destination 10.99.2.1:8080
-A KUBE-SEP-LOCAL -p tcp -m tcp -j DNAT --to-destination 127.0.0.1:8080
COMMIT
"""
LISTING = ("-L", "-v", "-x", "-n")


def connect(ns, ip: str, port: int, bind: str | None = None) -> str:
    """One TCP connect from ``ns``: ok, refused, or the error's name."""
    with inside(ns):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with c:
        # well under TCP's first SYN retransmission (1 s): a dropped SYN is
        # sent once on both nodes. At 1.0 s the retransmission raced the
        # timeout, and under load one node counted it and the other not
        c.settimeout(0.5)
        if bind:
            c.bind((bind, 0))
        try:
            c.connect((ip, port))
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return type(exc).__name__


def traffic(t) -> dict[str, str]:
    with ExitStack() as stack:
        for ns, addr in ((t.server, FAR_IP), (t.router, "127.0.0.1")):
            with inside(ns):
                listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((addr, 8080))
            listener.listen(16)
        return {
            "service": connect(t.client, "172.30.0.41", 80),          # DNAT + 0x4000: FORWARD
            "no_endpoints": connect(t.client, "172.30.0.46", 80),     # FORWARD: REJECT
            "pod_direct": connect(t.client, FAR_IP, 8080),
            "node_no_endpoints": connect(t.router, "172.30.0.46", 80),  # OUTPUT: REJECT
            "martian": connect(t.router, "127.0.0.1", 8080, bind="10.99.1.2"),  # KUBE-FIREWALL
            "localhost_nodeport": connect(t.router, "10.99.1.2", 30080),  # DNATed: allowed
        }


def setup(t, filter_cmd: list[str]) -> None:
    t.router.run(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])
    assert t.router.run(["ip", "route", "add", "172.30.0.0/16", "via", FAR_IP]).returncode == 0
    r = t.router.run(["iptables-legacy-restore"], input=NAT)
    assert r.returncode == 0, r.stderr
    r = t.router.run(filter_cmd, input=RULES)
    assert r.returncode == 0, r.stderr


def test_kube_proxy_chains_as_iptables_legacy():
    ensure_bpffs()
    with routed("nfkl") as legacy, routed("nfkb") as ours:
        setup(legacy, ["iptables-legacy-restore"])
        setup(ours, bpf_command("iptables-restore"))
        r = ours.router.run(datapath_command("attach", "--mode", "netfilter"))
        assert r.returncode == 0, r.stderr
        want = traffic(legacy)
        assert want == {"service": "ok", "no_endpoints": "refused", "pod_direct": "ok",
                        "node_no_endpoints": "refused", "martian": "TimeoutError",
                        "localhost_nodeport": "ok"}, want
        assert traffic(ours) == want
        listing = legacy.router.iptables(*LISTING).stdout
        got = ours.router.bpf_iptables(*LISTING).stdout
        assert got == listing, "\n".join(difflib.unified_diff(listing.splitlines(),
                                                               got.splitlines(), lineterm=""))
        # the paths the outcome says were taken, by their rules' counters
        save = legacy.router.run(["iptables-legacy-save", "-c"]).stdout
        for rule in ('"kubernetes forwarding rules" -m mark', "forwarding conntrack rule",
                     "has no endpoints", "block incoming localnet connections"):
            line = next(l for l in save.splitlines() if rule in l)
            assert not line.startswith("[0:"), line
