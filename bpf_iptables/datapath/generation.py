"""One generation's classifiers: prepare them while the other generation filters.

A generation (``gen-0``, ``gen-1``) holds up to one classifier per hook,
each pinned with every map (``gen-G/<hook>/{prog, counter_map, ...}``).
Preparing a generation for a compiled rule set:

- a hook whose pinned program's shape covers the new compiled shape
  (``Shape.covers``) only gets its maps rewritten, by raw bpf(2) calls from
  ``image.map_image()`` (hash and LPM maps: keys of the earlier contents
  deleted): no bcc, no compile;
- otherwise a new program is compiled (bcc) for the shape with headroom
  (``roomy()``: a few more rules, prefixes, ports or interfaces fit
  without another compile), pinned, and its maps written the same way.

Nothing here is visible to packets until the root programs' prog array
slots of this generation are filled (``fill_slots``) and the active word
flipped (``flip``)."""
from __future__ import annotations

import ctypes
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import attachment as A
from . import bpfsys
from .compiler import Compiled, Shape, fill_unused, max_steps, pow2_at_least
from .image import map_image, u32

if TYPE_CHECKING:
    from .program import LoadedProgram

HOOK_INDEX = {"INPUT": 0, "FORWARD": 1, "OUTPUT": 2}
NETFILTER = "netfilter"   # --mode netfilter (nfmode.py): one prog array, nf_slots
ACTIVE_ROUTE = 2
_libc = ctypes.CDLL(None, use_errno=True)
SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL = 324, 1


class LoadError(Exception):
    """bcc could not compile or load a classifier (the message says why)."""


def hook_dir(directory: Path, gen: int, hook: str) -> Path:
    return A.pin_dir(directory, gen) / hook.lower()


def is_tc(mode: str, hook: str) -> bool:
    """OUTPUT always runs at TC egress; INPUT and FORWARD at TC ingress in
    tc mode; no hook in netfilter mode (netfilter-hook programs)."""
    return mode != NETFILTER and (hook == "OUTPUT" or mode == "tc")


def shape_json(shape: Shape) -> dict:
    d = {k: getattr(shape, k) for k in shape.__dataclass_fields__}
    d["fields"] = sorted(shape.fields)
    return d


def shape_of(d: dict) -> Shape:
    return Shape(**{**d, "fields": frozenset(d["fields"])})


def _more(n: int, share: int, least: int) -> int:
    return n + max(least, n // share)


def quantised(n: int, per_octave: int = 4) -> int:
    """The least value >= n on a grid of ``per_octave`` steps per power of
    two (4: 8, 10, 12, 14, 16, 20, 24, ...; at most 25 % more). Shapes are
    built from such values so that rule sets of similar size ask for the
    same shape, which the object cache then has compiled already."""
    if n <= 2 * per_octave:
        return max(n, 1)
    low = 1 << (n.bit_length() - 1)          # the power of two below n
    unit = low // per_octave
    return -(-n // unit) * unit


def roomy(c: Compiled) -> Shape:
    """``c``'s shape grown so that the next few changes still fit it: more
    entries (+1/8, at least 16), counters, prefixes, protocols, interfaces,
    ICMP types and port boundaries. Only map sizes grow (LPM tries and
    hashes allocate per element; arrays of bitvectors a little memory),
    never the fields: an unused field would cost every packet a lookup.
    Sizes are rounded up on a coarse grid (``quantised``; bitvector words
    and boundary slots are powers of two anyway) so that the shape of the
    next update, or of a restore of a similar rule set, is likely the same
    one, loaded from the object cache instead of compiled. Bigger maps cost
    memory, not time per packet: a lookup's cost does not depend on a
    map's size, and the scan stops at the first match whatever STEPS is."""
    s = c.shape
    n = len(c.entries)
    nwords = pow2_at_least((_more(n, 8, 16) + 63) // 64)
    # steps needed grow with the words (see compile_chain); keep room for
    # a few more continuing entries too. A finer grid than the map sizes:
    # the verifier's work grows with the steps.
    limit = max_steps(s.fields)
    steps = s.steps if s.steps >= limit else \
        min(limit, quantised(s.steps + (nwords - s.nwords) + 8, 8))

    def bsize(bounds: list[int], current: int) -> int:
        return max(current, pow2_at_least(_more(len(bounds), 8, 4)))

    def address(a: str) -> dict:
        # one probe more: a /16 may get up to twice as many intervals
        if a not in s.fields:
            return {}
        probes = getattr(s, f"{a}_probes") + 1
        room = _more(getattr(s, f"{a}_nbounds"), 8, 16) + (1 << probes)
        return {f"{a}_probes": probes,
                f"{a}_bsize": max(getattr(s, f"{a}_bsize"), pow2_at_least(room))}

    q = quantised
    # replace(): every size the compiler knows carries over, grown where
    # rules add to it
    return replace(s, nwords=nwords, steps=steps, ncounters=q(_more(s.ncounters, 8, 32)),
                   src_max=q(_more(s.src_max, 4, 64)), dst_max=q(_more(s.dst_max, 4, 64)),
                   proto_max=q(s.proto_max + 8), iif_max=q(s.iif_max + 16),
                   sport_bsize=bsize(c.sport_bounds, s.sport_bsize),
                   dport_bsize=bsize(c.dport_bounds, s.dport_bsize),
                   length_bsize=bsize(c.length_bounds, s.length_bsize),
                   ttl_bsize=min(256, bsize(c.ttl_bounds, s.ttl_bsize)),
                   oif_max=q(s.oif_max + 16), mac_max=q(_more(s.mac_max, 4, 16)),
                   icmp_max=q(s.icmp_max + (256 if "icmp" in s.fields else 0)),
                   # limit buckets: room for a few more limit rules (none
                   # compiled in stays none: the per-candidate lookup costs)
                   nlimits=q(_more(s.nlimits, 8, 8)) if s.nlimits else 0,
                   nlogs=q(_more(s.nlogs, 8, 8)) if s.nlogs else 0,
                   nrecent=q(_more(s.nrecent, 8, 8)) if s.nrecent else 0,
                   nsets=q(_more(s.nsets, 8, 8)) if s.nsets else 0,
                   **address("src"), **address("dst"))


def fit(c: Compiled, shape: Shape) -> None:
    """Make ``c`` the contents of a program of ``shape`` (which covers it):
    fields the program has and ``c`` does not use match everything."""
    c.shape = shape.union(c.shape)
    fill_unused(c)


def quiesce(att: A.Attachment) -> None:
    """Packets that read the active word just before the last flip may
    still run the generation about to be rewritten: wait for an RCU grace
    period (XDP and TC programs run inside RCU read-side sections) when
    that flip was recent. membarrier(GLOBAL) is synchronize_rcu()."""
    if time.monotonic() - att.switched_at < 2.0:
        _libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0)


def verified_hooks(directory: Path, att: A.Attachment, gen: int) -> dict[str, dict]:
    """The generation's hooks whose pinned program is the one the record
    names; pins of anything else (a call that died after loading a program
    but before recording it) are removed."""
    hooks = {}
    for hook, info in att.slots[gen].get("hooks", {}).items():
        if bpfsys.pinned_id(str(hook_dir(directory, gen, hook) / "prog")) == info["prog_id"]:
            hooks[hook] = dict(info)
    base = A.pin_dir(directory, gen)
    if base.is_dir():
        for d in base.iterdir():
            if d.name.upper() not in hooks:
                shutil.rmtree(d, ignore_errors=True)
    return hooks


def start_new(directory: Path, gen: int, hook: str, shape: Shape, mode: str,
              background: bool = True) -> "LoadedProgram":
    """A classifier for ``shape`` with its maps pinned; from the object
    cache the program may still be verifying (``finish_new``), so that its
    maps are written meanwhile. Without ``background``, a cached program
    the kernel refuses is compiled again (bcc)."""
    from .program import LoadedProgram  # bcc: only when the cache misses

    try:
        prog = LoadedProgram(shape, tc=is_tc(mode, hook), background=background,
                             ct_dir=str(A.ns_pins(directory) / "conntrack"),
                             nf=mode == NETFILTER)
    except Exception as exc:  # bcc reports compile/verifier errors as Exception
        raise LoadError(str(exc)) from None
    d = hook_dir(directory, gen, hook)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, mode=0o700)
    for name, fd in prog.map_fds().items():
        bpfsys.obj_pin(fd, str(d / name))
    return prog


def finish_new(directory: Path, gen: int, hook: str, prog: "LoadedProgram") -> dict:
    """Pin the program once loaded (OSError: the kernel refused a cached
    one; its maps' pins are left to the caller's retry to replace)."""
    prog.finish()
    bpfsys.obj_pin(prog.fd, str(hook_dir(directory, gen, hook) / "prog"))
    # prog.shape: the loader may have taken fewer steps per invocation
    return {"prog_id": bpfsys.obj_id(prog.fd), "shape": shape_json(prog.shape), "on": False}


def load_new(directory: Path, gen: int, hook: str, shape: Shape, mode: str) -> dict:
    """Compile (or load from the cache) a classifier for ``shape`` and pin
    it with its maps."""
    return finish_new(directory, gen, hook,
                      start_new(directory, gen, hook, shape, mode, background=False))


def write_maps(directory: Path, gen: int, hook: str, c: Compiled, shape: Shape) -> None:
    d = hook_dir(directory, gen, hook)
    for image in map_image(c, shape):
        fd = bpfsys.obj_get(str(d / image.name))
        try:
            if image.clear:
                keep = {k for k, _ in image.items}
                for key in bpfsys.map_keys(fd, len(image.items[0][0])):
                    if key not in keep:
                        bpfsys.map_delete(fd, key)
            bpfsys.map_update_many(fd, image.items)
        finally:
            os.close(fd)


def prepare(directory: Path, att: A.Attachment, gen: int, compiled: dict[str, Compiled],
            mode: str) -> tuple[dict[str, dict], list[str]]:
    """Programs of generation ``gen`` holding ``compiled`` (one per hook);
    returns the generation's hooks (for the record) and the hooks that
    needed a new program. Raises LoadError (bcc) or OSError (bpf(2)).
    A new program from the object cache is verified by the kernel while
    its maps are written."""
    hooks = verified_hooks(directory, att, gen)
    pending: dict[str, tuple[Shape, LoadedProgram]] = {}
    for hook, c in compiled.items():
        have = hooks.get(hook)
        if have is None or not shape_of(have["shape"]).covers(c.shape):
            wanted = roomy(c)
            prog = start_new(directory, gen, hook, wanted, mode)
            pending[hook] = (wanted, prog)
            hooks[hook] = {"shape": shape_json(prog.shape)}
    for hook, c in compiled.items():
        shape = shape_of(hooks[hook]["shape"])
        fit(c, shape)
        write_maps(directory, gen, hook, c, shape)
    for hook, (wanted, prog) in pending.items():
        try:
            hooks[hook] = finish_new(directory, gen, hook, prog)
        except OSError:
            # the kernel refused the cached program (the entry is rebuilt by
            # this load): new maps, written again
            hooks[hook] = load_new(directory, gen, hook, wanted, mode)
            shape = shape_of(hooks[hook]["shape"])
            fit(compiled[hook], shape)
            write_maps(directory, gen, hook, compiled[hook], shape)
    for hook in hooks:
        hooks[hook]["on"] = hook in compiled
    return hooks, list(pending)


def write_counters(directory: Path, gen: int, values: dict[str, dict[int, tuple[int, int]]],
                   nslots: int) -> None:
    for hook, v in values.items():
        fd = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "counter_map"))
        try:
            bpfsys.write_counters(fd, v, nslots)
        finally:
            os.close(fd)


def read_counters(directory: Path, gen: int, hooks: list[str], nslots: int
                  ) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for hook in hooks:
        fd = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "counter_map"))
        try:
            out[hook] = bpfsys.read_counters(fd, nslots)
        finally:
            os.close(fd)
    return out


def fill_slots(directory: Path, gen: int, hooks: dict[str, dict], mode: str) -> None:
    """Point the roots' prog array slots of ``gen`` at its hooks that are
    on; empty the others (the packet passes)."""
    root = A.ns_pins(directory) / "root"
    names = ("nf_slots",) if mode == NETFILTER else ("xdp_slots", "tc_slots")
    arrays = {name: bpfsys.obj_get(str(root / name)) for name in names}
    try:
        for hook, index in HOOK_INDEX.items():
            arr = arrays["nf_slots" if mode == NETFILTER else
                         "tc_slots" if is_tc(mode, hook) else "xdp_slots"]
            key = u32(gen * 3 + index)
            if hook in hooks and hooks[hook]["on"]:
                prog = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "prog"))
                try:
                    bpfsys.map_update(arr, key, u32(prog))
                finally:
                    os.close(prog)
            else:
                bpfsys.map_delete(arr, key)
    finally:
        for fd in arrays.values():
            os.close(fd)


def word(gen: int, route: bool) -> int:
    return gen | (ACTIVE_ROUTE if route else 0)


def flip(directory: Path, value: int) -> None:
    """The switch: one write of the word every root reads per packet."""
    fd = bpfsys.obj_get(str(A.ns_pins(directory) / "root" / "active_map"))
    try:
        bpfsys.map_update(fd, u32(0), u32(value))
    finally:
        os.close(fd)


def active_word(directory: Path) -> int:
    fd = bpfsys.obj_get(str(A.ns_pins(directory) / "root" / "active_map"))
    try:
        raw = bpfsys.map_lookup(fd, u32(0), 4)
    finally:
        os.close(fd)
    return int.from_bytes(raw or bytes(4), "little")
