"""Does this kernel have may_goto (Linux 6.9+)?

The classifier's scan loop and xdp_reject's checksum loop are may_goto
loops where the kernel has it (cheap to verify, ``bpf/lib/loop.h``) and
bounded ``for`` loops where it does not (Debian 12's 6.1 refuses opcode
0xe5 as unknown). The answer comes from loading a three-instruction XDP
program with a may_goto, once per process: the kernel does not change
under a running process.

``BPF_IPTABLES_NO_MAY_GOTO=1`` answers "no" without asking the kernel
(tests of the fallback on a newer kernel); it is read at every call, so
a test can set it for one compile."""
from __future__ import annotations

import functools
import os
import struct

from . import bpfsys

ENV = "BPF_IPTABLES_NO_MAY_GOTO"
XDP = 6  # BPF_PROG_TYPE_XDP

# r0 = XDP_PASS; may_goto +1; r0 = XDP_PASS; exit. may_goto is
# BPF_JMP | BPF_JCOND (0xe5) with src_reg BPF_MAY_GOTO (0), dst_reg and imm
# 0 and an offset that must not be 0 (the verifier refuses may_goto +0).
_PROBE = b"".join(struct.pack("<BBhi", op, regs, off, imm) for op, regs, off, imm in (
    (0xB7, 0x00, 0, 2),   # BPF_ALU64 | BPF_MOV | BPF_K, r0
    (0xE5, 0x00, 1, 0),   # may_goto +1
    (0xB7, 0x00, 0, 2),
    (0x95, 0x00, 0, 0),   # BPF_JMP | BPF_EXIT
))


@functools.cache
def kernel_has_may_goto() -> bool:
    """The kernel's own answer, asked once per process."""
    try:
        fd = bpfsys.prog_load(XDP, _PROBE, "GPL", "may_goto_probe")
    except OSError:
        return False  # EINVAL "unknown opcode e5" before 6.9
    os.close(fd)
    return True


def available() -> bool:
    """Compile the loops with may_goto (``-DHAVE_MAY_GOTO=1``)?"""
    if os.environ.get(ENV, "") not in ("", "0"):
        return False
    return kernel_has_may_goto()
