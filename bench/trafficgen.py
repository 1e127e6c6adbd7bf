"""Live traffic: one frame sent over and over through AF_PACKET + sendmmsg.

    python -m bench.trafficgen '{"dev": "c0", "frame": "<hex>", "seconds": 0.5}'

Run by bench/live.py in the client namespace, pinned to one CPU. With
PACKET_QDISC_BYPASS each frame goes straight to the veth's xmit, which
hands it to the peer (backlog or, when the peer has XDP, its NAPI ring);
the receive softirq then runs on the same CPU when the sender re-enables
bottom halves. So the sender's time covers sending *and* the receiving
namespace's processing (classification included); the receiver's counters
tell whether every frame was processed (counted == sent). Both the wall
time and the thread's CPU time are reported: on a shared machine other
tasks take turns on the pinned CPU, which only the wall time sees. (Without
CONFIG_IRQ_TIME_ACCOUNTING softirq work done in the thread's context is
billed to the thread.)
Prints {"sent": N, "elapsed_s": wall, "cpu_s": thread CPU time} on stdout."""
from __future__ import annotations

import ctypes
import json
import socket
import sys
import time

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
BATCH = 64          # frames per sendmmsg; small enough to stop near the deadline


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def send_for(dev: str, frame: bytes, seconds: float) -> tuple[int, float, float]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        sock.bind((dev, 0))
        buf = ctypes.create_string_buffer(frame, len(frame))
        iov = IoVec(ctypes.addressof(buf), len(frame))
        msgs = (MMsgHdr * BATCH)()
        for m in msgs:
            m.hdr.iov = ctypes.pointer(iov)
            m.hdr.iovlen = 1
        fd = sock.fileno()
        sent = 0
        cpu_start = time.thread_time()
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            n = _libc.sendmmsg(fd, msgs, BATCH, 0)
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, "sendmmsg")
            sent += n
            now = time.perf_counter()
            if now >= deadline:
                return sent, now - start, time.thread_time() - cpu_start
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    sent, elapsed, cpu = send_for(spec["dev"], bytes.fromhex(spec["frame"]), spec["seconds"])
    json.dump({"sent": sent, "elapsed_s": elapsed, "cpu_s": cpu}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
