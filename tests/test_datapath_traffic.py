"""Real traffic through the attached data path, against iptables-legacy.

Two identical topologies, client namespace --veth-- server namespace: one
server enforces the rule set with iptables-legacy's INPUT, the other with
bpf-iptables' XDP program attached in it. The same bounded traffic (ICMP
echo, UDP datagrams, TCP connects, all from Python sockets to addresses
assigned inside the namespaces) must be delivered or dropped alike and
leave the same counters in ``-L -v -x -n``."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from bpf_iptables.datapath.packets import checksum as _checksum  # (the reject tests import it from here)

from tests.support.netns import Namespace, REPO, bpf_command
from tests.support.wire import netns

CLIENT_IP, SERVER_IP = "10.99.0.1", "10.99.0.2"
RUN = Path(os.environ.get("BPF_IPTABLES_RUN_DIR", "/run/bpf-iptables"))

RULES = """\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:UDPCHK - [0:0]
-A OUTPUT -p udp -m udp --dport 6000 -j DROP
-A OUTPUT -p udp -j UDPCHK
-A OUTPUT -o s0 -p icmp
-A INPUT -p icmp -j ACCEPT
-A INPUT -s 10.99.0.0/24
-A INPUT -p udp -j UDPCHK
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
-A UDPCHK -p udp -m udp --dport 5001 -j DROP
-A UDPCHK -p udp -m udp --dport 5002 -j ACCEPT
-A UDPCHK -j RETURN
COMMIT
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def datapath_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "bpf_iptables.cli.datapath", *args]


def ensure_bpffs() -> None:
    """The pins' bpffs must be mounted in the host's mount namespace (see
    bpf_iptables/datapath/attachment.py); the tests run there."""
    from bpf_iptables.datapath.attachment import ensure_bpffs as ensure

    ensure()


@dataclass
class Pair:
    client: Namespace
    server: Namespace


@contextmanager
def topology(prefix: str) -> Iterator[Pair]:
    """client (10.99.0.1, veth c0) --- server (10.99.0.2, veth s0), IPv6 off
    (so only the test's own IPv4 packets and ARP cross the link)."""
    tag = uuid.uuid4().hex[:8]
    names = [f"{prefix}c-{tag}", f"{prefix}s-{tag}"]
    made: list[str] = []
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            made.append(n)
        client, server = names
        sh("ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "s0",
           "netns", server)
        for ns, dev, addr in ((client, "c0", CLIENT_IP), (server, "s0", SERVER_IP)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield Pair(Namespace(client), Namespace(server))
    finally:
        remove_namespaces(made, attached=names[1])


def remove_namespaces(made: list[str], attached: str) -> None:
    """Delete a topology's namespaces (those made so far), detaching the
    data path of ``attached`` first so no pins outlive it."""
    for n in made:
        if n == attached:
            subprocess.run(["ip", "netns", "exec", n, *datapath_command("detach")],
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        subprocess.run(["ip", "netns", "del", n], check=False)


@contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """This thread in ``ns`` for a moment: sockets made here stay in ns."""
    with netns(ns.name):
        yield


@contextmanager
def sockets_in(receiver: Namespace, sender: Namespace, kind: int = socket.SOCK_DGRAM
               ) -> Iterator[tuple[socket.socket, socket.socket]]:
    """An IPv4 socket of ``kind`` made in ``receiver`` and one in ``sender``
    (in that order), closed afterwards."""
    with inside(receiver):
        rx = socket.socket(socket.AF_INET, kind)
    with inside(sender):
        tx = socket.socket(socket.AF_INET, kind)
    with rx, tx:
        yield rx, tx


# How long to wait for something that may have been dropped. Generous, so a
# loaded machine (the whole suite on 2 cores) does not turn a slow reply
# into a drop; a connect still gives up before the SYN is retransmitted.
REPLY_WAIT = 1.0
CONNECT_WAIT = 0.8


def ping(pair: Pair, count: int, dst: str = SERVER_IP) -> int:
    """ICMP echo requests client -> server; the number of replies."""
    with inside(pair.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    replies = 0
    with s:
        s.settimeout(REPLY_WAIT)
        ident = os.getpid() & 0xFFFF
        for seq in range(count):
            payload = b"bpf-iptables" * 4
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            head = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq)
            s.sendto(head + payload, (dst, 0))
            deadline = time.monotonic() + REPLY_WAIT
            while time.monotonic() < deadline:
                try:
                    pkt = s.recv(2048)
                except socket.timeout:
                    break
                ihl = (pkt[0] & 15) * 4
                typ, _, _, pid, pseq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
                if typ == 0 and pid == ident and pseq == seq:
                    replies += 1
                    break
    return replies


def udp(pair: Pair, port: int, count: int, reverse: bool = False, far: str = SERVER_IP) -> int:
    """Datagrams client -> server:port (server -> client with ``reverse``);
    how many arrived. A send refused by OUTPUT (EPERM from iptables; the
    TC program drops silently) is not an error here."""
    src, dst = (pair.server, pair.client) if reverse else (pair.client, pair.server)
    dst_ip = CLIENT_IP if reverse else far
    return datagrams(src, dst, dst_ip, port, count, b"datagram %d")


def datagrams(src: Namespace, dst: Namespace, dst_ip: str, port: int, count: int,
              payload: bytes) -> int:
    """``count`` UDP datagrams src -> dst_ip:port (payload % i) received in
    dst; how many arrived. A send refused by OUTPUT is not an error here."""
    with sockets_in(dst, src) as (rx, tx):
        rx.bind((dst_ip, port))
        for i in range(count):
            try:
                tx.sendto(payload % i, (dst_ip, port))
            except PermissionError:
                pass
        return received(rx)


def received(rx: socket.socket, wait: float = REPLY_WAIT) -> int:
    """How many datagrams ``rx`` gets until ``wait`` seconds pass without one."""
    got = 0
    rx.settimeout(wait)
    try:
        while True:
            rx.recv(2048)
            got += 1
    except socket.timeout:
        pass
    return got


def tcp(pair: Pair, port: int, count: int, dst: str = SERVER_IP,
        listen: int | None = None) -> int:
    """TCP connects client -> server:port (closed both ways); the successes.
    ``listen``: the server's port when a DNAT sends ``port`` there.
    A refused SYN is not retransmitted: the attempt gives up after
    CONNECT_WAIT, before the first retransmission (1 s)."""
    with inside(pair.server):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ok = 0
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((dst, port if listen is None else listen))
        listener.listen(8)
        listener.settimeout(REPLY_WAIT)
        for _ in range(count):
            with inside(pair.client):
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(CONNECT_WAIT)
            try:
                c.connect((dst, port))
            except OSError:
                c.close()
                continue
            conn, _ = listener.accept()
            c.close()
            conn.settimeout(1)
            conn.recv(16)  # the client's FIN
            # Let the (delayed, at most 200 ms) ACK of that FIN leave on its
            # own before our FIN: otherwise the kernel may or may not fold it
            # into the FIN, and OUTPUT's counters differ by one packet
            # between two identical runs.
            time.sleep(0.3)
            conn.close()
            ok += 1
            time.sleep(0.2)  # the client's last ACK
    return ok


def traffic(pair: Pair) -> dict[str, int]:
    outcome = {
        "icmp": ping(pair, 3),
        "udp5001": udp(pair, 5001, 4),
        "udp5002": udp(pair, 5002, 5),
        "udp5003": udp(pair, 5003, 2),
        "tcp8080": tcp(pair, 8080, 2),
        "tcp8081": tcp(pair, 8081, 1),
        "out6000": udp(pair, 6000, 2, reverse=True),
        "out5001": udp(pair, 5001, 3, reverse=True),
        "out6001": udp(pair, 6001, 4, reverse=True),
    }
    time.sleep(0.1)
    return outcome


@pytest.mark.parametrize("mode", ["xdpgeneric", "xdp", "tc"])
def test_same_outcome_and_counters_as_iptables_legacy(mode):
    ensure_bpffs()
    with topology("dpl") as legacy, topology("dpb") as ours:
        assert legacy.server.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        r = ours.server.run(bpf_command("iptables-restore"), input=RULES)
        assert r.returncode == 0, r.stderr
        r = ours.server.run(datapath_command("attach", "--mode", mode))
        assert r.returncode == 0, r.stderr
        status = ours.server.run(datapath_command("status")).stdout
        assert f"s0 ifindex 2 {mode} ok" in status, status

        want = traffic(legacy)
        got = traffic(ours)
        assert want == {"icmp": 3, "udp5001": 0, "udp5002": 5, "udp5003": 0,
                        "tcp8080": 2, "tcp8081": 0, "out6000": 0, "out5001": 0, "out6001": 4}
        assert got == want

        listing = legacy.server.iptables("-L", "-v", "-x", "-n").stdout
        ours_listing = ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout
        assert "Chain UDPCHK" in listing and "5002" in listing
        # the server's replies and datagrams went through OUTPUT: counted on both sides
        out_policy = listing.split("Chain OUTPUT (policy ACCEPT ")[1].split(" ")[0]
        assert int(out_policy) > 0
        assert ours_listing == listing
        save = ours.server.run(bpf_command("iptables-save", "-c")).stdout
        assert "[3:" in save and ":INPUT DROP [" in save

        # -Z zeroes the data path's counters; new traffic counts again from 0
        assert legacy.server.iptables("-Z").returncode == 0
        assert ours.server.bpf_iptables("-Z").returncode == 0
        assert ping(legacy, 1) == ping(ours, 1) == 1
        assert (ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout
                == legacy.server.iptables("-L", "-v", "-x", "-n").stdout)


# -- FORWARD: client -- router -- server, the router enforcing -----------------------

ROUTER_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FWD - [0:0]
-A INPUT -p icmp
-A FORWARD -p icmp -j ACCEPT
-A FORWARD -i r1 -p udp -j FWD
-A FORWARD -p tcp -m tcp --dport 8080 -j ACCEPT
-A FORWARD -p tcp -m tcp --sport 8080 -j ACCEPT
-A FWD -p udp -m udp --dport 5001 -j DROP
-A FWD -p udp -m udp --dport 5002 -j ACCEPT
-A OUTPUT -p icmp
-A OUTPUT -p udp -m udp --dport 5007 -j DROP
-A OUTPUT -p udp -j FWD
COMMIT
"""
FAR_IP, ROUTER_IP = "10.99.2.1", "10.99.1.2"


@dataclass
class Routed:
    client: Namespace
    router: Namespace
    server: Namespace


@contextmanager
def routed(prefix: str) -> Iterator[Routed]:
    """client c0 10.99.1.1 -- r1 10.99.1.2 router r2 10.99.2.2 -- s0 10.99.2.1 server."""
    tag = uuid.uuid4().hex[:8]
    names = [f"{prefix}{r}-{tag}" for r in "crs"]
    made: list[str] = []
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            made.append(n)
        client, router, server = names
        sh("ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "r1",
           "netns", router)
        sh("ip", "link", "add", "s0", "netns", server, "type", "veth", "peer", "name", "r2",
           "netns", router)
        for ns, dev, addr in ((client, "c0", "10.99.1.1"), (router, "r1", ROUTER_IP),
                              (router, "r2", "10.99.2.2"), (server, "s0", FAR_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in names:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", client, "route", "add", "default", "via", ROUTER_IP)
        sh("ip", "-n", server, "route", "add", "default", "via", "10.99.2.2")
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield Routed(Namespace(client), Namespace(router), Namespace(server))
    finally:
        remove_namespaces(made, attached=names[1])


def routed_traffic(t: Routed) -> dict[str, int]:
    p = Pair(t.client, t.server)
    # the router's own datagrams to the server: OUTPUT (5007 dropped there,
    # 5001 dropped in FWD reached from OUTPUT, 5008 by the policy)
    own = Pair(t.server, t.router)
    out = {"icmp": ping(p, 2, FAR_IP), "udp5001": udp(p, 5001, 3, far=FAR_IP),
           "udp5002": udp(p, 5002, 4, far=FAR_IP), "udp5003": udp(p, 5003, 1, far=FAR_IP),
           "tcp8080": tcp(p, 8080, 2, FAR_IP), "tcp8081": tcp(p, 8081, 1, FAR_IP),
           "router_icmp": ping(p, 2, ROUTER_IP),
           "own5007": udp_from(own, FAR_IP, 5007, 2), "own5001": udp_from(own, FAR_IP, 5001, 1),
           "own5008": udp_from(own, FAR_IP, 5008, 3)}
    time.sleep(0.1)
    return out


def udp_from(pair: Pair, dst_ip: str, port: int, count: int) -> int:
    """Datagrams pair.server -> pair.client at dst_ip:port; how many arrived."""
    return datagrams(pair.server, pair.client, dst_ip, port, count, b"own %d")


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_forward_same_outcome_and_counters_as_iptables_legacy(mode):
    ensure_bpffs()
    with routed("dfl") as legacy, routed("dfb") as ours:
        assert legacy.router.run(["iptables-legacy-restore"], input=ROUTER_RULES).returncode == 0
        r = ours.router.run(bpf_command("iptables-restore"), input=ROUTER_RULES)
        assert r.returncode == 0, r.stderr
        r = ours.router.run(datapath_command("attach", "--mode", mode))
        assert r.returncode == 0, r.stderr
        r = ours.router.run(datapath_command("status"))
        assert r.returncode == 0 and "FORWARD program" in r.stdout, r.stdout
        want = routed_traffic(legacy)
        got = routed_traffic(ours)
        assert want == {"icmp": 2, "udp5001": 0, "udp5002": 4, "udp5003": 0, "tcp8080": 2,
                        "tcp8081": 0, "router_icmp": 2, "own5007": 0, "own5001": 0,
                        "own5008": 3}
        assert got == want
        listing = legacy.router.iptables("-L", "-v", "-x", "-n").stdout
        assert "Chain FORWARD (policy DROP 2 packets" in listing  # udp 5003, tcp 8081
        # OUTPUT while forwarding: the router's own packets only (its 2 echo
        # replies, its 6 datagrams), none of the forwarded ones
        assert "Chain OUTPUT (policy ACCEPT 5 packets" in listing
        assert ours.router.bpf_iptables("-L", "-v", "-x", "-n").stdout == listing


def test_root_namespace_untouched():
    """Nothing of the tests is attached to the root namespace's interfaces."""
    out = subprocess.run(["ip", "-d", "link", "show"], capture_output=True, text=True).stdout
    assert "xdp" not in out
    from bpf_iptables.datapath import bpfsys

    for name in os.listdir("/sys/class/net"):
        for kind in ("ingress", "egress"):
            tc = subprocess.run(["tc", "filter", "show", "dev", name, kind],
                                capture_output=True, text=True).stdout
            assert "bpf" not in tc, (name, kind, tc)
        # TCX links (what the roots use) are not tc filters
        index = socket.if_nametoindex(name)
        for hook in (bpfsys.BPF_TCX_INGRESS, bpfsys.BPF_TCX_EGRESS):
            assert bpfsys.attached_count(index, hook) == 0, (name, hook)


# -- FORWARD: -o by the route's device, -m ttl after the router's decrement -----------

OIF_TTL_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -o r1 -j ACCEPT
-A FORWARD -o r2 -p udp -m ttl --ttl-eq 63 -m udp --dport 5001 -j ACCEPT
-A FORWARD -o r2 -p udp -m ttl ! --ttl-eq 63 -j ACCEPT
-A FORWARD ! -o r2 -p icmp -j DROP
-A FORWARD -o r2 -p icmp -m ttl --ttl-gt 62 -m ttl --ttl-lt 64 -j ACCEPT
COMMIT
"""


def without_output(listing: str) -> str:
    """The router's OUTPUT has no rules, so no program: its policy
    counters (the router's own replies) are not counted by the data path."""
    return "\n\n".join(b for b in listing.split("\n\n") if not b.startswith("Chain OUTPUT "))


def test_forward_out_interface_and_ttl_as_iptables_legacy():
    """-o is the egress device of the router's route; -m ttl sees the TTL
    after the router lowered it (the client sends 64, FORWARD sees 63)."""
    ensure_bpffs()

    def run(t: Routed) -> dict[str, int]:
        p = Pair(t.client, t.server)
        out = {"udp5001": udp(p, 5001, 3, far=FAR_IP), "udp5002": udp(p, 5002, 2, far=FAR_IP),
               "icmp": ping(p, 2, FAR_IP)}
        time.sleep(0.1)
        return out

    with routed("dol") as legacy, routed("dob") as ours:
        assert legacy.router.run(["iptables-legacy-restore"], input=OIF_TTL_RULES).returncode == 0
        r = ours.router.run(bpf_command("iptables-restore"), input=OIF_TTL_RULES)
        assert r.returncode == 0, r.stderr
        r = ours.router.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        want = run(legacy)
        assert want == {"udp5001": 3, "udp5002": 0, "icmp": 2}
        assert run(ours) == want
        listing = without_output(legacy.router.iptables("-L", "-v", "-x", "-n").stdout)
        assert without_output(ours.router.bpf_iptables("-L", "-v", "-x", "-n").stdout) == listing
