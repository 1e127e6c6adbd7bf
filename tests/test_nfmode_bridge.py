"""--mode netfilter with br_netfilter: frames bridged between two ports
pass the FORWARD hook (bridge-nf-call-iptables = 1), with the bridge as
in and out device, and are classified there as iptables' FORWARD does
(the XDP/TC modes refuse such a namespace: they cannot see them).
Against iptables-legacy: same delivered datagrams, same `-L -v`."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from tests.support.netns import Namespace, bpf_command, namespace
from tests.test_datapath_traffic import datagrams, datapath_command, ensure_bpffs

RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i br0 -o br0 -p udp -m udp --dport 5001 -j DROP
-A FORWARD -s 10.97.0.1/32 -p udp -m udp --dport 5002 -j ACCEPT
-A FORWARD ! -i br0 -p udp -j DROP
-A FORWARD -p udp
COMMIT
"""
LISTING = ("-L", "-v", "-x", "-n")


@contextmanager
def bridged(prefix: str) -> Iterator[tuple[Namespace, Namespace, Namespace]]:
    """host with br0 and ports pa, pb; namespaces a (10.97.0.1), b (10.97.0.2)."""
    with ExitStack() as stack:
        host, a, b = (stack.enter_context(namespace(prefix + x)) for x in "hab")
        stack.callback(host.run, datapath_command("detach"))   # before the namespace goes
        host.run(["ip", "link", "add", "br0", "type", "bridge"])
        for ns, port, addr in ((a, "pa", "10.97.0.1"), (b, "pb", "10.97.0.2")):
            host.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                      "netns", ns.name])
            host.run(["ip", "link", "set", port, "master", "br0"])
            host.run(["ip", "link", "set", port, "up"])
            ns.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
            ns.run(["ip", "link", "set", "eth0", "up"])
        host.run(["ip", "link", "set", "br0", "up"])
        host.run(["sh", "-c", "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"])
        yield host, a, b


def traffic(a: Namespace, b: Namespace) -> dict[str, int]:
    return {f"udp{port}": datagrams(a, b, "10.97.0.2", port, count, b"d %d")
            for port, count in ((5001, 3), (5002, 2), (5003, 1))}


def test_bridged_frames_as_iptables_legacy():
    ensure_bpffs()
    with bridged("nfbl") as (lhost, la, lb), bridged("nfbb") as (host, a, b):
        assert lhost.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        r = host.run(bpf_command("iptables-restore"), input=RULES)
        assert r.returncode == 0, r.stderr
        r = host.run(datapath_command("attach", "--mode", "netfilter"))
        assert r.returncode == 0, r.stderr
        want = traffic(la, lb)
        assert want == {"udp5001": 0, "udp5002": 2, "udp5003": 1}
        assert traffic(a, b) == want
        # INPUT and FORWARD (the bridged frames' chain) counted alike; OUTPUT,
        # which has no rules, only sees the host's own chatter (an IGMP
        # report whose timing varies: a clean-clone CI run saw one 40-byte
        # packet on one side only)
        for chain in ("INPUT", "FORWARD"):
            assert host.bpf_iptables("-L", chain, *LISTING[1:]).stdout == \
                lhost.iptables("-L", chain, *LISTING[1:]).stdout
