"""Bridges in the data path (bpf_iptables/datapath/bridges.py): the bridge
carries the root programs, its ports none, so ``-i br0`` matches what the
bridge passes up to IP (as in netfilter), frames bridged between two ports
are not classified (netfilter's FORWARD does not see them without
br_netfilter), a port enslaved or released after attach is followed by the
watcher, and br_netfilter with FORWARD rules is refused (exit 2).

Topology: host namespace with bridge br0 (10.97.0.1/24), two "container"
namespaces on veths enslaved to it (10.97.0.2, 10.97.0.3), all in one
test (setting up namespaces is what costs)."""
from __future__ import annotations

import re
import socket
import subprocess
import uuid

from tests.support.netns import Namespace, bpf_command
from tests.test_datapath_traffic import Pair, datapath_command, inside, ping, sh
from tests.test_datapath_watch import Watched, in_ns, reaper, wait_for, xdp_id  # noqa: F401

ON = {"BPF_IPTABLES_DATAPATH": "on"}   # conftest keeps namespaces model-only
BRIDGE_IP, C1_IP, C2_IP = "10.97.0.1", "10.97.0.2", "10.97.0.3"

RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i br0 -p icmp
-A INPUT -i p1 -p icmp
-A INPUT -i p2 -p icmp
-A INPUT -i br0 -p tcp -m tcp --dport 9 -j REJECT --reject-with tcp-reset
-A FORWARD -i br0 -o br0
COMMIT
"""


def counts(ns: Namespace, chain: str) -> list[int]:
    out = ns.bpf_iptables("-L", chain, "-v", "-x", "-n").stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


def connect(client: Namespace, server: Namespace, port: int) -> str:
    """A TCP connect client -> the bridge's address, with a listener there."""
    with inside(server):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with inside(client):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener, c:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((BRIDGE_IP, port))
        listener.listen(1)
        c.settimeout(2)
        try:
            c.connect((BRIDGE_IP, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return str(exc)
        return "connected"


def test_bridge_carries_the_roots_ports_do_not():
    tag = uuid.uuid4().hex[:8]
    host, c1, c2 = (f"brg{r}-{tag}" for r in "hab")
    made: list[str] = []
    try:
        for n in (host, c1, c2):
            sh("ip", "netns", "add", n)
            made.append(n)
        for n in (host, c1, c2):
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", host, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        sh("ip", "-n", host, "link", "set", "br0", "up")
        for port, ns, ip in (("p1", c1, C1_IP), ("p2", c2, C2_IP)):
            sh("ip", "link", "add", port, "netns", host, "type", "veth", "peer", "name", "e0",
               "netns", ns)
            sh("ip", "-n", host, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "e0")
            sh("ip", "-n", ns, "link", "set", "e0", "up")
        H, C1, C2 = Namespace(host), Namespace(c1), Namespace(c2)

        # br_netfilter on (the namespace's default here): FORWARD rules refused
        # at XDP/TC (an unattached namespace would attach them in --mode
        # netfilter instead, where bridged frames pass FORWARD:
        # test_nfmode_bridge), so attach generic XDP first
        assert H.run(["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]).stdout.strip() == "1"
        r = H.run(datapath_command("attach", "--mode", "xdpgeneric"))
        assert r.returncode == 0, r.stderr
        r = H.run(bpf_command("iptables-restore"), input=RULES, env=ON)
        assert r.returncode == 2 and "bridge-nf-call-iptables" in r.stderr, r.stderr
        assert "-A" not in H.run(bpf_command("iptables-save")).stdout
        # INPUT only: nothing bridged escapes it, accepted
        r = H.run(bpf_command("iptables", "-A", "INPUT", "-i", "br0", "-j", "DROP"), env=ON)
        assert r.returncode == 0, r.stderr
        assert ping(Pair(C1, H), 1, BRIDGE_IP) == 0
        assert H.bpf_iptables("-F").returncode == 0
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")

        r = H.run(bpf_command("iptables-restore"), input=RULES, env=ON)
        assert r.returncode == 0, r.stderr
        w = Watched(in_ns(host))
        assert w.pid() is not None
        rec = w.record()
        assert rec is not None and set(rec["interfaces"]) == {"lo", "br0"}
        root = rec["roots"]["xdp_root"]
        assert xdp_id(host, "br0") == root and xdp_id(host, "p1") == xdp_id(host, "p2") == 0
        r = w.datapath("status")
        assert r.returncode == 0, r.stdout
        assert "p1 port of bridge br0: no roots" in r.stdout

        # to the bridge's address: INPUT with -i br0, never the port
        assert ping(Pair(C1, H), 2, BRIDGE_IP) == 2
        assert ping(Pair(C2, H), 1, BRIDGE_IP) == 1
        assert counts(H, "INPUT") == [3, 0, 0, 0]
        # REJECT's reply goes back out of the bridge (XDP_TX / redirect to
        # it), which delivers it to the port the frame came in on
        assert connect(C1, H, 9) == "refused"
        assert connect(C1, H, 10) == "connected"
        assert counts(H, "INPUT") == [3, 0, 0, 1]
        # container to container: bridged at layer 2, FORWARD (policy DROP) never sees it
        assert ping(Pair(C1, C2), 2, C2_IP) == 2
        assert counts(H, "FORWARD") == [0]
        assert "policy DROP 0 packets" in H.bpf_iptables("-L", "FORWARD", "-v", "-n").stdout

        # released: p2 gets the roots, and pings from c2 now arrive on p2
        sh("ip", "-n", host, "link", "set", "p2", "nomaster")
        sh("ip", "-n", host, "addr", "add", "10.96.0.1/24", "dev", "p2")
        sh("ip", "-n", c2, "addr", "add", "10.96.0.2/24", "dev", "e0")
        wait_for("p2 attached", lambda: "p2" in (w.record() or {}).get("interfaces", {})
                 and xdp_id(host, "p2") == root)
        assert ping(Pair(C2, H), 2, "10.96.0.1") == 2
        assert counts(H, "INPUT") == [3, 0, 2, 1]
        # enslaved again: its roots are taken off
        sh("ip", "-n", host, "addr", "flush", "dev", "p2")
        sh("ip", "-n", host, "link", "set", "p2", "master", "br0")
        wait_for("p2 detached", lambda: "p2" not in (w.record() or {}).get("interfaces", {})
                 and xdp_id(host, "p2") == 0)
        assert ping(Pair(C2, H), 1, BRIDGE_IP) == 1
        assert counts(H, "INPUT") == [4, 0, 2, 1]
        assert w.datapath("status").returncode == 0
        # --mode xdp: a bridge has no native XDP, the generic fallback covers it
        r = w.datapath("attach", "--mode", "xdp")
        assert r.returncode == 0, r.stderr
        r = w.datapath("status")
        assert r.returncode == 0 and re.search(r"br0 ifindex \d+ xdpgeneric ok", r.stdout), r.stdout
        root = w.record()["roots"]["xdp_root"]
        assert ping(Pair(C1, H), 1, BRIDGE_IP) == 1
        assert counts(H, "INPUT") == [5, 0, 2, 1]

        # br_netfilter switched on later: a command is refused, but the
        # watcher still covers a new bridge (and says why it went on)
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        r = H.bpf_iptables("-A", "FORWARD", "-i", "br0", "-j", "ACCEPT")
        assert r.returncode == 2 and "br_netfilter" in r.stderr, r.stderr
        sh("ip", "-n", host, "link", "add", "br1", "type", "bridge")
        wait_for("br1 attached", lambda: "br1" in (w.record() or {}).get("interfaces", {})
                 and xdp_id(host, "br1") == root)
        assert "frames bridged between ports are not filtered" in (w.dir / "watch.log").read_text()
        assert counts(H, "FORWARD") == [0]
    finally:
        if host in made:
            in_ns(host)(datapath_command("detach"))
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)
