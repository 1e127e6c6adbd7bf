"""Stateful rule sets with real traffic, against iptables-legacy with conntrack.

The topologies and helpers of test_datapath_traffic: client --veth--
server, and client -- router -- server. The same rule set is enforced by
iptables-legacy (netfilter's tracker) on one copy and by the attached data
path (the eBPF tracker) on the other; the same connections must succeed
and fail, and ``-L -v -x -n`` must show the same counters."""
from __future__ import annotations

import errno
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.acks import differ_only_by_pure_acks
from tests.support.netns import bpf_command
from tests.support.twins import load_twins
from tests.test_datapath_traffic import (CLIENT_IP, FAR_IP, SERVER_IP, Pair, Routed,
                                         datapath_command, ensure_bpffs, inside, ping, routed,
                                         sockets_in, tcp, topology, udp)

SERVER_RULES = """\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -m state --state NEW -j ACCEPT
-A OUTPUT -m conntrack --ctstate NEW
-A OUTPUT -m conntrack --ctstate ESTABLISHED --ctdir REPLY
-A OUTPUT -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL
-A OUTPUT -m state --state RELATED
-A OUTPUT -m conntrack --ctstate INVALID
COMMIT
"""

WAIT = 1.0


def transfer(pair: Pair, port: int, size: int, dst: str = SERVER_IP) -> int:
    """Connect client -> server:port, send ``size`` bytes, echo them back,
    close; the bytes that came back (0: no connection)."""
    with sockets_in(pair.server, pair.client, socket.SOCK_STREAM) as (listener, c):
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((dst, port))
        listener.listen(1)
        listener.settimeout(WAIT)
        c.settimeout(0.8)
        try:
            c.connect((dst, port))
        except OSError:
            return 0
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(WAIT)
            data = bytes(range(256)) * (size // 256)
            c.sendall(data)
            got = b""
            while len(got) < len(data):
                got += conn.recv(65536)
            conn.sendall(got)
            back = b""
            c.settimeout(WAIT)
            while len(back) < len(data):
                chunk = c.recv(65536)
                if not chunk:
                    break
                back += chunk
            c.shutdown(socket.SHUT_WR)
            conn.recv(16)            # the client's FIN
            time.sleep(0.3)          # its ACK leaves on its own (see test_datapath_traffic.tcp)
        time.sleep(0.2)              # the server's FIN, the client's last ACK
        return len(back)


def refused(src, dst_ip: str, port: int, kind: int) -> bool:
    """A connection (TCP) or datagram (UDP, connected socket) from ``src``
    to a closed port: True when the RST / ICMP port unreachable came back
    through the firewall (ECONNREFUSED), False on silence."""
    with inside(src):
        s = socket.socket(socket.AF_INET, kind)
    with s:
        s.settimeout(WAIT)
        try:
            if kind == socket.SOCK_STREAM:
                s.connect((dst_ip, port))
                return False
            s.connect((dst_ip, port))
            s.send(b"anyone?")
            s.recv(64)
            return False
        except ConnectionRefusedError:
            return True
        except (socket.timeout, OSError) as exc:
            if getattr(exc, "errno", None) == errno.ECONNREFUSED:
                return True
            return False


def udp_exchange(pair: Pair, count: int) -> int:
    """The server asks, the client answers (request/reply, server -> client:
    the answers are ESTABLISHED at the server's INPUT); answers received."""
    with inside(pair.server):
        asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(pair.client):
        answerer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = 0
    with asker, answerer:
        answerer.bind((CLIENT_IP, 5353))
        answerer.settimeout(WAIT)
        asker.settimeout(WAIT)
        for i in range(count):
            asker.sendto(b"question %d" % i, (CLIENT_IP, 5353))
            try:
                q, peer = answerer.recvfrom(64)
                answerer.sendto(b"answer", peer)
                asker.recv(64)
                got += 1
            except socket.timeout:
                pass
    return got


def server_traffic(pair: Pair) -> dict[str, int]:
    out = {
        "ping": ping(pair, 3),
        "tcp8080": tcp(pair, 8080, 2),
        "tcp8081": tcp(pair, 8081, 1),          # NEW, not allowed: policy DROP
        "transfer": transfer(pair, 8080, 64 * 1024),
        "udp5002": udp(pair, 5002, 2),          # NEW, not allowed
        "udp_exchange": udp_exchange(pair, 3),  # answers are ESTABLISHED
        # the client's port unreachable for the server's datagram: RELATED
        "icmp_related": int(refused(pair.server, CLIENT_IP, 9, socket.SOCK_DGRAM)),
        # the client's RST for the server's SYN: ESTABLISHED (reply)
        "tcp_rst": int(refused(pair.server, CLIENT_IP, 9, socket.SOCK_STREAM)),
        # the server's RST for the client's SYN to 8080 with no listener
        "rst_to_client": int(refused(pair.client, SERVER_IP, 8080, socket.SOCK_STREAM)),
    }
    time.sleep(0.1)
    return out


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_stateful_server_same_as_iptables_legacy(mode):
    ensure_bpffs()
    with topology("ctl") as legacy, topology("ctb") as ours:
        load_twins(legacy.server, ours.server, SERVER_RULES, "--mode", mode)
        want = server_traffic(legacy)
        got = server_traffic(ours)
        assert want == {"ping": 3, "tcp8080": 2, "tcp8081": 0, "transfer": 64 * 1024,
                        "udp5002": 0, "udp_exchange": 3, "icmp_related": 1, "tcp_rst": 1,
                        "rst_to_client": 1}
        assert got == want
        listing = legacy.server.iptables("-L", "-v", "-x", "-n").stdout
        mine = ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout
        # the pure ACKs of the bulk transfer vary with timing
        acks = ("INPUT", "OUTPUT")
        assert mine == listing or differ_only_by_pure_acks(listing, mine, acks), \
            f"iptables-legacy:\n{listing}\nbpf-iptables:\n{mine}"
        if mode == "xdpgeneric":
            check_listing(ours)


ROUTER_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i r1 -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i r1 -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A FORWARD -i r1 -p udp -m udp --dport 5002 -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW
COMMIT
"""


def routed_traffic(t: Routed) -> dict[str, int]:
    p = Pair(t.client, t.server)
    back = Pair(t.server, t.client)
    out = {
        "ping": ping(p, 2, FAR_IP),
        "tcp8080": tcp(p, 8080, 2, FAR_IP),
        "tcp8081": tcp(p, 8081, 1, FAR_IP),
        "transfer": transfer(p, 8080, 32 * 1024, FAR_IP),
        "udp5002": udp(p, 5002, 3, far=FAR_IP),
        # the server's port unreachable for the client's datagram: RELATED
        "icmp_related": int(refused(t.client, FAR_IP, 5002, socket.SOCK_DGRAM)),
        # the server may not open connections to the client
        "server_tcp": tcp(back, 8080, 1, "10.99.1.1"),
    }
    time.sleep(0.1)
    return out


def test_stateful_router_same_as_iptables_legacy():
    ensure_bpffs()
    with routed("ctrl") as legacy, routed("ctrb") as ours:
        load_twins(legacy.router, ours.router, ROUTER_RULES)
        want = routed_traffic(legacy)
        got = routed_traffic(ours)
        assert want == {"ping": 2, "tcp8080": 2, "tcp8081": 0, "transfer": 32 * 1024,
                        "udp5002": 3, "icmp_related": 1, "server_tcp": 0}
        assert got == want
        listing = legacy.router.iptables("-L", "-v", "-x", "-n").stdout
        mine = ours.router.bpf_iptables("-L", "-v", "-x", "-n").stdout
        # the pure ACKs of the bulk transfer vary with timing
        assert mine == listing or differ_only_by_pure_acks(listing, mine, ("FORWARD",)), \
            f"iptables-legacy:\n{listing}\nbpf-iptables:\n{mine}"


TIMEOUT_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m conntrack --ctstate NEW
-A INPUT -p udp -m conntrack --ctstate ESTABLISHED
-A INPUT -p icmp -m conntrack --ctstate NEW
-A INPUT -p icmp -m conntrack --ctstate ESTABLISHED
COMMIT
"""


def conversation(pair: Pair, pause: float) -> int:
    """Client port 40000 -> server:7000, the server answers, the client
    speaks again, then after ``pause`` once more; answers received."""
    with inside(pair.server):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(pair.client):
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind((SERVER_IP, 7000))
        cli.bind((CLIENT_IP, 40000))
        srv.settimeout(WAIT)
        cli.settimeout(WAIT)
        cli.sendto(b"hello", (SERVER_IP, 7000))
        _, peer = srv.recvfrom(64)
        srv.sendto(b"hi", peer)
        got = len(cli.recv(64))
        cli.sendto(b"again", (SERVER_IP, 7000))
        srv.recv(64)
        time.sleep(pause)
        cli.sendto(b"later", (SERVER_IP, 7000))   # after the timeout: NEW again
        srv.recv(64)
    return got


def test_short_timeouts_make_idle_flows_new_again():
    """nf_conntrack_udp_timeout / icmp_timeout of 2 s: with netfilter by
    sysctl, with bpf-iptables by bpf-iptables-conntrack --set (same names)."""
    ensure_bpffs()
    with topology("ctlt") as legacy, topology("ctbt") as ours:
        assert legacy.server.run(["iptables-legacy-restore"], input=TIMEOUT_RULES).returncode == 0
        for name in ("nf_conntrack_udp_timeout", "nf_conntrack_icmp_timeout"):
            r = legacy.server.run(["sysctl", "-qw", f"net.netfilter.{name}=2"])
            assert r.returncode == 0, r.stderr
        # set before the tracker exists: kept with the namespace, applied on attach
        r = ours.server.run(conntrack_command("--set", "nf_conntrack_udp_timeout=2",
                                              "--set", "nf_conntrack_icmp_timeout=2"))
        assert r.returncode == 0, r.stderr
        r = ours.server.run(bpf_command("iptables-restore"), input=TIMEOUT_RULES)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        assert "nf_conntrack_udp_timeout = 2" in ours.server.run(conntrack_command("-T")).stdout
        def idle(pair: Pair) -> tuple[int, int, int]:
            talk = conversation(pair, 3.0)
            first = ping(pair, 1)
            time.sleep(3.0)
            return talk, first, ping(pair, 1)

        # both systems at once: the pauses overlap
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(idle, (legacy, ours)))
        assert results == [(2, 1, 1), (2, 1, 1)]
        listing = legacy.server.iptables("-L", "-v", "-x", "-n").stdout
        # udp NEW: the first datagram and the one after the pause; udp
        # ESTABLISHED: the one in between; icmp NEW: both pings
        assert [int(x.split()[0]) for x in listing.splitlines()[2:6]] == [2, 1, 2, 0], listing
        mine = ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout
        assert mine == listing, f"iptables-legacy:\n{listing}\nbpf-iptables:\n{mine}"


def conntrack_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "bpf_iptables.cli.conntrack", *args]


def check_listing(ours: Pair) -> None:
    """bpf-iptables-conntrack -F, then a ping and a connection: -L, -C, -S."""
    r = ours.server.run(conntrack_command("-F"))
    assert r.returncode == 0 and "emptied" in r.stderr
    assert ping(ours, 1) == 1
    assert tcp(ours, 8080, 1) == 1
    r = ours.server.run(conntrack_command("-L"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and "2 flow entries have been shown." in r.stderr
    icmp = next(x for x in lines if x.startswith("icmp"))
    assert icmp.startswith("icmp     1 ")
    assert f"src={CLIENT_IP} dst={SERVER_IP} type=8 code=0 id=" in icmp
    assert f"src={SERVER_IP} dst={CLIENT_IP} type=0 code=0 id=" in icmp
    assert icmp.endswith("mark=0 use=1") and "[UNREPLIED]" not in icmp
    tcp_line = next(x for x in lines if x.startswith("tcp"))
    assert tcp_line.startswith("tcp      6 ")
    state = tcp_line.split()[3]
    assert state in ("TIME_WAIT", "CLOSE", "LAST_ACK", "FIN_WAIT", "CLOSE_WAIT")
    assert f"dport=8080 src={SERVER_IP} dst={CLIENT_IP} sport=8080" in tcp_line
    assert "[ASSURED]" in tcp_line
    assert ours.server.run(conntrack_command("-C")).stdout.strip() == "2"
    stats = ours.server.run(conntrack_command("-S")).stdout
    assert "entries=2 " in stats and "evictions=0" in stats
    r = ours.server.run(conntrack_command("-F"))
    assert r.returncode == 0 and "emptied" in r.stderr
    assert ours.server.run(conntrack_command("-C")).stdout.strip() == "0"
    r = ours.server.run(conntrack_command("--set", "nf_conntrack_bogus=3"))
    assert r.returncode == 2
