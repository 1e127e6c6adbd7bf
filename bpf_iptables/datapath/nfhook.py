"""Netfilter-hook programs (BPF_PROG_TYPE_NETFILTER): load and attach.

Feasibility prototype of a ``--mode netfilter`` (README, "Netfilter
hooks"): ``bpf/nfhook.c`` compiled by bcc with the running kernel's struct
offsets (``nfhook_btf``), loaded as program type 32 with expected attach
type BPF_NETFILTER, and attached by a BPF_NETFILTER link at an IPv4 hook
of one network namespace. A link belongs to the namespace of the thread
that creates it, so ``attach()`` makes the syscall inside the namespace
(``nsthread.inside``); closing the link's last fd detaches it.

bcc's ``load_func(..., attach_type=)`` passes the expected attach type
through libbpf; where that fails (an older bcc), ``load()`` loads the
instructions bcc produced (``dump_func``, map fds already patched in) by
raw bpf(2). A kfunc call is something bcc cannot emit at all: the C calls
fake helper ids, which are rewritten here into kfunc calls (the
instruction's src_reg BPF_PSEUDO_KFUNC_CALL, imm the callee's BTF id), and
loaded raw."""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .. import nsthread
from . import bpfsys
from .nfhook_btf import BTF, STRUCT, vmlinux

SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "nfhook.c"
FUNCTION = "nf_count"

BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45          # enum bpf_attach_type
NFPROTO_IPV4 = 2
# enum nf_inet_hooks
PRE_ROUTING, LOCAL_IN, FORWARD, LOCAL_OUT, POST_ROUTING = range(5)
NF_IP_PRI_NAT_DST = -100
NF_IP_PRI_FILTER = 0
BPF_F_NETFILTER_IP_DEFRAG = 1

# fake helper ids the C calls where it means a kfunc (far above real helpers)
KFUNCS = {"KFUNC_FROM_SKB": (0x7F001, "bpf_dynptr_from_skb"),
          "KFUNC_SLICE": (0x7F002, "bpf_dynptr_slice"),
          "KFUNC_RDONLY_CAST": (0x7F003, "bpf_rdonly_cast"),
          "KFUNC_CAST_TO_KERN_CTX": (0x7F004, "bpf_cast_to_kern_ctx")}
CALL, PSEUDO_KFUNC_CALL = 0x85, 2


def offsets(btf: BTF) -> dict[str, int]:
    """The -D offsets nfhook.c reads kernel structures with."""
    return {
        "OFF_SKB_HEAD": btf.offset_of("sk_buff", "head"),
        "OFF_SKB_NETWORK_HEADER": btf.offset_of("sk_buff", "network_header"),
        "OFF_SKB_MARK": btf.offset_of("sk_buff", "mark"),
        "OFF_SKB_LEN": btf.offset_of("sk_buff", "len"),
        "OFF_SKB_NFCT": btf.offset_of("sk_buff", "_nfct"),
        "OFF_STATE_HOOK": btf.offset_of("nf_hook_state", "hook"),
        "OFF_STATE_IN": btf.offset_of("nf_hook_state", "in"),
        "OFF_STATE_OUT": btf.offset_of("nf_hook_state", "out"),
        "OFF_DEV_IFINDEX": btf.offset_of("net_device", "ifindex"),
        "OFF_CT_STATUS": btf.offset_of("nf_conn", "status"),
        "OFF_CT_TIMEOUT": btf.offset_of("nf_conn", "timeout"),
        "OFF_CT_ORIG_DST_IP": btf.offset_of("nf_conn", "tuplehash[0].tuple.dst.u3"),
        "OFF_CT_ORIG_DST_PORT": btf.offset_of("nf_conn", "tuplehash[0].tuple.dst.u.all"),
        "OFF_CT_REPLY_SRC_IP": btf.offset_of("nf_conn", "tuplehash[1].tuple.src.u3"),
        "OFF_CT_REPLY_SRC_PORT": btf.offset_of("nf_conn", "tuplehash[1].tuple.src.u.all"),
        "NF_CONN_BTF_ID": btf.id_of(STRUCT, "nf_conn"),
    }


def cflags(dynptr: bool, read_btf: bool, defines: dict[str, int] | None = None) -> list[str]:
    flags = [f"-D{k}={v}" for k, v in offsets(vmlinux()).items()]
    flags += [f"-D{k}={imm:#x}" for k, (imm, _) in KFUNCS.items()]
    flags += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    return flags + [f"-DREAD_DYNPTR={int(dynptr)}", f"-DREAD_BTF={int(read_btf)}"]


def kfunc_calls(insns: bytes, btf: BTF) -> bytes:
    """Rewrite the calls of fake helper ids into kfunc calls."""
    ids = {imm: btf.func_id(name) for imm, name in KFUNCS.values()}
    code = bytearray(insns)
    for pos in range(0, len(code), 8):
        imm = int.from_bytes(code[pos + 4:pos + 8], "little", signed=True)
        if code[pos] == CALL and (code[pos + 1] >> 4) == 0 and imm in ids:
            code[pos + 1] = (PSEUDO_KFUNC_CALL << 4) | (code[pos + 1] & 0x0F)
            code[pos + 4:pos + 8] = ids[imm].to_bytes(4, "little")
    return bytes(code)


@dataclass
class Loaded:
    """A loaded nfhook program and its bcc module (which owns the maps)."""
    bpf: object
    prog_fd: int
    how: str          # "bcc" (load_func with attach_type) or "raw" (dump_func + bpf(2))
    _owned: bool = field(default=False, repr=False)

    def table(self, name: str):
        return self.bpf[name.encode()]  # type: ignore[index]

    def close(self) -> None:
        if self._owned:
            os.close(self.prog_fd)
            self._owned = False
        self.bpf.cleanup()  # type: ignore[attr-defined]


def load(dynptr: bool = False, read_btf: bool = False, defines: dict[str, int] | None = None,
         prefer_bcc: bool = True) -> Loaded:
    """Compile and load nf_count (OSError with ``verifier_log`` when the
    kernel refuses). ``dynptr``: packet bytes by kfuncs (always loaded
    raw: the kfunc rewrite); ``read_btf``: skb and hook-state fields by
    plain loads and the nf_conn by ``bpf_rdonly_cast`` (kfunc: loaded raw
    too); ``defines``: more -D flags (the bench's builds)."""
    from bcc import BPF   # imported late: only loading needs bcc

    bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags(dynptr, read_btf, defines))
    try:
        if prefer_bcc and not dynptr and not read_btf:
            try:
                fn = bpf.load_func(FUNCTION.encode(), BPF_PROG_TYPE_NETFILTER,
                                   attach_type=BPF_NETFILTER)
                return Loaded(bpf, fn.fd, "bcc")
            except Exception:   # bcc raises a bare Exception on a refused load
                pass
        insns = bytes(bpf.dump_func(FUNCTION.encode()))
        if dynptr or read_btf:
            insns = kfunc_calls(insns, vmlinux())
        fd = bpfsys.prog_load(BPF_PROG_TYPE_NETFILTER, insns, "GPL", FUNCTION,
                              expected_attach_type=BPF_NETFILTER, log_size=1 << 20)
        return Loaded(bpf, fd, "raw", _owned=True)
    except BaseException:
        bpf.cleanup()
        raise


def load_function(source: Path, function: str, defines: dict[str, int] | None = None) -> Loaded:
    """Another netfilter-hook source of ``bpf/`` (the kernel offsets, the
    fake kfunc ids and ``-I bpf`` given), loaded raw with its kfunc calls."""
    from bcc import BPF

    bpf = BPF(src_file=str(source).encode(),
              cflags=[*cflags(False, False, defines), f"-I{SOURCE.parent}"])
    try:
        insns = kfunc_calls(bytes(bpf.dump_func(function.encode())), vmlinux())
        fd = bpfsys.prog_load(BPF_PROG_TYPE_NETFILTER, insns, "GPL", function,
                              expected_attach_type=BPF_NETFILTER, log_size=1 << 22)
        return Loaded(bpf, fd, "raw", _owned=True)
    except BaseException:
        bpf.cleanup()
        raise


class _NetfilterLinkAttr(ctypes.Structure):
    """union bpf_attr's link_create with its netfilter member."""
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pf", ctypes.c_uint32), ("hooknum", ctypes.c_uint32),
                ("priority", ctypes.c_int32), ("nf_flags", ctypes.c_uint32),
                ("_pad", ctypes.c_uint64 * 4)]


def link_create(prog_fd: int, hooknum: int, priority: int, pf: int = NFPROTO_IPV4,
                nf_flags: int = 0) -> int:
    """A BPF_NETFILTER link in the calling thread's namespace (its fd)."""
    attr = _NetfilterLinkAttr(prog_fd=prog_fd, attach_type=BPF_NETFILTER, pf=pf,
                              hooknum=hooknum, priority=priority, nf_flags=nf_flags)
    return bpfsys._bpf(bpfsys.BPF_LINK_CREATE, attr, "netfilter link")


@dataclass
class Link:
    """A netfilter link's fd. Closing the last fd detaches the program
    (unregisters the hook) unless the link is pinned in bpffs: then
    removing the pin does."""
    fd: int

    def pin(self, path: str) -> None:
        bpfsys.obj_pin(self.fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def link_info(fd: int) -> tuple[int, int, int]:
    """(pf, hooknum, priority) of a netfilter link: struct bpf_link_info
    is type (10: netfilter), id, prog_id, then pf, hooknum, priority."""
    info = bpfsys._info(fd)
    if info[0] != 10:
        raise ValueError(f"link type {info[0]}, not netfilter")
    return info[4], info[5], ctypes.c_int32(info[6]).value


@contextmanager
def attached(prog_fd: int, netns: str, hooknum: int = LOCAL_IN,
             priority: int = NF_IP_PRI_FILTER) -> Iterator[Link]:
    """The program at ``hooknum`` of namespace ``netns`` while the block
    runs; the link fd is closed on the way out, also on failure."""
    with nsthread.inside(netns):
        link = Link(link_create(prog_fd, hooknum, priority))
    try:
        yield link
    finally:
        link.close()
