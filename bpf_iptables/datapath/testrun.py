"""BPF_PROG_TEST_RUN through ctypes on the bpf(2) syscall.

Runs a loaded XDP program on one frame without attaching it anywhere:
the kernel builds an xdp_buff from the bytes, runs the program ``repeat``
times and returns the last verdict and the mean run time in ns. With an
ingress ifindex the program sees that device as ctx->ingress_ifindex (it
must exist in the caller's network namespace); without, the loopback."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

SYS_BPF = 321  # x86_64
BPF_PROG_TEST_RUN = 10
XDP_VERDICTS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _TestAttr(ctypes.Structure):
    """The BPF_PROG_TEST_RUN member of union bpf_attr."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _XdpMd(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


@dataclass
class RunResult:
    verdict: int        # XDP action code
    duration_ns: int    # mean per run, as the kernel measures it

    @property
    def name(self) -> str:
        return XDP_VERDICTS.get(self.verdict, str(self.verdict))


def test_run(prog_fd: int, frame: bytes, repeat: int = 1, ifindex: int = 0) -> RunResult:
    return test_run_out(prog_fd, frame, repeat, ifindex)[0]


def test_run_out(prog_fd: int, frame: bytes, repeat: int = 1,
                 ifindex: int = 0) -> tuple[RunResult, bytes]:
    """``test_run`` and the frame as the program left it (a REJECT reply)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 256)
    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.data_in = ctypes.addressof(data_in)
    attr.data_size_in = len(frame)
    attr.data_out = ctypes.addressof(data_out)
    attr.data_size_out = len(data_out)
    attr.repeat = repeat
    ctx = _XdpMd()
    if ifindex:
        ctx.data, ctx.data_end, ctx.ingress_ifindex = 0, len(frame), ifindex
        attr.ctx_in = ctypes.addressof(ctx)
        attr.ctx_size_in = ctypes.sizeof(ctx)
    rc = _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return RunResult(attr.retval, attr.duration), data_out.raw[:attr.data_size_out]


# -- netfilter-hook programs (--mode netfilter) -------------------------------------

NF_VERDICTS = {0: "DROP", 1: "ACCEPT"}


def test_run_nf(prog_fd: int, frame: bytes, hooknum: int, repeat: int = 1) -> RunResult:
    """Run a BPF_PROG_TYPE_NETFILTER program on ``frame`` at netfilter hook
    ``hooknum`` (bpf_prog_test_run_nf: the kernel takes only ``hook`` and
    ``pf`` of the struct nf_hook_state given as ctx_in; the input and/or
    output device is the loopback; no conntrack entry, mark 0). The
    verdict is NF_DROP (0) or NF_ACCEPT (1)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    attr = _TestAttr()
    attr.prog_fd, attr.repeat = prog_fd, repeat
    attr.data_in, attr.data_size_in = ctypes.addressof(data_in), len(frame)
    state = (ctypes.c_uint8 * 48)()   # struct nf_hook_state: hook, pf first
    state[0], state[1] = hooknum, 2   # NFPROTO_IPV4
    attr.ctx_in, attr.ctx_size_in = ctypes.addressof(state), ctypes.sizeof(state)
    rc = _libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return RunResult(attr.retval, attr.duration)
