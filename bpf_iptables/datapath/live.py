"""The data path of an attached namespace: deploy, update, counters, detach.

An update compiles the new rule set into *new* programs with their own
maps (a generation: INPUT at XDP; FORWARD behind an XDP dispatcher and
OUTPUT at TC egress when those chains have work), fills and pins them
(counters included) while the old ones keep filtering, then switches
every interface to them with one netlink request per interface and hook
(the kernel replaces an XDP program, and `tc filter replace' a cls_bpf
program, atomically), and only then is the rule set stored. So:

- the compiler refusing the rule set (``NotSupported``, exit 2) or bcc
  failing to load it (exit 1) happens before anything changed: the old
  program stays attached and the stored rule set stays as it was;
- a packet is classified either by the old rule set or by the new one.

Counters: every invocation shows the data path's counters (``load()``
overlays them on the stored rule set), so commands move, keep and zero
them exactly as they do stored counters (they follow their rule through
-I, -D, -R of other rules, -E, ...). The new program starts from those
values, plus what the old program counted while the new one was being
compiled (read again just before the switch); packets counted by the
old program in the microseconds between that read and the switch are lost."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotSupported, XtablesError, OTHER_PROBLEM
from ..model import RuleSet, Table
from . import attachment as A
from . import bpfsys
from . import support
from .compiler import POLICY_COUNTER, Compiled, compile_chain

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0   # never replace somebody else's program
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODES = {"xdp": XDP_FLAGS_DRV_MODE, "xdpgeneric": XDP_FLAGS_SKB_MODE}


class DatapathError(XtablesError):
    def __init__(self, message: str):
        super().__init__(message, OTHER_PROBLEM)


def interfaces_here() -> dict[str, int]:
    return {name: index for index, name in socket.if_nameindex()}


def needs(table: Table, hook: str) -> bool:
    """Whether a hook chain can change a packet's fate or count anything:
    without rules and with policy ACCEPT it needs no program."""
    chain = table.chains.get(hook)
    return chain is not None and bool(chain.rules or (chain.policy or "ACCEPT") != "ACCEPT")


def needs_output(table: Table) -> bool:
    return needs(table, "OUTPUT")


def check_enforceable(table: Table) -> None:
    """OUTPUT runs at TC egress, which forwarded packets pass too: refused
    while the namespace forwards."""
    if needs_output(table) and _forwarding():
        raise NotSupported("the OUTPUT chain with IP forwarding enabled in the eBPF data path")


def _forwarding() -> bool:
    try:
        return open("/proc/sys/net/ipv4/ip_forward").read().strip() != "0"
    except OSError:
        return True


# -- counters ---------------------------------------------------------------------

Counts = dict[str, list[tuple[int, int]]]   # hook -> (packets, bytes) per slot


def hook_dir(directory: Path, number: int, hook: str) -> Path:
    """INPUT's pins at the generation's top (prog, counters, self), the
    others' in forward/, output/ and dispatch/ beneath it."""
    base = A.pin_dir(directory, number)
    return base if hook == "INPUT" else base / hook.lower()


def hooks_of(att: A.Attachment) -> list[str]:
    return (["INPUT"] + (["FORWARD"] if att.forward_prog_id else [])
            + (["OUTPUT"] if att.output_prog_id else []))


def xdp_pin(directory: Path, att: A.Attachment) -> Path:
    """The pin of the program attached at XDP: the dispatcher when FORWARD runs."""
    return hook_dir(directory, att.generation, "DISPATCH" if att.forward_prog_id else "INPUT") / "prog"


NCOUNTERS = {"INPUT": "ncounters", "FORWARD": "forward_ncounters", "OUTPUT": "output_ncounters"}


def read_live(directory: Path, att: A.Attachment) -> Counts:
    out: Counts = {}
    for hook in hooks_of(att):
        fd = bpfsys.obj_get(str(hook_dir(directory, att.generation, hook) / "counters"))
        try:
            out[hook] = bpfsys.read_counters(fd, getattr(att, NCOUNTERS[hook]))
        finally:
            os.close(fd)
    return out


def _sum(values: Counts, slot: int) -> tuple[int, int]:
    return (sum(v[slot][0] for v in values.values() if slot < len(v)),
            sum(v[slot][1] for v in values.values() if slot < len(v)))


def overlay(ruleset: RuleSet, att: A.Attachment, values: Counts) -> dict[int, int]:
    """Put the data path's counters on the rule set's rules (summed over
    the programs: a user chain may be reached from INPUT and OUTPUT) and
    on the policies of the hooks it runs; returns id(rule object) -> slot,
    to follow rules through a command."""
    table = ruleset.table("filter")
    slot_of: dict[int, int] = {}
    for chain, index, slot in att.counter_of:
        rules = table.chains[chain].rules if chain in table.chains else []
        if index < len(rules):
            rule = rules[index]
            rule.counters.packets, rule.counters.bytes = _sum(values, slot)
            slot_of[id(rule)] = slot
    for hook, v in values.items():
        policy = table.chains[hook].counters
        policy.packets, policy.bytes = v[POLICY_COUNTER]
    return slot_of


# -- one generation -----------------------------------------------------------------

@dataclass
class Program:
    prog: object          # program.LoadedProgram
    compiled: Compiled


@dataclass
class Generation:
    number: int
    progs: dict[str, Program]     # INPUT always; FORWARD, OUTPUT when they have work to do
    dispatch: object = None       # program.Dispatcher, with FORWARD

    @property
    def xdp_fd(self) -> int:
        return (self.dispatch or self.progs["INPUT"].prog).fd


def build(table: Table, number: int, interfaces: dict[str, int]) -> Generation:
    """Compile and load; nothing is attached yet. Raises NotSupported (2)
    or DatapathError (1)."""
    check_enforceable(table)
    hooks = ["INPUT"] + [h for h in ("FORWARD", "OUTPUT") if needs(table, h)]
    compiled = {h: compile_chain(table, h, interfaces) for h in hooks}
    from .program import Dispatcher, LoadedProgram  # bcc: only when a program is built

    progs: dict[str, Program] = {}
    try:
        for h in hooks:
            prog = LoadedProgram(compiled[h].shape, tc=(h == "OUTPUT"))
            prog.install(compiled[h])
            progs[h] = Program(prog, compiled[h])
        dispatch = None
        if "FORWARD" in progs:
            dispatch = Dispatcher(progs["INPUT"].prog.fd, progs["FORWARD"].prog.fd)
    except Exception as exc:  # bcc reports compile/verifier errors as Exception
        raise DatapathError(f"cannot load the eBPF program: {exc}") from None
    return Generation(number, progs, dispatch)


def initial_counters(gen: Generation, table: Table, carried: dict[int, int],
                     delta: Counts | None) -> dict[str, dict[int, tuple[int, int]]]:
    """The new programs' counters: the rule set's (which carry the data
    path's as of load()), plus what each rule's old slot counted since.
    Rule counts start in the INPUT program (shown as the sum over programs),
    each program's policy slot holds its hook's policy counters."""
    out: dict[str, dict[int, tuple[int, int]]] = {h: {} for h in gen.progs}
    for (chain, index), slot in gen.progs["INPUT"].compiled.counter_of.items():
        rule = table.chains[chain].rules[index]
        p, b = rule.counters.packets, rule.counters.bytes
        old = carried.get(id(rule))
        if delta is not None and old is not None:
            dp, db = _sum(delta, old)
            p, b = p + dp, b + db
        if p or b:
            out["INPUT"][slot] = (p, b)
    for hook in gen.progs:
        pol = table.chains[hook].counters
        p, b = pol.packets, pol.bytes
        if delta is not None and hook in delta:
            p, b = p + delta[hook][POLICY_COUNTER][0], b + delta[hook][POLICY_COUNTER][1]
        out[hook][POLICY_COUNTER] = (p, b)
    return out


def _xdp(dev: str, fd: int, flags: int) -> int:
    from bcc.libbcc import lib
    import ctypes

    rc = lib.bpf_attach_xdp(dev.encode(), fd, flags)
    return 0 if rc >= 0 else (ctypes.get_errno() or 1)


# our egress filter's priority; `filter replace' of the same (pref, handle)
# swaps the program atomically
TC_PREF = "49001"


def _tc_attach(dev: str, pinned: Path) -> None:
    subprocess.run(["tc", "qdisc", "add", "dev", dev, "clsact"], capture_output=True)
    r = subprocess.run(["tc", "filter", "replace", "dev", dev, "egress", "pref", TC_PREF,
                        "handle", "1", "bpf", "da", "object-pinned", str(pinned)],
                       capture_output=True, text=True)
    if r.returncode:
        raise DatapathError(f"cannot attach the OUTPUT program to {dev}: {r.stderr.strip()}")


def _tc_detach(dev: str) -> None:
    subprocess.run(["tc", "filter", "del", "dev", dev, "egress", "pref", TC_PREF],
                   capture_output=True)
    left = "".join(subprocess.run(["tc", "filter", "show", "dev", dev, kind],
                                  capture_output=True, text=True).stdout
                   for kind in ("ingress", "egress"))
    if not left.strip():
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "clsact"], capture_output=True)


def switch(directory: Path, gen: Generation, ifaces: dict[str, list[int]],
           had_output: bool) -> None:
    """Point every interface at the new programs (replacing the old ones)."""
    fd = gen.xdp_fd
    for name, (_, flags) in ifaces.items():
        err = _xdp(name, fd, flags)
        if err:
            raise DatapathError(f"cannot attach XDP to {name}: {os.strerror(err)}")
        if "OUTPUT" in gen.progs:
            _tc_attach(name, hook_dir(directory, gen.number, "OUTPUT") / "prog")
        elif had_output:
            _tc_detach(name)


def pin(directory: Path, gen: Generation) -> None:
    where = A.pin_dir(directory, gen.number)
    if where.exists():
        shutil.rmtree(where)
    for hook, p in gen.progs.items():
        d = hook_dir(directory, gen.number, hook)
        d.mkdir(parents=True, mode=0o700)
        bpf = p.prog.bpf
        bpfsys.obj_pin(p.prog.fd, str(d / "prog"))
        bpfsys.obj_pin(bpf[b"counter_map"].map_fd, str(d / "counters"))
        # a prog array loses its entries (the tail call) when no file or pin holds it
        bpfsys.obj_pin(bpf[b"self_map"].map_fd, str(d / "self"))
    if gen.dispatch is not None:
        d = hook_dir(directory, gen.number, "DISPATCH")
        d.mkdir(parents=True, mode=0o700)
        bpfsys.obj_pin(gen.dispatch.fd, str(d / "prog"))
        bpfsys.obj_pin(gen.dispatch.bpf[b"chain_map"].map_fd, str(d / "chains"))


def unpin(directory: Path, number: int) -> None:
    shutil.rmtree(A.pin_dir(directory, number), ignore_errors=True)


def record(gen: Generation, mode: str, ifaces: dict[str, list[int]]) -> A.Attachment:
    inp = gen.progs["INPUT"]
    out = gen.progs.get("OUTPUT")
    fwd = gen.progs.get("FORWARD")
    return A.Attachment(mode=mode, generation=gen.number, interfaces=ifaces,
                        ncounters=inp.compiled.shape.ncounters,
                        counter_of=[[c, i, s] for (c, i), s in inp.compiled.counter_of.items()],
                        prog_id=bpfsys.obj_id(gen.xdp_fd), entries=len(inp.compiled.entries),
                        forward_prog_id=bpfsys.obj_id(fwd.prog.fd) if fwd else 0,
                        forward_ncounters=fwd.compiled.shape.ncounters if fwd else 0,
                        output_prog_id=bpfsys.obj_id(out.prog.fd) if out else 0,
                        output_ncounters=out.compiled.shape.ncounters if out else 0)


def write_initial(gen: Generation, values: dict[str, dict[int, tuple[int, int]]]) -> None:
    for hook, v in values.items():
        bpfsys.write_counters(gen.progs[hook].prog.bpf[b"counter_map"].map_fd, v)


# -- the store of an attached namespace ------------------------------------------------

class AttachedStore:
    """A state.Store whose rule set is also the attached data path's."""

    def __init__(self, inner, att: A.Attachment):
        self.inner = inner
        self.att = att
        self.directory = inner.directory
        self._carried: dict[int, int] = {}
        self._base: Counts | None = None

    def load(self) -> RuleSet:
        ruleset = self.inner.load()
        try:
            self._base = read_live(self.directory, self.att)
        except OSError as exc:
            raise DatapathError(f"cannot read the data path's counters: {exc}") from None
        self._carried = overlay(ruleset, self.att, self._base)
        return ruleset

    def load_index(self, table: str):
        return None  # every change goes through save(): it must recompile

    def append(self, table, chain, rules):  # never reached (load_index is None)
        raise AssertionError("journal append while the data path is attached")

    def save(self, ruleset: RuleSet) -> None:
        table = ruleset.table("filter")
        old = self.att
        here = interfaces_here()
        gen = build(table, old.generation + 1, here)
        try:
            pin(self.directory, gen)
            # counters last, right before the switch: what the old program
            # counted since load() is carried over (see the module doc)
            delta = None
            if self._base is not None:
                now = read_live(self.directory, old)
                delta = {h: [(n[0] - b[0], n[1] - b[1]) for n, b in zip(now[h], self._base[h])]
                         for h in now}
            write_initial(gen, initial_counters(gen, table, self._carried, delta))
        except OSError as exc:
            unpin(self.directory, gen.number)
            raise DatapathError(f"cannot prepare the eBPF program: {exc}") from None
        ifaces = {name: v for name, v in old.interfaces.items() if here.get(name) == v[0]}
        try:
            switch(self.directory, gen, ifaces, bool(old.output_prog_id))
            # interfaces created since the last update are covered from now on
            ifaces.update(attach_new(self.directory, gen, old.mode, here, ifaces))
        except DatapathError:
            rollback(self.directory, old)
            unpin(self.directory, gen.number)
            raise
        new = record(gen, old.mode, ifaces)
        A.write(self.directory, new)
        self.inner.save(ruleset)
        unpin(self.directory, old.generation)
        self.att = new
        self._base, self._carried = None, {}


def attach_new(directory: Path, gen: Generation, mode: str, here: dict[str, int],
               done: dict[str, list[int]]) -> dict[str, list[int]]:
    """Attach to every interface of ``here`` not in ``done``: in ``mode``,
    or generic XDP where the driver has no native XDP (e.g. lo)."""
    added: dict[str, list[int]] = {}
    for name, index in sorted(here.items(), key=lambda kv: kv[1]):
        if name in done:
            continue
        flags = MODES[mode]
        fd = gen.xdp_fd
        err = _xdp(name, fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
        if err and err != errno.EBUSY and flags == XDP_FLAGS_DRV_MODE:
            flags = XDP_FLAGS_SKB_MODE
            err = _xdp(name, fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
        try:
            if err:
                raise DatapathError(f"cannot attach XDP to {name}: {os.strerror(err)}")
            added[name] = [index, flags]
            if "OUTPUT" in gen.progs:
                _tc_attach(name, hook_dir(directory, gen.number, "OUTPUT") / "prog")
        except DatapathError:
            for n, (_, f) in added.items():
                _xdp(n, -1, f)
                if "OUTPUT" in gen.progs:
                    _tc_detach(n)
            raise
    return added


def rollback(directory: Path, att: A.Attachment) -> None:
    """Put the previous generation back on every interface (after a failed switch)."""
    fd = bpfsys.obj_get(str(xdp_pin(directory, att)))
    try:
        for name, (_, flags) in att.interfaces.items():
            _xdp(name, fd, flags)
            if att.output_prog_id:
                _tc_attach(name, hook_dir(directory, att.generation, "OUTPUT") / "prog")
            else:
                _tc_detach(name)
    finally:
        os.close(fd)


# -- attach / detach ------------------------------------------------------------------

def attach(store, mode: str) -> A.Attachment:
    """Compile the stored INPUT chain and attach it to every interface."""
    support.check()   # no eBPF support: a clear error (exit 1) before anything is built
    if mode not in MODES:
        raise NotSupported(f"data path mode `{mode}'")
    A.ensure_bpffs()
    collect_stale_pins()
    current = A.read(store.directory)
    if current is not None:
        detach(store)
    ruleset = store.load()
    table = ruleset.table("filter")
    ifaces_now = interfaces_here()
    gen = build(table, 1, ifaces_now)
    pin(store.directory, gen)
    write_initial(gen, initial_counters(gen, table, {}, None))
    ifaces: dict[str, list[int]] = {}
    try:
        ifaces = attach_new(store.directory, gen, mode, ifaces_now, {})
    except DatapathError:
        unpin(store.directory, gen.number)
        raise
    att = record(gen, mode, ifaces)
    A.write(store.directory, att)
    store.save(ruleset)
    return att


def detach(store) -> A.Attachment | None:
    """Remove every attachment and pin; the rule set keeps the data path's counters."""
    att = A.read(store.directory)
    if att is None:
        return None
    try:
        live = AttachedStore(store, att)
        ruleset = live.load()
        store.save(ruleset)
    except (OSError, XtablesError) as exc:
        sys.stderr.write(f"warning: counters of the data path lost: {exc}\n")
    here = interfaces_here()
    for name, (index, flags) in att.interfaces.items():
        if here.get(name) == index:
            _xdp(name, -1, flags)
            if att.output_prog_id:
                _tc_detach(name)
    shutil.rmtree(A.pin_root() / store.directory.name, ignore_errors=True)
    A.remove(store.directory)
    return att


def collect_stale_pins() -> None:
    """Pins of namespaces whose state directory is gone (the namespace was
    deleted and its state collected) keep programs alive for nothing."""
    root = A.pin_root()
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name.startswith("netns-") and not (A.run_dir() / d.name).is_dir():
            shutil.rmtree(d, ignore_errors=True)
