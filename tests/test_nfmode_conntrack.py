"""--mode netfilter: conntrack and mark from the kernel, against iptables-legacy.

The server's nat table (real iptables-legacy on both sides) marks tcp/80
with 0x4000 and DNATs it to 8080, and DNATs udp/53 to 5353; the filter
table (iptables-legacy vs bpf-iptables attached in netfilter mode) lets
in what came through the DNAT (--ctstate DNAT, --ctorigdstport, the
mark) and drops direct connections to the translated ports. Same
outcome, same `-L -v` counters."""
from __future__ import annotations

import socket
import time

from tests.support.netns import bpf_command
from tests.test_datapath_traffic import (SERVER_IP, Pair,
                                         datapath_command, ensure_bpffs, inside, ping,
                                         received, tcp, topology)

NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x4000/0x4000
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.99.0.2:8080
-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.99.0.2:5353
COMMIT
"""
FILTER = """\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m conntrack --ctstate DNAT --ctorigdstport 80 --ctrepldst 10.99.0.1 -m mark --mark 0x4000/0x4000 -j ACCEPT
-A INPUT -p tcp -m mark ! --mark 0x4000/0x4000 -m tcp --dport 8080 -j DROP
-A INPUT -p udp -m conntrack --ctstate DNAT --ctorigdst 10.99.0.2 --ctexpire 0:100 -j ACCEPT
-A INPUT -p udp -m state --state NEW -m udp --dport 5353 -j DROP
-A INPUT -p icmp -m conntrack --ctstate NEW --ctdir ORIGINAL ! --ctstatus SEEN_REPLY,ASSURED -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m conntrack --ctstate DNAT
COMMIT
"""


def tcp_via(pair: Pair, port: int, listen: int, count: int) -> int:
    """TCP connects client -> server:port, accepted on ``listen``."""
    return tcp(pair, port, count, listen=listen)


def udp_via(pair: Pair, port: int, listen: int, count: int) -> int:
    with inside(pair.server):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(pair.client):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((SERVER_IP, listen))
        for i in range(count):
            tx.sendto(b"datagram %d" % i, (SERVER_IP, port))
        return received(rx)


def traffic(pair: Pair) -> dict[str, int]:
    out = {"tcp80": tcp_via(pair, 80, 8080, 2), "tcp8080": tcp_via(pair, 8080, 8080, 1),
           "udp53": udp_via(pair, 53, 5353, 3), "udp5353": udp_via(pair, 5353, 5353, 2),
           "icmp": ping(pair, 2)}
    time.sleep(0.1)
    return out


def test_dnat_ctstate_and_mark_as_iptables_legacy():
    ensure_bpffs()
    with topology("nfcl") as legacy, topology("nfcb") as ours:
        for ns in (legacy.server, ours.server):
            r = ns.run(["iptables-legacy-restore"], input=NAT)
            assert r.returncode == 0, r.stderr
        assert legacy.server.run(["iptables-legacy-restore"], input=FILTER).returncode == 0
        r = ours.server.run(bpf_command("iptables-restore"), input=FILTER)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach", "--mode", "netfilter"))
        assert r.returncode == 0, r.stderr
        want = traffic(legacy)
        assert want == {"tcp80": 2, "tcp8080": 0, "udp53": 3, "udp5353": 0, "icmp": 2}
        assert traffic(ours) == want
        listing = legacy.server.iptables("-L", "-v", "-x", "-n").stdout
        assert ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout == listing


def test_dnat_state_refused_outside_netfilter_mode():
    """XDP/TC see packets before NAT: --ctstate DNAT stays refused there."""
    ensure_bpffs()
    with topology("nfcx") as pair:
        r = pair.server.run(bpf_command("iptables-restore"), input=FILTER)
        assert r.returncode == 0
        r = pair.server.run(datapath_command("attach"))
        assert r.returncode == 2 and "--mode netfilter" in r.stderr, r.stderr
