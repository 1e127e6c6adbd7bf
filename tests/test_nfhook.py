"""A BPF_PROG_TYPE_NETFILTER program at netfilter's hooks sees what the
nat table did (the feasibility of a ``--mode netfilter``, README
"Netfilter hooks").

A client namespace connects to 10.99.0.2:80 on a server namespace whose
nat table (real iptables-legacy) marks the SYN 0x4000 and DNATs it to
:8080. ``bpf/nfhook.c`` attached at LOCAL_IN priority 0 (where the filter
table's INPUT runs) must count it as 10.99.0.2:8080 with the DNAT bit and
the mark; the same program at PRE_ROUTING priority -300 (before conntrack
and DNAT) as :80 without either. Then it drops the DNATed port and the
client's connect times out. Both ways to the packet bytes are run: probe
reads and dynptr kfuncs."""
from __future__ import annotations

import atexit
import ctypes
import functools
import socket
import struct
import subprocess
import time
import uuid
from contextlib import ExitStack

import pytest

from bpf_iptables import nsthread
from bpf_iptables.datapath import (attachment, bpfsys, nfhook, nfhook_bench, nfhook_btf,
                                   nfhook_reject, packets)
from bpf_iptables.reference.packet import Packet
from tests.support.netns import namespace

SERVER, CLIENT = "10.99.0.2", "10.99.0.1"
IPS_DST_NAT = 1 << 5


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def _pair(stack: ExitStack) -> tuple[str, str]:
    """(client, server) namespaces joined by a veth pair c0 -- s0,
    deleted when ``stack`` closes."""
    server = stack.enter_context(namespace("nfhs")).name
    client = stack.enter_context(namespace("nfhc")).name
    _ip(client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", server)
    _ip(client, "addr", "add", f"{CLIENT}/24", "dev", "c0")
    _ip(server, "addr", "add", f"{SERVER}/24", "dev", "s0")
    for ns, dev in ((client, "c0"), (server, "s0"), (client, "lo"), (server, "lo")):
        _ip(ns, "link", "set", dev, "up")
    return client, server


def _listen(stack: ExitStack, ns: str, port: int) -> None:
    with nsthread.inside(ns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.callback(listener.close)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)


def _connect(ns: str, timeout: float, port: int = 80) -> bool | str:
    """Whether a TCP connect from namespace ``ns`` to SERVER:port
    completes (True), times out (False) or is refused ("refused")."""
    with nsthread.inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((SERVER, port))
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionRefusedError:
        return "refused"
    finally:
        s.close()


def _counts(loaded: nfhook.Loaded) -> dict[tuple[str, int, int, int, int], int]:
    """(daddr, dport, dnat, proto, mark) -> packets."""
    out = {}
    for k, v in loaded.table("counts").items():
        daddr = socket.inet_ntoa(struct.pack("<I", k.daddr))
        out[(daddr, k.dport, k.dnat, k.proto, k.mark)] = v.value
    return out


@pytest.mark.parametrize("fast", [False, True], ids=["probe_read", "dynptr_btf"])
def test_sees_post_nat_packet_and_drops_it(fast: bool) -> None:
    with ExitStack() as stack:
        client, server = _pair(stack)
        nat = ["ip", "netns", "exec", server, "iptables-legacy", "-t", "nat", "-A", "PREROUTING",
               "-p", "tcp", "-d", SERVER, "--dport", "80"]
        subprocess.run([*nat, "-j", "MARK", "--set-xmark", "0x4000/0x4000"], check=True)
        subprocess.run([*nat, "-j", "DNAT", "--to-destination", f"{SERVER}:8080"], check=True)
        _listen(stack, server, 8080)
        s0 = int(subprocess.run(["ip", "netns", "exec", server, "cat",
                                 "/sys/class/net/s0/ifindex"], capture_output=True,
                                text=True, check=True).stdout)

        # probe_read: bcc loads it (load_func with the attach type); the
        # fast build has kfunc calls (dynptr, rdonly_cast): loaded raw
        loaded = nfhook.load(dynptr=fast, read_btf=fast)
        assert loaded.how == ("raw" if fast else "bcc")
        stack.callback(loaded.close)
        # links are closed (hooks unregistered) before the namespaces go
        local_in = stack.enter_context(
            nfhook.attached(loaded.prog_fd, server, nfhook.LOCAL_IN, 0))
        stack.enter_context(nfhook.attached(loaded.prog_fd, server, nfhook.PRE_ROUTING, -300))

        assert _connect(client, 5.0) is True
        counts = _counts(loaded)
        # the SYN at LOCAL_IN: after DNAT, with the mark the nat table set
        assert counts.get((SERVER, 8080, 1, 6, 0x4000), 0) >= 1, counts
        # the same SYN at PRE_ROUTING before conntrack: what XDP/TC see
        assert counts.get((SERVER, 80, 0, 6, 0), 0) >= 1, counts
        # nothing at LOCAL_IN was still addressed to :80
        assert not any(k[1] == 80 and k[2] for k in counts), counts

        assert nfhook.link_info(local_in.fd) == (nfhook.NFPROTO_IPV4, nfhook.LOCAL_IN, 0)
        seen = loaded.table("last")[ctypes.c_int(nfhook.LOCAL_IN)]
        assert seen.hook == nfhook.LOCAL_IN
        assert seen.in_ifindex == s0 and seen.out_ifindex == 0
        assert seen.status & IPS_DST_NAT
        assert seen.orig_daddr == struct.unpack("<I", socket.inet_aton(SERVER))[0]
        assert (seen.orig_dport, seen.reply_sport) == (80, 8080)
        assert seen.timeout > 0

        loaded.table("config")[ctypes.c_int(0)] = ctypes.c_uint32(8080)
        before = _counts(loaded).get((SERVER, 8080, 1, 6, 0x4000), 0)
        assert _connect(client, 1.5) is False
        # the dropped SYN (and its retransmissions) reached the program
        assert _counts(loaded).get((SERVER, 8080, 1, 6, 0x4000), 0) > before
        cost = loaded.table("cost")[ctypes.c_int(0)]
        assert sum(c.packets for c in cost) >= 4

        # a pinned link outlives its fd; removing the pin detaches
        pin = attachment.ensure_bpffs() / f"nfhook-test-{uuid.uuid4().hex[:10]}"
        local_in.pin(str(pin))
        stack.callback(lambda: pin.unlink(missing_ok=True))
        local_in.close()
        assert _connect(client, 1.5) is False
        pin.unlink()
        assert _connect(client, 5.0) is True


def test_reject_handoff_from_local_out_to_tc_egress() -> None:
    """REJECT option 1 of the README: the netfilter program at LOCAL_OUT
    records the skb by its address and accepts it; the TC egress program
    on the way out finds the same skb and turns it into the reply with
    lib/reject.h (tcp-reset for TCP, icmp-port-unreachable for UDP), into
    the client's stack: the socket sees ECONNREFUSED although the server
    listens on that port."""
    with ExitStack() as stack:
        client, server = _pair(stack)
        _listen(stack, server, 8080)
        _listen(stack, server, 8081)
        with nsthread.inside(server):
            udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(udp_server.close)
        udp_server.bind(("0.0.0.0", 9999))
        handoff = nfhook_reject.load()
        stack.callback(handoff.close)
        stack.enter_context(nfhook.attached(handoff.nf_fd, client, nfhook.LOCAL_OUT, 0))
        stack.enter_context(nfhook_reject.tc_egress(handoff.tc_fd, client, "c0"))
        stats = handoff.table("stats")
        port = handoff.table("reject_port")
        assert _connect(client, 5.0, 8081) is True   # nothing to reject yet
        port[ctypes.c_int(0)] = ctypes.c_uint32(8081)
        started = time.monotonic()
        assert _connect(client, 5.0, 8081) == "refused"
        assert time.monotonic() - started < 1.0   # the RST, not a timeout
        assert _connect(client, 5.0, 8080) is True
        recorded, taken = stats[ctypes.c_int(0)].value, stats[ctypes.c_int(1)].value
        assert recorded == taken == 1, (recorded, taken)

        port[ctypes.c_int(0)] = ctypes.c_uint32(9999)
        with nsthread.inside(client):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(udp.close)
        udp.settimeout(2.0)
        udp.connect((SERVER, 9999))
        udp.send(b"x")
        with pytest.raises(ConnectionRefusedError):   # the ICMP error, as IP_RECVERR
            udp.recv(16)
        assert stats[ctypes.c_int(1)].value == 2
        assert len(handoff.table("pending")) == 0


@pytest.mark.parametrize("chain", ["INPUT", "OUTPUT"])
def test_reject_through_xtables(chain: str) -> None:
    """REJECT option 2 of the README: the netfilter program at priority -1
    (LOCAL_IN on the server, LOCAL_OUT on the client) records the skb;
    iptables-legacy's chain there (priority 0) runs the pinned socket
    filter as `-m bpf`, which matches exactly that skb, and the kernel's
    REJECT sends the RST."""
    with ExitStack() as stack:
        client, server = _pair(stack)
        _listen(stack, server, 8080)
        _listen(stack, server, 8081)
        handoff = nfhook_reject.load()
        stack.callback(handoff.close)
        pin = attachment.ensure_bpffs() / f"nfhook-test-{uuid.uuid4().hex[:10]}"
        bpfsys.obj_pin(handoff.sf_fd, str(pin))
        stack.callback(lambda: pin.unlink(missing_ok=True))
        ns, hook = (server, nfhook.LOCAL_IN) if chain == "INPUT" else (client, nfhook.LOCAL_OUT)
        subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-A", chain, "-p",
                        "tcp", "-m", "bpf", "--object-pinned", str(pin), "-j", "REJECT",
                        "--reject-with", "tcp-reset"], check=True)
        stack.enter_context(nfhook.attached(handoff.nf_fd, ns, hook, -1))
        handoff.table("reject_port")[ctypes.c_int(0)] = ctypes.c_uint32(8081)
        started = time.monotonic()
        assert _connect(client, 5.0, 8081) == "refused"
        assert time.monotonic() - started < 1.0
        assert _connect(client, 5.0, 8080) is True
        stats = handoff.table("stats")
        assert stats[ctypes.c_int(0)].value == stats[ctypes.c_int(1)].value == 1
        assert len(handoff.table("pending")) == 0
        listing = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", "-L",
                                  chain, "-v", "-n", "-x"], capture_output=True, text=True,
                                 check=True).stdout
        rule = next(line for line in listing.splitlines() if "REJECT" in line)
        assert rule.split()[0] == "1", listing   # the SYN, and nothing else


def test_btf_offsets_and_ids() -> None:
    """The BTF parser against layouts fixed by the uapi and against
    bpftool's reading of the same file."""
    btf = nfhook_btf.vmlinux()
    assert btf.member("iphdr", "daddr") == (16, 4)       # inside an anonymous union
    assert btf.member("tcphdr", "dest") == (2, 2)
    assert btf.member("bpf_nf_ctx", "skb") == (8, 8)
    assert btf.bitfield("tcphdr", "doff") == (12, 4, 4)
    assert btf.bitfield("tcphdr", "syn") == (13, 1, 1)
    with pytest.raises(LookupError):
        btf.member("tcphdr", "syn")
    hash0 = btf.offset_of("nf_conn", "tuplehash[0]")
    size = btf.size_of(btf.id_of(nfhook_btf.STRUCT, "nf_conntrack_tuple_hash"))
    assert btf.offset_of("nf_conn", "tuplehash[1]") == hash0 + size
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(nfhook_btf.VMLINUX)],
                          capture_output=True, text=True, check=True).stdout
    checked = 0
    for line in dump.splitlines():
        if line.startswith("[") and (" FUNC 'bpf_dynptr_from_skb' " in line
                                     or " STRUCT 'nf_conn' " in line):
            tid = int(line[1:line.index("]")])
            kind = nfhook_btf.FUNC if " FUNC " in line else nfhook_btf.STRUCT
            assert btf.id_of(kind, line.split("'")[1]) == tid, line
            checked += 1
    assert checked == 2


def test_bridged_frames_reach_forward_with_br_netfilter() -> None:
    """With br_netfilter on (bridge-nf-call-iptables = 1), IPv4 frames
    bridged between two ports pass NF_INET_FORWARD, so a program there sees
    them (what the XDP/TC data path cannot, hence its refusal in
    "Bridges"), with the bridge as in and out device; with it off, not."""
    with ExitStack() as stack:
        host = stack.enter_context(namespace("nfhh")).name
        a = stack.enter_context(namespace("nfha")).name
        b = stack.enter_context(namespace("nfhb")).name
        _ip(host, "link", "add", "br0", "type", "bridge")
        for ns, port, addr in ((a, "pa", "10.97.0.1"), (b, "pb", "10.97.0.2")):
            _ip(host, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip(host, "link", "set", port, "master", "br0")
            _ip(host, "link", "set", port, "up")
            _ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip(ns, "link", "set", "eth0", "up")
        _ip(host, "link", "set", "br0", "up")
        sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        br0 = int(subprocess.run(["ip", "netns", "exec", host, "cat",
                                  "/sys/class/net/br0/ifindex"], capture_output=True,
                                 text=True, check=True).stdout)
        loaded = nfhook.load(dynptr=True, read_btf=True)
        stack.callback(loaded.close)
        stack.enter_context(nfhook.attached(loaded.prog_fd, host, nfhook.FORWARD, 0))
        counts = loaded.table("counts")
        with nsthread.inside(b):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(rx.close)
        rx.bind(("10.97.0.2", 9997))
        rx.settimeout(5.0)

        def send() -> int:
            """Datagrams to b's port 9997 that FORWARD counted."""
            with nsthread.inside(a):
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with tx:
                tx.sendto(b"x", ("10.97.0.2", 9997))
            rx.recv(16)   # delivered either way
            return sum(v.value for k, v in counts.items() if k.dport == 9997)

        subprocess.run(["ip", "netns", "exec", host, "sh", "-c", f"echo 1 > {sysctl}"],
                       check=True)
        assert send() == 1
        seen = loaded.table("last")[ctypes.c_int(nfhook.FORWARD)]
        assert seen.hook == nfhook.FORWARD
        assert (seen.in_ifindex, seen.out_ifindex) == (br0, br0)
        subprocess.run(["ip", "netns", "exec", host, "sh", "-c", f"echo 0 > {sysctl}"],
                       check=True)
        assert send() == 1   # bridged at layer 2 only: no hook saw it


@pytest.mark.parametrize("pkt", [
    Packet(src=1, dst=2, proto=6, sport=1234, dport=80, length=60, tcp_flags=0x12),
    Packet(src=1, dst=2, proto=6, sport=1, dport=2, length=1400, tcp_flags=0x10,
           ip_options=b"\x01" * 40),                        # IHL 15, past the window
    Packet(src=1, dst=2, proto=17, sport=53, dport=5353, length=40, ip_options=b"\x01" * 8),
    Packet(src=1, dst=2, proto=1, icmp_type=8, icmp_code=0, length=28),
    Packet(src=1, dst=2, proto=6, length=60, frag_offset=1),  # offset 1: "evil"
], ids=["tcp", "tcp_options_long", "udp_options", "icmp", "fragment"])
def test_classifier_parser_runs_on_a_header_window(pkt: Packet) -> None:
    """lib/parse.h, unchanged, over a stack copy of the packet's first
    bytes (bpf/nfhook_parse.c): the verifier accepts it in a netfilter
    program, and it reads what the packet holds (BPF_PROG_TEST_RUN, which
    the kernel has for this program type)."""
    loaded = _parse_program()
    nfhook_bench.test_run_ns(loaded.prog_fd, packets.frame(pkt), repeat=1)
    out = loaded.table("out")[ctypes.c_int(0)]
    f = out.f
    assert out.rc == 0
    assert (f.proto, f.length, f.fragment, f.evil) == (pkt.proto, pkt.length,
                                                       int(pkt.frag_offset > 0),
                                                       int(pkt.frag_offset == 1))
    if pkt.proto in (6, 17) and not pkt.frag_offset:
        assert (f.l4, f.sport, f.dport) == (1, pkt.sport, pkt.dport)
    if pkt.proto == 6 and not pkt.frag_offset:
        assert f.tcp_flags == pkt.tcp_flags
    if pkt.proto == 1:
        assert f.icmp == pkt.icmp_type << 8 | pkt.icmp_code


@functools.cache
def _parse_program() -> nfhook.Loaded:
    """Compiled once for the parametrized test (closed at exit)."""
    loaded = nfhook.load_function(nfhook.SOURCE.parent / "nfhook_parse.c", "nf_parse")
    atexit.register(loaded.close)
    return loaded


def test_root_tail_calls_the_active_generation() -> None:
    """The netfilter root (bpf/nfhook_root.c) tail-calls the program of
    the active slot: tail calls between netfilter programs work, so a
    generation switch is one map write, with the link untouched."""
    from bcc import BPF

    bpf = BPF(src_file=str(nfhook.SOURCE.parent / "nfhook_root.c").encode())
    try:
        fns = {name: bpf.load_func(name.encode(), nfhook.BPF_PROG_TYPE_NETFILTER,
                                   attach_type=nfhook.BPF_NETFILTER)
               for name in ("nf_root", "nf_leaf_drop", "nf_leaf_accept")}
        frame = packets.frame(Packet(src=1, dst=2, proto=17, sport=1, dport=2, length=28))
        root = fns["nf_root"].fd

        def verdict() -> int:
            return nfhook_bench.verdict(root, frame)

        assert verdict() == 1                      # empty slot: accept
        bpf[b"slots"][ctypes.c_int(0)] = ctypes.c_int(fns["nf_leaf_drop"].fd)
        bpf[b"slots"][ctypes.c_int(1)] = ctypes.c_int(fns["nf_leaf_accept"].fd)
        assert verdict() == 0                      # generation 0: drop
        bpf[b"active"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        assert verdict() == 1                      # switched
        ran = bpf[b"ran"]
        assert (ran[ctypes.c_int(0)].value, ran[ctypes.c_int(1)].value) == (1, 1)
    finally:
        bpf.cleanup()
