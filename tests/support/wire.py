"""Hand-made IPv4 frames on a real link: sent from one namespace with an
AF_PACKET socket, seen delivered in another by raw IP sockets.

Any source address can be sent this way (no route, no ARP, no socket
state), so a packet can sit anywhere in a rule's box. The receiving
namespace must own the destination address (``ip addr add``) and accept
foreign sources (rp_filter off); a raw IP socket gets a copy of every
packet of its protocol that the stack delivers locally (before the
transport layer looks at checksums or ports), so what it sees is exactly
what passed the filter."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from contextlib import ExitStack

from bpf_iptables.datapath.packets import frame
from bpf_iptables.netaddr import int_to_ip
from bpf_iptables.nsthread import inside
from bpf_iptables.reference.packet import Packet

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module

# tests name it netns(); one implementation for tests, bench and demo
netns = inside


def accept_foreign_sources(server: str, dev: str, addresses: set[int] = frozenset()) -> None:
    """Let namespace ``server`` take packets from any source (rp_filter off)
    on ``dev``, to ``addresses`` (added to its lo) as its own."""
    run = ["ip", "netns", "exec", server, "sysctl", "-qw"]
    for key in ("all", "default", "lo", dev):
        subprocess.run([*run, f"net.ipv4.conf.{key}.rp_filter=0"], check=True)
    if addresses:
        batch = "".join(f"addr add {int_to_ip(a)}/32 dev lo\n" for a in sorted(addresses))
        subprocess.run(["ip", "-n", server, "-batch", "-"], input=batch, text=True, check=True)


def mac_of(ns: str, dev: str) -> bytes:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def frame_to(pkt: Packet, dst_mac: bytes, src_mac: bytes) -> bytes:
    return dst_mac + src_mac + frame(pkt)[12:]


def send_and_collect(client: str, dev: str, server: str, server_dev: str,
                     packets: list[tuple[Packet, int]], wait: float = 1.0) -> dict[int, int]:
    """Send each packet ``copies`` times from ``client``'s ``dev`` to the
    peer ``server_dev``; how many copies of each (by IP id, which must be
    unique and non-zero) the server's stack delivered."""
    dst_mac, src_mac = mac_of(server, server_dev), mac_of(client, dev)
    protos = sorted({pkt.proto for pkt, _ in packets})
    seen: dict[int, int] = {}
    with ExitStack() as stack:
        receivers = []
        with netns(server):
            for proto in protos:
                rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_RAW, proto))
                # room for every copy: a full default buffer (~200 KiB, a few
                # hundred small frames) would drop what the stack delivered
                rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
                rx.setblocking(False)
                receivers.append(rx)
        with netns(client):
            tx = stack.enter_context(socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        tx.bind((dev, 0))
        ids = {pkt.ip_id for pkt, _ in packets}
        for pkt, copies in packets:
            data = frame_to(pkt, dst_mac, src_mac)
            for _ in range(copies):
                tx.send(data)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            got = False
            for rx in receivers:
                try:
                    ip = rx.recv(65535)
                except BlockingIOError:
                    continue
                got = True
                ip_id = int.from_bytes(ip[4:6], "big")
                if ip_id in ids:
                    seen[ip_id] = seen.get(ip_id, 0) + 1
            if not got:
                time.sleep(0.02)
    return seen
