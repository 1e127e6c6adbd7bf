"""REJECT hand-off prototype: a netfilter program at LOCAL_OUT records
the skb it rejects, a TC egress program acts on it (``bpf/nfhook_reject.c``;
README "Netfilter hooks", REJECT option 1): the TC program builds the
reply with the data path's ``lib/reject.h`` and turns it into the stack.

Both functions come from one bcc module, so they share its maps; both have
kfunc calls and are loaded raw (``nfhook.kfunc_calls``). The TC program
is attached by a TCX egress link made inside the namespace."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import nsthread
from . import bpfsys, maygoto, nfhook
from .nfhook_btf import vmlinux

SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "nfhook_reject.c"
SCHED_CLS, SOCKET_FILTER = 3, 1


@dataclass
class Handoff:
    bpf: object
    nf_fd: int      # nf_reject_out, BPF_PROG_TYPE_NETFILTER
    tc_fd: int      # tc_take_reject, SCHED_CLS
    sf_fd: int      # sf_take_reject, SOCKET_FILTER (for iptables' -m bpf)

    def table(self, name: str):
        return self.bpf[name.encode()]  # type: ignore[index]

    def close(self) -> None:
        for fd in (self.nf_fd, self.tc_fd, self.sf_fd):
            if fd >= 0:
                os.close(fd)
        self.nf_fd = self.tc_fd = self.sf_fd = -1
        self.bpf.cleanup()  # type: ignore[attr-defined]


def load() -> Handoff:
    from bcc import BPF

    flags = [f"-D{k}={imm:#x}" for k, (imm, _) in nfhook.KFUNCS.items()]
    flags.append(f"-DHAVE_MAY_GOTO={int(maygoto.available())}")  # lib/loop.h
    bpf = BPF(src_file=str(SOURCE).encode(), cflags=[*flags, f"-I{SOURCE.parent}"])
    fds: list[int] = []
    try:
        for name, prog_type, attach in (("nf_reject_out", nfhook.BPF_PROG_TYPE_NETFILTER,
                                         nfhook.BPF_NETFILTER),
                                        ("tc_take_reject", SCHED_CLS, 0),
                                        ("sf_take_reject", SOCKET_FILTER, 0)):
            insns = nfhook.kfunc_calls(bytes(bpf.dump_func(name.encode())), vmlinux())
            fds.append(bpfsys.prog_load(prog_type, insns, "GPL", name,
                                        expected_attach_type=attach, log_size=1 << 20))
        return Handoff(bpf, *fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        bpf.cleanup()
        raise


@contextmanager
def tc_egress(prog_fd: int, netns: str, device: str) -> Iterator[int]:
    """``prog_fd`` at TCX egress of ``device`` in ``netns`` while the block
    runs (the link fd closed after, also on failure)."""
    with nsthread.inside(netns):
        ifindex = socket.if_nametoindex(device)
        fd = bpfsys.link_create(prog_fd, ifindex, bpfsys.BPF_TCX_EGRESS)
    try:
        yield fd
    finally:
        os.close(fd)
