"""-j REJECT from the data path against iptables-legacy, with real sockets.

Twin topologies (tests/test_datapath_traffic.py): the same rule set under
iptables-legacy in one, under bpf-iptables (attached) in the other. A
client's connected UDP socket with IP_RECVERR must get the same error
(errno, origin, ICMP type and code) for every reject type, a TCP connect
the same errno (ECONNREFUSED for tcp-reset), and the reply frames captured
on the client's link must be the same bytes except the IP ids and the
checksums covering them (those are checked valid on both sides); the
rejecting chain's counters must be the same. INPUT (XDP and TC ingress;
on a link and on lo), FORWARD (the router topology, XDP and TC ingress)
and OUTPUT (TC egress, the reply turned into the stack)."""
from __future__ import annotations

import errno
import select
import socket
import struct
import time
from dataclasses import dataclass

import pytest

from tests.support.netns import Namespace, bpf_command
from tests.support.twins import load_twins
from tests.test_datapath_traffic import (
    CLIENT_IP, FAR_IP, SERVER_IP, _checksum, datapath_command, ensure_bpffs, inside, routed,
    topology,
)

IP_RECVERR = 11
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CLIENT_PORT = 40000   # fixed, so the quoted datagrams are the same bytes

# (port, reject-with, (ICMP type, code))
UDP_TYPES = [
    (6000, "icmp-net-unreachable", (3, 0)),
    (6001, "icmp-host-unreachable", (3, 1)),
    (6002, "icmp-proto-unreachable", (3, 2)),
    (6003, "icmp-port-unreachable", (3, 3)),
    (6005, "icmp-net-prohibited", (3, 9)),
    (6006, "icmp-host-prohibited", (3, 10)),
    (6008, "icmp-admin-prohibited", (3, 13)),
]
# TCP: a reset, and the ICMP errors a SYN_SENT socket takes as fatal
TCP_TYPES = [
    (7000, "tcp-reset", errno.ECONNREFUSED),
    (7003, "icmp-port-unreachable", errno.ECONNREFUSED),
    (7006, "icmp-host-prohibited", errno.EHOSTUNREACH),
    (7008, "icmp-admin-prohibited", errno.EHOSTUNREACH),
]


def rules(chain: str) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for port, with_, _ in UDP_TYPES:
        lines.append(f"-A {chain} -p udp -m udp --dport {port} -j REJECT --reject-with {with_}")
    for port, with_, _ in TCP_TYPES:
        lines.append(f"-A {chain} -p tcp -m tcp --dport {port} -j REJECT --reject-with {with_}")
    if chain != "OUTPUT":
        # no reply to an ICMP error, but the rule counts and drops it (in
        # OUTPUT it would drop iptables' own replies, which traverse OUTPUT)
        lines.append(f"-A {chain} -p icmp --icmp-type 3 -j REJECT")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Err:
    errno: int
    origin: int
    type: int
    code: int


def udp_error(client: Namespace, dst: str, port: int) -> Err | None:
    """One datagram from CLIENT_PORT; the error queued on the socket."""
    with inside(client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", CLIENT_PORT))
        s.connect((dst, port))
        try:
            s.send(b"rejected %d" % port)
        except OSError:
            pass   # OUTPUT under iptables: the send itself fails (EPERM)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except BlockingIOError:
                select.select([], [], [s], 0.05)
                continue
            for level, kind, data in anc:
                if level == socket.SOL_IP and kind == IP_RECVERR:
                    e, origin, type_, code = struct.unpack_from("=IBBB", data)
                    return Err(e, origin, type_, code)
    return None


def tcp_errno(client: Namespace, dst: str, port: int) -> int:
    with inside(client):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", CLIENT_PORT + 1))   # the same ports in both resets
        c.settimeout(1.5)
        try:
            c.connect((dst, port))
        except socket.timeout:
            return -1
        except OSError as exc:
            return exc.errno or -2
    return 0


def ip_id_free(frame: bytes) -> bytes:
    """The frame with the IP id, IP checksum and, for an ICMP error, the
    quoted header's id and checksum and the ICMP checksum zeroed, after
    checking that every checksum was valid."""
    b = bytearray(frame[12:])            # from the EtherType: MACs differ per topology
    ip = 2
    ihl = (b[ip] & 0xF) * 4
    assert _checksum(bytes(b[ip:ip + ihl])) == 0
    tot = struct.unpack_from("!H", b, ip + 2)[0]
    l4 = ip + ihl
    b[ip + 4:ip + 6] = b"\0\0"
    b[ip + 10:ip + 12] = b"\0\0"
    if b[ip + 9] == 1:
        assert _checksum(bytes(b[l4:ip + tot])) == 0
        b[l4 + 2:l4 + 4] = b"\0\0"
        q = l4 + 8
        b[q + 4:q + 6] = b"\0\0"
        b[q + 10:q + 12] = b"\0\0"
    return bytes(b[:ip + tot])


def capture(client: Namespace, dev: str) -> socket.socket:
    with inside(client):
        # ETH_P_ALL: only those sockets see outgoing frames (the SYN)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, ETH_P_ALL))
    s.setblocking(False)
    return s


def replies(sock: socket.socket) -> list[bytes]:
    """ICMP errors received on the link since the socket was opened."""
    out = []
    time.sleep(0.1)
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except BlockingIOError:
            return out
        if (addr[1] == ETH_P_IP and addr[2] != PACKET_OUTGOING and data[23] == 1
                and data[34] == 3):
            out.append(data)


def resets(sock: socket.socket) -> list[bytes]:
    """The TCP resets received since the socket was opened, normalised:
    checksum checked and zeroed, ack_seq as an offset from the sequence
    number of the client's SYN before it (random per connection)."""
    out = []
    syn_seq = None
    time.sleep(0.1)
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except BlockingIOError:
            return out
        if addr[1] != ETH_P_IP or data[23] != 6:
            continue
        b = bytearray(data[14:54])
        seq, ack = struct.unpack_from("!II", b, 24)
        if addr[2] == PACKET_OUTGOING and b[33] & 0x02:
            syn_seq = seq
        elif addr[2] != PACKET_OUTGOING and b[33] & 0x04 and syn_seq is not None:
            pseudo = bytes(b[12:20]) + struct.pack("!HH", 6, 20)
            # complete, or (iptables on a veth) CHECKSUM_PARTIAL: the
            # pseudo header's sum, which a NIC would complete
            partial = ~_checksum(pseudo) & 0xFFFF
            assert (_checksum(pseudo + bytes(b[20:40])) == 0
                    or struct.unpack_from("!H", b, 36)[0] == partial)
            assert _checksum(bytes(b[:20])) == 0
            struct.pack_into("!I", b, 28, (ack - syn_seq) & 0xFFFFFFFF)
            b[36:38] = b"\0\0"
            out.append(bytes(b))


def exercise(client: Namespace, dev: str, dst: str) -> dict:
    """Every UDP and TCP case from the client; errors, errnos, the ICMP
    errors on the link (normalised)."""
    cap = capture(client, dev)
    with cap:
        udp = {port: udp_error(client, dst, port) for port, _, _ in UDP_TYPES}
        frames = [ip_id_free(f) for f in replies(cap)]
    cap = capture(client, dev)
    with cap:
        tcp = {port: tcp_errno(client, dst, port) for port, _, _ in TCP_TYPES}
        rsts = resets(cap)
    return {"udp": udp, "tcp": tcp, "frames": frames, "resets": rsts}


def expected_udp(out: dict) -> None:
    for port, _, (type_, code) in UDP_TYPES:
        err = out["udp"][port]
        assert err is not None and (err.origin, err.type, err.code) == (2, type_, code), (port, err)
    for port, _, want in TCP_TYPES:
        assert out["tcp"][port] == want, port
    assert len(out["frames"]) == len(UDP_TYPES)
    assert len(out["resets"]) == 1 and out["resets"][0][33] == 0x14   # RST, ACK


def no_icmp_ratelimit(*nss: Namespace) -> None:
    """The kernel rate-limits ICMP errors per peer (a burst of 6, then one
    a second: net.ipv4.icmp_ratelimit); the data path does not, so the
    kernel's limit is off for the comparison."""
    for ns in nss:
        assert ns.run(["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]).returncode == 0


def chain_listing(ns: Namespace, chain: str, ours: bool) -> str:
    args = ("-L", chain, "-v", "-x", "-n")
    return (ns.bpf_iptables(*args) if ours else ns.iptables(*args)).stdout


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_input_reject_as_iptables_legacy(mode):
    ensure_bpffs()
    with topology("rji") as legacy, topology("rjb") as ours:
        no_icmp_ratelimit(legacy.server, ours.server)
        text = rules("INPUT")
        load_twins(legacy.server, ours.server, text, "--mode", mode)
        want = exercise(legacy.client, "c0", SERVER_IP)
        got = exercise(ours.client, "c0", SERVER_IP)
        expected_udp(want)
        assert got == want
        assert chain_listing(ours.server, "INPUT", True) == chain_listing(legacy.server, "INPUT", False)


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_forward_reject_as_iptables_legacy(mode):
    ensure_bpffs()
    with routed("rjf") as legacy, routed("rjg") as ours:
        no_icmp_ratelimit(legacy.router, ours.router)
        text = rules("FORWARD")
        load_twins(legacy.router, ours.router, text, "--mode", mode)
        want = exercise(legacy.client, "c0", FAR_IP)
        got = exercise(ours.client, "c0", FAR_IP)
        expected_udp(want)
        assert got == want
        assert (chain_listing(ours.router, "FORWARD", True)
                == chain_listing(legacy.router, "FORWARD", False))


def test_output_reject_as_iptables_legacy():
    """The rules in the client's own OUTPUT: its socket gets the error."""
    ensure_bpffs()
    with topology("rjo") as legacy, topology("rjp") as ours:
        try:
            output_case(legacy.client, ours.client)
        finally:
            # topology() detaches the server side only
            ours.client.run(datapath_command("detach"))


def output_case(legacy: Namespace, ours: Namespace) -> None:
    text = rules("OUTPUT")
    assert legacy.run(["iptables-legacy-restore"], input=text).returncode == 0
    r = ours.run(bpf_command("iptables-restore"), input=text)
    assert r.returncode == 0, r.stderr
    r = ours.run(datapath_command("attach"))
    assert r.returncode == 0, r.stderr
    want = {port: udp_error(legacy, SERVER_IP, port) for port, _, _ in UDP_TYPES}
    got = {port: udp_error(ours, SERVER_IP, port) for port, _, _ in UDP_TYPES}
    for port, _, (type_, code) in UDP_TYPES:
        assert want[port] is not None and (want[port].type, want[port].code) == (type_, code)
    assert got == want
    want_tcp = {port: tcp_errno(legacy, SERVER_IP, port) for port, _, _ in TCP_TYPES}
    got_tcp = {port: tcp_errno(ours, SERVER_IP, port) for port, _, _ in TCP_TYPES}
    assert want_tcp == {port: e for port, _, e in TCP_TYPES}
    assert got_tcp == want_tcp
    # the rules count alike; iptables' own errors and resets traverse its
    # OUTPUT too (its policy counts them), the data path's replies do not
    # (bpf_iptables/datapath/README.md, "REJECT")
    mine = chain_listing(ours, "OUTPUT", True).split("\n")
    theirs = chain_listing(legacy, "OUTPUT", False).split("\n")
    assert mine[1:] == theirs[1:]
    assert mine[0] == "Chain OUTPUT (policy ACCEPT 0 packets, 0 bytes)"
    assert theirs[0].startswith(f"Chain OUTPUT (policy ACCEPT {len(UDP_TYPES) + len(TCP_TYPES)} ")


LOOPBACK_RULES = """\
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 6001 -j REJECT --reject-with icmp-host-unreachable
-A INPUT -p tcp -m tcp --dport 7000 -j REJECT --reject-with tcp-reset
COMMIT
"""


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_loopback_reject_as_iptables_legacy(mode):
    """Local traffic on lo: the reply goes back out lo and comes in again,
    classified by INPUT as iptables' reply is (its policy counts it)."""
    from tests.support.netns import namespace

    ensure_bpffs()
    with namespace("rjl") as legacy, namespace("rjm") as ours:
        try:
            for ns in (legacy, ours):
                assert ns.run(["ip", "link", "set", "lo", "up"]).returncode == 0
            assert legacy.run(["iptables-legacy-restore"], input=LOOPBACK_RULES).returncode == 0
            assert ours.run(bpf_command("iptables-restore"), input=LOOPBACK_RULES).returncode == 0
            r = ours.run(datapath_command("attach", "--mode", mode))
            assert r.returncode == 0, r.stderr
            want = (udp_error(legacy, "127.0.0.1", 6001), tcp_errno(legacy, "127.0.0.1", 7000))
            got = (udp_error(ours, "127.0.0.1", 6001), tcp_errno(ours, "127.0.0.1", 7000))
            assert want == (Err(errno.EHOSTUNREACH, 2, 3, 1), errno.ECONNREFUSED)
            assert got == want
            assert chain_listing(ours, "INPUT", True) == chain_listing(legacy, "INPUT", False)
            # a REJECT added while attached (an update of the live programs) replies at once
            rule = ("-I", "INPUT", "-p", "udp", "--dport", "6009", "-j", "REJECT",
                    "--reject-with", "icmp-net-prohibited")
            assert legacy.iptables(*rule).returncode == 0
            assert ours.bpf_iptables(*rule).returncode == 0
            want = udp_error(legacy, "127.0.0.1", 6009)
            assert want == Err(errno.ENETUNREACH, 2, 3, 9)
            assert udp_error(ours, "127.0.0.1", 6009) == want
        finally:
            ours.run(datapath_command("detach"))


ESTABLISHED_RULES = """\
*filter
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p tcp -m tcp --dport 7100 -m length --length 100:65535 -j REJECT --reject-with tcp-reset
COMMIT
"""


def reset_while_established(pair) -> str:
    """Connect, then a 100-byte segment the OUTPUT rule rejects: the errno
    the client's socket reports (the reset has seq = the segment's ack)."""
    with inside(pair.server):
        listener = socket.socket()
    with inside(pair.client):
        c = socket.socket()
    with listener, c:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((SERVER_IP, 7100))
        listener.listen(1)
        c.settimeout(2)
        c.connect((SERVER_IP, 7100))
        conn, _ = listener.accept()
        with conn:
            try:
                c.send(b"x" * 100)
                time.sleep(0.3)
                c.send(b"y")
                c.recv(10)
            except OSError as exc:
                return errno.errorcode[exc.errno or 0]
    return "no error"


def test_output_reset_of_an_established_connection():
    ensure_bpffs()
    with topology("rjq") as legacy, topology("rjr") as ours:
        try:
            assert legacy.client.run(["iptables-legacy-restore"],
                                     input=ESTABLISHED_RULES).returncode == 0
            assert ours.client.run(bpf_command("iptables-restore"),
                                   input=ESTABLISHED_RULES).returncode == 0
            assert ours.client.run(datapath_command("attach")).returncode == 0
            assert reset_while_established(legacy) == "ECONNRESET"
            assert reset_while_established(ours) == "ECONNRESET"
            mine = chain_listing(ours.client, "OUTPUT", True).split("\n")
            theirs = chain_listing(legacy.client, "OUTPUT", False).split("\n")
            assert mine[1:] == theirs[1:]   # the policy: iptables' reset passes OUTPUT
        finally:
            ours.client.run(datapath_command("detach"))
