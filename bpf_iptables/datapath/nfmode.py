"""``--mode netfilter``: the classifier at netfilter's own hooks.

The classifier (``bpf/filter.c`` built with ``-DHOOK_NF``) runs as a
BPF_PROG_TYPE_NETFILTER program where iptables' filter table runs:
LOCAL_IN (INPUT), FORWARD and LOCAL_OUT (OUTPUT), at priority -1 (just
before the filter table), after conntrack, mangle and the nat table's
DNAT. Root programs (``bpf/nfroot.c``), one per hook, are linked once
(pinned ``link/nf-<hook>``); they tail-call the active generation's
classifier from ``root/nf_slots`` (a netfilter link cannot be updated), so
an update switches every hook with one write of ``root/active_map``, as in
the other modes. No programs on interfaces, no route lookup.

This module: the build flags (kernel struct offsets from BTF, kfunc
ids), the raw load (bcc compiles; the kfunc calls are patched in and the
program loaded with its expected attach type by bpf(2)), the roots and
their links, the REJECT hand-off to iptables-legacy, and what the mode
refuses (README, "--mode netfilter")."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import NotSupported
from . import bpfsys
from . import nfhook
from .links import remove_pin
from .compiler import Compiled

MODE = "netfilter"
ROOT_SOURCE = "nfroot.c"
# hook -> (root function, netfilter hook number)
ROOTS = {"INPUT": ("nf_root_input", nfhook.LOCAL_IN),
         "FORWARD": ("nf_root_forward", nfhook.FORWARD),
         "OUTPUT": ("nf_root_output", nfhook.LOCAL_OUT)}
ROOT_MAPS = ("active_map", "nf_slots")
# just before the filter table (0), where iptables-legacy's REJECT hand-off
# rules run (see "REJECT" below); after conntrack, mangle and DNAT
PRIORITY = nfhook.NF_IP_PRI_FILTER - 1
# fields the HOOK_NF build cannot fill in (yet): the made-up Ethernet
# header has no real MACs (the packet type comes from skb->pkt_type)
UNSUPPORTED_FIELDS = {"mac": "-m mac"}


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
    byte, shift, width = nfhook.vmlinux().bitfield("sk_buff", "pkt_type")
    flags += [f"-DOFF_SKB_PKT_TYPE={byte}", f"-DPKT_TYPE_SHIFT={shift}",
              f"-DPKT_TYPE_MASK={(1 << width) - 1}"]
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
            remove_pin(pin)
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
            remove_pin(pin)
        raise


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


# -- REJECT: the hand-off to iptables-legacy's REJECT (bpf/lib/nfreject.h) -------------

REJECT_SOURCE = "nfreject.c"
REJECT_CHAIN = "BPF-IPTABLES-REJECT"
SOCKET_FILTER = 1
# the reject types (extensions/reject.py numbers) and their sf_<type> programs
REJECT_NAMES = {0: "icmp-net-unreachable", 1: "icmp-host-unreachable",
                2: "icmp-proto-unreachable", 3: "icmp-port-unreachable",
                5: "icmp-net-prohibited", 6: "icmp-host-prohibited", 7: "tcp-reset",
                8: "icmp-admin-prohibited"}


def reject_dir(ct_dir: str) -> str:
    """The bpffs directory of the REJECT records and socket filters (next
    to the namespace's conntrack pins, like the other shared maps)."""
    return os.path.join(os.path.dirname(ct_dir), "nfreject")


def has_reject(compiled: dict[str, Compiled]) -> bool:
    from ..extensions.reject import VERDICT_REJECT

    return any(e.verdict & VERDICT_REJECT and e.verdict != 0xFFFFFFFF
               for c in compiled.values() for e in c.entries)


def load_reject(where: Path, bpf_dir: Path) -> None:
    """The socket filters, pinned in ``where`` with the records' map
    (opened if pinned already: the classifiers' map)."""
    from bcc import BPF

    where.mkdir(parents=True, mode=0o700, exist_ok=True)
    flags = [f"-I{bpf_dir}", f'-DNF_REJECT_PIN_DIR="{where}"'] + [
        f"-D{k}={imm:#x}" for k, (imm, _) in nfhook.KFUNCS.items()]
    bpf = BPF(src_file=str(bpf_dir / REJECT_SOURCE).encode(), cflags=flags)
    try:
        for name in ["sf_any"] + [f"sf_type{t}" for t in REJECT_NAMES]:
            insns = nfhook.kfunc_calls(bytes(bpf.dump_func(name.encode())), nfhook.vmlinux())
            fd = bpfsys.prog_load(SOCKET_FILTER, insns, "GPL", name, log_size=1 << 16)
            try:
                pin = where / name
                pin.unlink(missing_ok=True)
                bpfsys.obj_pin(fd, str(pin))
            finally:
                os.close(fd)
    finally:
        bpf.cleanup()


def reject_pinned(where: Path) -> bool:
    """Whether the hand-off is set up (its socket filters pinned: made
    before the x_tables rules, removed after them)."""
    return (where / "sf_any").exists()


def xtables_rules(where: Path) -> str:
    """iptables-legacy-restore --noflush input: the REJECT chain (one rule
    per type: the kernel's REJECT checks tcp-reset against -p tcp) and,
    first in each hook chain, the jump for recorded packets."""
    lines = ["*filter", f":{REJECT_CHAIN} - [0:0]"]
    for t, name in REJECT_NAMES.items():
        proto = "-p tcp " if name == "tcp-reset" else ""
        lines.append(f"-A {REJECT_CHAIN} {proto}-m bpf --object-pinned {where}/sf_type{t} "
                     f"-j REJECT --reject-with {name}")
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        lines.append(f"-I {chain} 1 -m bpf --object-pinned {where}/sf_any -j {REJECT_CHAIN}")
    return "\n".join(lines + ["COMMIT", ""])


def _xt(*argv: str, input: str | None = None):
    """Run an iptables-legacy tool on this namespace's tables. The caller
    holds the xtables lock (every bpf-iptables command does, as iptables
    does), so the child takes a lock file of its own: with the global one
    it would wait for its parent forever (and block every other iptables
    user of the machine meanwhile)."""
    import subprocess

    env = {**os.environ, "XTABLES_LOCKFILE": HANDOFF_LOCK}
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, env=env)


HANDOFF_LOCK = "/run/bpf-iptables/handoff.xtables.lock"


def xtables_installed() -> bool:
    return _xt("iptables-legacy", "-w", "-S", REJECT_CHAIN).returncode == 0


def ensure_reject(where: Path, bpf_dir: Path, wanted: bool) -> None:
    """The hand-off in place when the rule set has a REJECT (before its
    switch), taken out when it has none (after the switch); OSError when
    iptables-legacy refuses (e.g. no xt_bpf)."""
    if wanted:
        if xtables_installed():
            remove_reject(where)   # left over (rules of programs no longer pinned)
        load_reject(where, bpf_dir)
        r = _xt("iptables-legacy-restore", "-w", "--noflush", input=xtables_rules(where))
        if r.returncode != 0:
            remove_reject(where)
            raise OSError(0, f"iptables-legacy-restore: {r.stderr.strip()}")
    else:
        remove_reject(where)


def remove_reject(where: Path | None = None) -> None:
    """Take the hand-off's x_tables rules out (what is not there is
    skipped), then its socket filters' pins (in ``where``)."""
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        while True:
            r = _xt("iptables-legacy", "-w", "-S", chain)
            rules = [l for l in r.stdout.splitlines() if l.startswith("-A ")]
            at = [i for i, l in enumerate(rules, 1) if l.endswith(f"-j {REJECT_CHAIN}")]
            if r.returncode != 0 or not at:
                break
            # by number: xt_bpf's match data holds an fd, so -D by the
            # rule's text never finds it
            if _xt("iptables-legacy", "-w", "-D", chain, str(at[0])).returncode != 0:
                break
    _xt("iptables-legacy", "-w", "-F", REJECT_CHAIN)
    _xt("iptables-legacy", "-w", "-X", REJECT_CHAIN)
    if where is not None:
        for name in ["sf_any"] + [f"sf_type{t}" for t in REJECT_NAMES]:
            (where / name).unlink(missing_ok=True)
