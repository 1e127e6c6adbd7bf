"""--mode netfilter on real traffic, against iptables-legacy.

The same rule sets and traffic as tests/test_datapath_traffic.py: INPUT
and OUTPUT on a client -- server pair, FORWARD (with -i, a user chain
reached from FORWARD and OUTPUT) through a router, then an update of the
attached router (-o, -m ttl after the router's decrement) and a detach.
Same delivered/dropped packets, same `-L -v` counters."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def legacy_and_ours(prefix: str, rules: str) -> Iterator[tuple[Pair, Pair, str]]:
    """Two topologies with ``rules`` restored in the server namespace: by
    iptables-legacy in one, by bpf-iptables attached in netfilter mode in
    the other; and that one's status."""
    ensure_bpffs()
    with topology(f"{prefix}l") as legacy, topology(f"{prefix}b") as ours:
        assert legacy.server.run(["iptables-legacy-restore"], input=rules).returncode == 0
        r = ours.server.run(bpf_command("iptables-restore"), input=rules)
        assert r.returncode == 0, r.stderr
        yield legacy, ours, attach(ours.server)


def test_input_output_as_iptables_legacy():
    with legacy_and_ours("nf", RULES) as (legacy, ours, status):
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

        # REJECT in FORWARD (the hand-off at the router's FORWARD hook)
        for t, cmd in ((legacy, ["iptables-legacy-restore"]), (ours, bpf_command("iptables-restore"))):
            r = t.router.run(cmd, input=FORWARD_REJECT)
            assert r.returncode == 0, r.stderr

        def rejected(t) -> dict[str, str]:
            p = Pair(t.client, t.server)
            return {"tcp8081": tcp_connect(p, 8081, FAR_IP),
                    "udp5003": udp_error(t.client, FAR_IP, 5003)}

        want = rejected(legacy)
        assert want == {"tcp8081": "refused", "udp5003": "111"}   # ECONNREFUSED
        assert rejected(ours) == want
        assert ours.router.bpf_iptables(*LISTING).stdout == legacy.router.iptables(*LISTING).stdout

        r = ours.router.run(datapath_command("detach"))
        assert r.returncode == 0 and "detached" in r.stdout, r.stderr
        assert "not attached" in ours.router.run(datapath_command("status")).stdout
        # the links are gone: what FORWARD dropped passes
        assert udp(Pair(ours.client, ours.server), 5002, 2, far=FAR_IP) == 2


FORWARD_REJECT = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --dport 8081 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp -m udp --dport 5003 -j REJECT
-A OUTPUT -p icmp
-A OUTPUT -p tcp
COMMIT
"""


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
                     "-A INPUT -p tcp -m hashlimit --hashlimit-upto 1/s --hashlimit-name x"):
            r = ns.bpf_iptables(*rule.split())
            assert r.returncode == 2, (rule, r.stdout, r.stderr)
            assert "netfilter" in r.stderr
        assert ns.bpf_iptables("-S", "INPUT").stdout.count("-A INPUT") == 1
        assert udp(pair, 5001, 1) == 0   # the attached rule set still filters


REJECT_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 81 -j REJECT --reject-with tcp-reset
-A INPUT -p udp -m udp --dport 5001 -j REJECT
-A INPUT -p udp -m udp --dport 5002 -j REJECT --reject-with icmp-admin-prohibited
-A OUTPUT -p udp -m udp --dport 6000 -j REJECT --reject-with icmp-net-prohibited
COMMIT
"""


def tcp_connect(pair, port: int, dst: str = "10.99.0.2") -> str:
    """One connect client -> dst:port: ok, refused or the error's name."""
    import socket
    from tests.test_datapath_traffic import inside

    with inside(pair.client):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with c:
        # well under TCP's first SYN retransmission (1 s): a dropped SYN is
        # sent, and counted, once on either system (at 1.0 s the
        # retransmission raced the timeout)
        c.settimeout(0.5)
        try:
            c.connect((dst, port))
            return "ok"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return type(exc).__name__


def udp_error(src, dst_ip: str, port: int) -> str:
    """A connected UDP socket in ``src`` sends to dst_ip:port: the error
    its next receive reports (the ICMP error the peer sent), or none."""
    import socket
    from tests.test_datapath_traffic import inside

    with inside(src):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(1.0)
        s.connect((dst_ip, port))
        try:
            s.send(b"x")
        except OSError as exc:
            return f"send {exc.errno}"
        try:
            s.recv(16)
            return "reply"
        except socket.timeout:
            return "none"
        except OSError as exc:
            return str(exc.errno)


def reject_traffic(pair) -> dict[str, str]:
    from tests.test_datapath_traffic import CLIENT_IP, SERVER_IP

    out = {"tcp81": tcp_connect(pair, 81), "udp5001": udp_error(pair.client, SERVER_IP, 5001),
           "udp5002": udp_error(pair.client, SERVER_IP, 5002),
           "out6000": udp_error(pair.server, CLIENT_IP, 6000),
           "udp5003": udp_error(pair.client, SERVER_IP, 5003)}
    return out


def test_reject_as_iptables_legacy():
    """REJECT at INPUT and OUTPUT through the hand-off: the client sees the
    reset / ICMP error iptables sends, counters as iptables'."""
    with legacy_and_ours("nfj", REJECT_RULES) as (legacy, ours, _):
        want = reject_traffic(legacy)
        assert want["tcp81"] == "refused" and want["udp5001"] == "111", want
        assert reject_traffic(ours) == want
        assert (ours.server.bpf_iptables(*LISTING).stdout
                == legacy.server.iptables(*LISTING).stdout)
        # the rule set without REJECT: the hand-off goes
        assert ours.server.bpf_iptables("-F").returncode == 0
        assert ours.server.run(["iptables-legacy", "-S"]).stdout.count("-A") == 0


PKTTYPE_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m pkttype --pkt-type broadcast -m udp --dport 5001 -j DROP
-A INPUT -p udp -m pkttype --pkt-type host -m udp --dport 5002 -j DROP
-A INPUT -p udp -m pkttype ! --pkt-type unicast
COMMIT
"""


def sent_to(pair, dst_ip: str, port: int, count: int) -> int:
    """Datagrams client -> dst_ip:port (broadcast allowed), received by a
    server socket bound to the port on any address."""
    import socket
    from tests.test_datapath_traffic import received, sockets_in

    with sockets_in(pair.server, pair.client) as (rx, tx):
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        rx.bind(("0.0.0.0", port))
        for i in range(count):
            tx.sendto(b"d %d" % i, (dst_ip, port))
        return received(rx)


def test_pkttype_from_the_skb_as_iptables_legacy():
    """-m pkttype reads skb->pkt_type (the made-up Ethernet header of the
    header window has no destination MAC): broadcast and unicast frames."""
    with legacy_and_ours("nfp", PKTTYPE_RULES) as (legacy, ours, _):

        def run(t) -> dict[str, int]:
            return {"bcast5001": sent_to(t, "10.99.0.255", 5001, 2),
                    "ucast5001": sent_to(t, "10.99.0.2", 5001, 2),
                    "bcast5002": sent_to(t, "10.99.0.255", 5002, 3),
                    "ucast5002": sent_to(t, "10.99.0.2", 5002, 1)}

        want = run(legacy)
        assert want == {"bcast5001": 0, "ucast5001": 2, "bcast5002": 3, "ucast5002": 0}
        assert run(ours) == want
        assert ours.server.bpf_iptables(*LISTING).stdout == legacy.server.iptables(*LISTING).stdout
