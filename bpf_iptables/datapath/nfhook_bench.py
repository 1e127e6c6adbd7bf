"""What a netfilter-hook program costs per packet (the README's
"Netfilter hooks" numbers): ``python -m bpf_iptables.datapath.nfhook_bench``.

Two measurements, each the minimum of several runs (the machine is shared):
- BPF_PROG_TEST_RUN, which the kernel has for this program type
  (``bpf_prog_test_run_nf``: an skb built from the frame, the hook state
  from ctx_in; no conntrack entry, no mark): ns per run of each build;
- a live UDP flow through a veth pair into a namespace: the program's
  own cost as it measures it (``bpf_ktime_get_ns`` at entry and exit,
  summed in its ``cost`` map; two clock reads included), and the sender's
  wall time per datagram (the receive path runs in its softirq) with no
  hook, the program at LOCAL_IN, and iptables-legacy's INPUT with one
  rule that does not match, for scale.
Everything runs in namespaces this process creates and deletes."""
from __future__ import annotations

import ctypes
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack, contextmanager
from typing import Iterator

from .. import nsthread
from . import nfhook, packets, testrun
from ..reference.packet import Packet

BUILDS = {   # name -> load() arguments
    "empty": {"defines": {"STOP_AFTER": 0}},
    "probe_read, packet only": {"defines": {"STOP_AFTER": 1}},
    "dynptr, packet only": {"dynptr": True, "defines": {"STOP_AFTER": 1}},
    "probe_read, all": {},
    "dynptr+btf, all": {"dynptr": True, "read_btf": True},
}
SERVER, CLIENT = "10.98.0.2", "10.98.0.1"


def test_run_ns(prog_fd: int, frame: bytes, repeat: int = 100_000) -> int:
    """Mean ns per run at LOCAL_IN (ctx_in: struct nf_hook_state's hook
    and pf, the only members the kernel takes from user space)."""
    return _test_run(prog_fd, frame, repeat)[1]


def verdict(prog_fd: int, frame: bytes) -> int:
    """The program's return value for one run at LOCAL_IN."""
    return _test_run(prog_fd, frame, 1)[0]


def _test_run(prog_fd: int, frame: bytes, repeat: int) -> tuple[int, int]:
    attr = testrun._TestAttr()
    data = ctypes.create_string_buffer(frame, len(frame))
    attr.prog_fd, attr.repeat = prog_fd, repeat
    attr.data_in, attr.data_size_in = ctypes.addressof(data), len(frame)
    state = (ctypes.c_uint8 * 48)()
    state[0], state[1] = nfhook.LOCAL_IN, nfhook.NFPROTO_IPV4
    attr.ctx_in, attr.ctx_size_in = ctypes.addressof(state), ctypes.sizeof(state)
    if testrun._libc.syscall(testrun.SYS_BPF, testrun.BPF_PROG_TEST_RUN, ctypes.byref(attr),
                             ctypes.sizeof(attr)) < 0:
        raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
    return attr.retval, attr.duration


def bench_test_run(runs: int = 5) -> dict[str, int]:
    frame = packets.frame(Packet(src=0x0A620001, dst=0x0A620002, proto=6, sport=40000,
                                 dport=8080, length=60, tcp_flags=2))
    out = {}
    for name, kwargs in BUILDS.items():
        kw = dict(kwargs)
        kw["defines"] = {"MEASURE_COST": 0, **kw.get("defines", {})}
        loaded = nfhook.load(**kw)
        try:
            out[name] = min(test_run_ns(loaded.prog_fd, frame) for _ in range(runs))
        finally:
            loaded.close()
    return out


@contextmanager
def veth_pair() -> Iterator[tuple[str, str]]:
    """(client, server) namespaces joined by a veth pair; deleted after."""
    names = [f"nfb{side}-{uuid.uuid4().hex[:8]}" for side in "cs"]
    with ExitStack() as stack:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            stack.callback(subprocess.run, ["ip", "netns", "del", name], check=False)
        client, server = names
        ip = ["ip", "-n", client]
        subprocess.run([*ip, "link", "add", "c0", "type", "veth", "peer", "name", "s0",
                        "netns", server], check=True)
        subprocess.run([*ip, "addr", "add", f"{CLIENT}/24", "dev", "c0"], check=True)
        subprocess.run(["ip", "-n", server, "addr", "add", f"{SERVER}/24", "dev", "s0"],
                       check=True)
        for ns, dev in ((client, "c0"), (server, "s0")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        yield client, server


def send_us(client: str, server: str, count: int = 20_000, runs: int = 5) -> float:
    """Sender's wall time per 64-byte datagram, min over ``runs``."""
    with nsthread.inside(server):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with nsthread.inside(client):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((SERVER, 9000))
        rx.setblocking(False)
        payload = bytes(36)
        tx.sendto(payload, (SERVER, 9000))   # neighbour resolved before timing
        time.sleep(0.05)
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(count):
                tx.sendto(payload, (SERVER, 9000))
            best = min(best, (time.perf_counter() - start) / count * 1e6)
            try:
                while rx.recv(64):
                    pass
            except BlockingIOError:
                pass
        return best
    finally:
        rx.close()
        tx.close()


def bench_live() -> dict[str, float]:
    out: dict[str, float] = {}
    with veth_pair() as (client, server):
        out["no hook: us/datagram"] = send_us(client, server)
        for name, kwargs in (("empty", {"defines": {"STOP_AFTER": 0}}), ("probe_read", {}),
                             ("dynptr+btf", {"dynptr": True, "read_btf": True})):
            loaded = nfhook.load(**kwargs)
            try:
                with nfhook.attached(loaded.prog_fd, server, nfhook.LOCAL_IN, 0):
                    out[f"{name} at LOCAL_IN: us/datagram"] = send_us(client, server)
                cost = loaded.table("cost")[ctypes.c_int(0)]
                ns, n = sum(c.ns for c in cost), sum(c.packets for c in cost)
                if n:   # the empty build measures nothing
                    out[f"{name}: in-program ns/packet (live)"] = ns / n
            finally:
                loaded.close()
        subprocess.run(["ip", "netns", "exec", server, "iptables-legacy", "-A", "INPUT",
                        "-p", "tcp", "--dport", "1", "-j", "DROP"], check=True)
        out["iptables-legacy INPUT, 1 rule: us/datagram"] = send_us(client, server)
    return out


def main() -> None:
    for name, ns in bench_test_run().items():
        print(f"TEST_RUN {name}: {ns} ns/run")
    for name, value in bench_live().items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
