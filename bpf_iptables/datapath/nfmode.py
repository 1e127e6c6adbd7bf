"""``--mode netfilter``: the classifier at netfilter's own hooks.

The classifier (``bpf/filter.c`` built with ``-DHOOK_NF``) runs as a
BPF_PROG_TYPE_NETFILTER program where iptables' filter table runs:
LOCAL_IN (INPUT), FORWARD and LOCAL_OUT (OUTPUT) at priority 0, after
conntrack, mangle and the nat table's DNAT. Root programs
(``bpf/nfroot.c``), one per hook, are linked once (pinned
``link/nf-<hook>``); they tail-call the active generation's classifier
from ``root/nf_slots`` (a netfilter link cannot be updated), so an update
switches every hook with one write of ``root/active_map``, as in the
other modes. No interfaces, no route lookup, no watcher needed.

This module: the build flags (kernel struct offsets from BTF, kfunc
ids), the raw load (bcc compiles; the kfunc calls are patched in and the
program loaded with its expected attach type by bpf(2)), the roots and
their links, and what the mode refuses."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import NotSupported
from . import bpfsys
from . import nfhook
from .compiler import Compiled

MODE = "netfilter"
ROOT_SOURCE = "nfroot.c"
# hook -> (root function, netfilter hook number)
ROOTS = {"INPUT": ("nf_root_input", nfhook.LOCAL_IN),
         "FORWARD": ("nf_root_forward", nfhook.FORWARD),
         "OUTPUT": ("nf_root_output", nfhook.LOCAL_OUT)}
ROOT_MAPS = ("active_map", "nf_slots")
PRIORITY = nfhook.NF_IP_PRI_FILTER
# fields the HOOK_NF build cannot fill in (yet): the made-up Ethernet
# header has no real MACs; the eBPF tracker is not used in this mode
UNSUPPORTED_FIELDS = {"mac": "-m mac", "pkttype": "-m pkttype"}


def check_kernel() -> None:
    """NotSupported unless the kernel has what the mode needs: BTF (the
    struct offsets) and the netfilter program type's kfuncs (6.4+)."""
    try:
        btf = nfhook.vmlinux()
        btf.func_id("bpf_dynptr_from_skb")
        btf.offset_of("bpf_nf_ctx", "skb")
    except (OSError, KeyError, ValueError) as exc:
        raise NotSupported(f"--mode netfilter on this kernel (needs BTF and "
                           f"BPF_PROG_TYPE_NETFILTER, Linux 6.4+: {exc})") from None


def cflags(conntrack: bool = False) -> list[str]:
    """The -D flags of a HOOK_NF build: the struct offsets of the running
    kernel (BTF) and the fake kfunc ids (nfhook.kfunc_calls); with
    ``conntrack`` (the ctstate field) the kernel's conntrack entry is read
    (NF_CT, lib/nfct.h)."""
    flags = ["-DHOOK_NF=1"] + nfhook.cflags(False, False)
    if conntrack:
        from ..conntrack.hz import kernel_hz

        btf = nfhook.vmlinux()
        flags += ["-DNF_CT=1", f"-DCT_HZ={kernel_hz()}"] + [
            f"-D{k}={btf.offset_of('nf_conn', path)}" for k, path in CT_OFFSETS.items()]
    return flags


# nf_conn members lib/nfct.h reads: both tuples (xt_conntrack's --ctorig*/
# --ctrepl*), the protocol
CT_OFFSETS = {f"OFF_CT_{d}_{end}_{what}": f"tuplehash[{i}].tuple.{end.lower()}.{member}"
              for i, d in enumerate(("ORIG", "REPL")) for end in ("SRC", "DST")
              for what, member in (("IP", "u3"), ("PORT", "u.all"))}
CT_OFFSETS["OFF_CT_PROTONUM"] = "tuplehash[0].tuple.dst.protonum"


def load_raw(bpf, function: str, log_size: int = 1 << 22) -> int:
    """Load ``function`` of bcc module ``bpf`` as a netfilter program (its
    kfunc calls patched in); OSError with ``verifier_log`` on refusal."""
    insns = nfhook.kfunc_calls(bytes(bpf.dump_func(function.encode())), nfhook.vmlinux())
    return bpfsys.prog_load(nfhook.BPF_PROG_TYPE_NETFILTER, insns, "GPL", function,
                            expected_attach_type=nfhook.BPF_NETFILTER, log_size=log_size)


def refuse(compiled: dict[str, Compiled]) -> None:
    """NotSupported (exit 2) for what the netfilter build cannot enforce."""
    from ..extensions.reject import VERDICT_REJECT

    for hook, c in compiled.items():
        for name, what in UNSUPPORTED_FIELDS.items():
            if name in c.shape.fields:
                raise NotSupported(f"{what} in {hook} in --mode netfilter")
        if c.shape.nlogs:
            raise NotSupported(f"-j LOG in {hook} in --mode netfilter")
        if c.shape.nhashlimits:
            raise NotSupported(f"-m hashlimit in {hook} in --mode netfilter")
        if c.shape.nsets:
            raise NotSupported(f"-m set in {hook} in --mode netfilter")
        if any(e.verdict & VERDICT_REJECT and e.verdict != 0xFFFFFFFF for e in c.entries):
            raise NotSupported(f"-j REJECT in {hook} in --mode netfilter")


# -- roots and links ----------------------------------------------------------------------

def load_roots(root_dir: Path, bpf_dir: Path) -> dict[str, int]:
    """Compile bpf/nfroot.c, load the three roots, pin them with their maps
    in ``root_dir``; function -> program id."""
    from bcc import BPF

    bpf = BPF(src_file=str(bpf_dir / ROOT_SOURCE).encode(), cflags=[f"-I{bpf_dir}"])
    fds: dict[str, int] = {}
    try:
        for function, _ in ROOTS.values():
            fds[function] = load_raw(bpf, function, 1 << 16)
        root_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        for name, fd in fds.items():
            bpfsys.obj_pin(fd, str(root_dir / name))
        tables = {name: bpf[name.encode()].get_fd() for name in ROOT_MAPS}
        for name, fd in tables.items():
            bpfsys.obj_pin(fd, str(root_dir / name))
        return {name: bpfsys.obj_id(fd) for name, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)
        bpf.cleanup()


def link_pin(link_dir: Path, hook: str) -> Path:
    return link_dir / f"nf-{hook.lower()}"


def ensure_links(link_dir: Path, root_dir: Path, roots: dict[str, int]) -> None:
    """A pinned link of each root at its hook in this (the calling
    thread's) namespace; links already there with the right root are kept.
    All or nothing: a failure takes back the links this call made."""
    link_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made: list[Path] = []
    try:
        for hook, ok in check_links(link_dir, roots).items():
            if ok:
                continue
            function, hooknum = ROOTS[hook]
            pin = link_pin(link_dir, hook)
            remove(pin)
            prog = bpfsys.obj_get(str(root_dir / function))
            try:
                fd = nfhook.link_create(prog, hooknum, PRIORITY)
            finally:
                os.close(prog)
            try:
                bpfsys.obj_pin(fd, str(pin))
                made.append(pin)
            finally:
                os.close(fd)
    except OSError:
        for pin in made:
            remove(pin)
        raise


def remove(pin: Path) -> None:
    """Detach and unpin one link (nothing there: nothing to do)."""
    try:
        fd = bpfsys.obj_get(str(pin))
    except OSError:
        pin.unlink(missing_ok=True)
        return
    try:
        bpfsys.link_detach(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    pin.unlink(missing_ok=True)


def check_links(link_dir: Path, roots: dict[str, int]) -> dict[str, bool]:
    """hook -> whether its link is pinned, at the right netfilter hook and
    priority, with our root."""
    out = {}
    for hook, (function, hooknum) in ROOTS.items():
        try:
            fd = bpfsys.obj_get(str(link_pin(link_dir, hook)))
        except OSError:
            out[hook] = False
            continue
        try:
            info = bpfsys._info(fd)
            out[hook] = (info[0] == 10 and info[2] == roots.get(function)
                         and nfhook.link_info(fd) == (nfhook.NFPROTO_IPV4, hooknum, PRIORITY))
        except (OSError, ValueError):
            out[hook] = False
        finally:
            os.close(fd)
    return out
