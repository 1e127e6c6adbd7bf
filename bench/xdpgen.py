"""Live traffic, fast: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

    python -m bench.xdpgen '{"dev": "c0", "frame": "<hex>", "seconds": 0.5}'

Run by bench/live.py in the client namespace, pinned to one CPU, instead of
the AF_PACKET sender (bench/trafficgen.py) when the live generator is
"xdp" (field notes §3: ~15 Mpps into a veth against ~1.8 for AF_PACKET).
An XDP program that only returns XDP_TX runs in live-frame mode on ``dev``:
each run transmits the frame out of ``dev``, i.e. into the veth peer's
receive ring (the peer needs NAPI: an XDP program, or GRO on, which
live.py sets). The kernel runs frames in batches of 64 with bottom halves
off and flushes each batch to the peer; re-enabling bottom halves runs the
peer's receive (NAPI poll, its XDP program or the skb path and netfilter)
on this CPU, billed to this thread (no IRQ time accounting here). So the
thread's CPU time covers generating, the veth and the whole receive, with
a generator cost of tens of ns instead of the AF_PACKET sender's ~1.3 us.
The frames are never modified by the receivers measured (INPUT, dropped),
so the recycled live-frame pages need no rewriting.
Prints {"sent": N, "elapsed_s": wall, "cpu_s": thread CPU time, "untimed":
the warm-up frames sent before the clock started}."""
from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import time

from bpf_iptables.datapath.testrun import BPF_PROG_TEST_RUN, SYS_BPF, _TestAttr, _XdpMd

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
BPF_PROG_LOAD, BPF_PROG_TYPE_XDP, XDP_TX = 5, 6, 3
# r0 = XDP_TX; exit -- two instructions, loaded without bcc (no compile per run)
XDP_TX_INSNS = bytes([0xB7, 0, 0, 0, XDP_TX, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])
WARM_UP = 64             # untimed frames sent first (reported: the receiver counts them)
CALL_SECONDS = 0.1       # one syscall's target length: setup amortised, deadline kept

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _LoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD member of union bpf_attr, up to prog_name."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("_rest", ctypes.c_char * 64)]


def load_xdp_tx() -> int:
    insns = ctypes.create_string_buffer(XDP_TX_INSNS, len(XDP_TX_INSNS))
    license = ctypes.create_string_buffer(b"GPL")
    attr = _LoadAttr(prog_type=BPF_PROG_TYPE_XDP, insn_cnt=len(XDP_TX_INSNS) // 8,
                     insns=ctypes.addressof(insns), license=ctypes.addressof(license),
                     prog_name=b"bench_xdp_tx")
    fd = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_LOAD: {os.strerror(err)}")
    return fd


def run_live(prog_fd: int, frame: bytes, ifindex: int, repeat: int) -> None:
    data_in = ctypes.create_string_buffer(frame, len(frame))
    ctx = _XdpMd()
    ctx.data, ctx.data_end, ctx.ingress_ifindex = 0, len(frame), ifindex
    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.data_in = ctypes.addressof(data_in)
    attr.data_size_in = len(frame)
    attr.repeat = repeat
    attr.ctx_in = ctypes.addressof(ctx)
    attr.ctx_size_in = ctypes.sizeof(ctx)
    attr.flags = BPF_F_TEST_XDP_LIVE_FRAMES
    rc = _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN (live frames): {os.strerror(err)}")


def send_for(dev: str, frame: bytes, seconds: float) -> tuple[int, float, float]:
    fd = load_xdp_tx()
    ifindex = socket.if_nametoindex(dev)
    run_live(fd, frame, ifindex, WARM_UP)     # warm-up, and fail early
    sent, repeat = 0, 256
    cpu_start = time.thread_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        t0 = time.perf_counter()
        run_live(fd, frame, ifindex, repeat)
        sent += repeat
        now = time.perf_counter()
        if now >= deadline:
            return sent, now - start, time.thread_time() - cpu_start
        # size the next call to CALL_SECONDS (or what is left), from this one's rate
        rate = repeat / max(now - t0, 1e-6)
        repeat = max(64, min(int(rate * min(CALL_SECONDS, deadline - now)), 50_000_000))


SIOCETHTOOL, ETHTOOL_SGRO = 0x8946, 0x2C


class _EthtoolValue(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32)]


class _IfReq(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("data", ctypes.c_void_p),
                ("_pad", ctypes.c_char * 16)]


def enable_gro(dev: str) -> None:
    """GRO on for ``dev`` (what `ethtool -K dev gro on` does; ethtool is not
    installed here): a veth with GRO on has NAPI, so it can take the
    generator's XDP_TX frames without an XDP program of its own."""
    import fcntl

    value = _EthtoolValue(ETHTOOL_SGRO, 1)
    req = _IfReq(dev.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, bytes(req))


def main(argv: list[str]) -> int:
    if argv[0] == "--gro":
        enable_gro(argv[1])
        return 0
    spec = json.loads(argv[0])
    sent, elapsed, cpu = send_for(spec["dev"], bytes.fromhex(spec["frame"]), spec["seconds"])
    json.dump({"sent": sent, "elapsed_s": elapsed, "cpu_s": cpu, "untimed": WARM_UP},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
