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

import copy
import ctypes
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import attachment as A
from . import bpfsys, shadow
from .compiler import Compiled, Shape, fill_unused, max_steps, pow2_at_least
from .image import MAP_LAYOUT, map_image, u32

if TYPE_CHECKING:
    from . import counts
    from .program import LoadedProgram

HOOK_INDEX = {"INPUT": 0, "FORWARD": 1, "OUTPUT": 2}
# XDP modes: INPUT built for TC as well, for the host's own looped-back
# multicast/broadcast copies that only TC ingress can classify
# (bpf/lib/loopback.h); tc_loop_root calls it from tc_slots' INPUT slot,
# which the XDP modes leave free. Its rule counts are INPUT's (live.read_live).
LOOPED = "LOOPED"
NETFILTER = "netfilter"   # --mode netfilter (nfmode.py): one prog array, nf_slots
ACTIVE_ROUTE = 2
_libc = ctypes.CDLL(None, use_errno=True)
SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL = 324, 1


class LoadError(Exception):
    """bcc could not compile or load a classifier (the message says why)."""


def hook_dir(directory: Path, gen: int, hook: str) -> Path:
    return A.pin_dir(directory, gen) / hook.lower()


def is_tc(mode: str, hook: str) -> bool:
    """OUTPUT always runs at TC egress; INPUT and FORWARD at TC ingress in tc
    mode; the looped copies' INPUT at TC ingress; no hook in netfilter mode
    (netfilter-hook programs)."""
    return mode != NETFILTER and (hook in ("OUTPUT", LOOPED) or mode == "tc")


def with_looped(compiled: dict[str, Compiled], mode: str) -> dict[str, Compiled]:
    """The classifiers a generation holds: ``compiled``, plus in the XDP
    modes INPUT's chain once more for TC (a shallow copy: preparing fits
    its shape to its own program's). Netfilter's LOCAL_IN sees the looped
    copies itself."""
    if mode in ("tc", NETFILTER):
        return compiled
    return {**compiled, LOOPED: copy.copy(compiled["INPUT"])}


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


def current_layout(info: dict) -> bool:
    """Whether a recorded program reads the maps as this version writes
    them (image.MAP_LAYOUT; a program an older version loaded does not)."""
    return info.get("layout") == MAP_LAYOUT


def verified_hooks(directory: Path, att: A.Attachment, gen: int) -> dict[str, dict]:
    """The generation's hooks whose pinned program is the one the record
    names and reads the maps as this version writes them (``MAP_LAYOUT``);
    pins of anything else (a call that died after loading a program but
    before recording it, a program an older version loaded) are removed,
    so the caller loads a new program there."""
    hooks = {}
    for hook, info in att.slots[gen].get("hooks", {}).items():
        if current_layout(info) and \
                bpfsys.pinned_id(str(hook_dir(directory, gen, hook) / "prog")) == info["prog_id"]:
            hooks[hook] = dict(info)
    base = A.pin_dir(directory, gen)
    if base.is_dir():
        for d in base.iterdir():
            if d.name.upper() not in hooks:
                shutil.rmtree(d, ignore_errors=True)
    return hooks


def limit_pin(directory: Path, gen: int, hook: str) -> str | None:
    """The looped copies' INPUT takes -m limit's tokens from INPUT's
    buckets (one per rule, as netfilter): their pinned map."""
    return str(hook_dir(directory, gen, "INPUT") / "limit_map") if hook == LOOPED else None


def start_new(directory: Path, gen: int, hook: str, shape: Shape, mode: str,
              background: bool = True, share: dict[str, int] | None = None
              ) -> "LoadedProgram":
    """A classifier for ``shape`` with its maps pinned; from the object
    cache the program may still be verifying (``finish_new``), so that its
    maps are written meanwhile. Without ``background``, a cached program
    the kernel refuses is compiled again (bcc). ``share``: maps of another
    program to use (``shared_maps``)."""
    from .program import LoadedProgram  # bcc: only when the cache misses

    try:
        prog = LoadedProgram(shape, tc=is_tc(mode, hook), background=background,
                             ct_dir=str(A.ns_pins(directory) / "conntrack"),
                             limit_pin=limit_pin(directory, gen, hook),
                             nf=mode == NETFILTER, share=share)
    except Exception as exc:  # bcc reports compile/verifier errors as Exception
        raise LoadError(str(exc)) from None
    pin_maps(directory, gen, hook, prog)
    return prog


def shared_maps(directory: Path, gen: int, hook: str = "INPUT") -> dict[str, int]:
    """The generation's ``hook`` maps (pinned) that the looped copies'
    program uses too when its image is INPUT's (``twins``): the mappable
    arrays, which hold the image only and which the program only reads
    (the big ones: ~26 MB of the 52 at fw1-10k, written once instead of
    twice). The counters, the program array, the limit buckets and every
    hash stay the program's own. The caller closes the descriptors."""
    out: dict[str, int] = {}
    d = hook_dir(directory, gen, hook)
    if not d.is_dir():
        return out
    for path in d.iterdir():
        if path.name == "prog":
            continue
        fd = bpfsys.obj_get(str(path))
        info = bpfsys.map_info(fd)
        if info.type == bpfsys.BPF_MAP_TYPE_ARRAY and info.flags & bpfsys.BPF_F_MMAPABLE:
            out[path.name] = fd
        else:
            os.close(fd)
    return out


def shares_maps(directory: Path, gen: int) -> bool:
    """Whether the looped copies' program of ``gen`` uses maps of INPUT's."""
    theirs = {name: bpfsys.pinned_id(str(hook_dir(directory, gen, "INPUT") / name))
              for name in ("entry_map", "src_map", "dst_map", "proto_map", "dport_map")}
    return any(i and bpfsys.pinned_id(str(hook_dir(directory, gen, LOOPED) / name)) == i
               for name, i in theirs.items())


def start_looped(directory: Path, gen: int, shape: Shape, mode: str,
                 hooks: dict[str, dict]) -> "LoadedProgram":
    """The looped copies' program, using INPUT's mappable maps where its
    image will be INPUT's (the same IMAGE_KEYS: ``twins`` then gives both
    one image, which a shared map takes once)."""
    share: dict[str, int] = {}
    if "INPUT" in hooks and image_key(hooks["INPUT"]["shape"]) == image_key(shape_json(shape)):
        share = shared_maps(directory, gen)
    try:
        return start_new(directory, gen, LOOPED, shape, mode, share=share)
    finally:
        for fd in share.values():
            os.close(fd)


def pin_maps(directory: Path, gen: int, hook: str, prog: "LoadedProgram") -> None:
    """``prog``'s maps as the generation's ``hook`` (what was pinned there
    before removed)."""
    d = hook_dir(directory, gen, hook)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, mode=0o700)
    for name, fd in prog.map_fds().items():
        bpfsys.obj_pin(fd, str(d / name))


def finish_new(directory: Path, gen: int, hook: str, prog: "LoadedProgram") -> dict:
    """Pin the program once loaded (OSError: the kernel refused a cached
    one; its maps' pins are left to the caller's retry to replace)."""
    prog.finish()
    bpfsys.obj_pin(prog.fd, str(hook_dir(directory, gen, hook) / "prog"))
    # prog.shape: the loader may have taken fewer steps per invocation
    return {"prog_id": bpfsys.obj_id(prog.fd), "shape": shape_json(prog.shape), "on": False,
            "layout": MAP_LAYOUT}


def load_new(directory: Path, gen: int, hook: str, shape: Shape, mode: str) -> dict:
    """Compile (or load from the cache) a classifier for ``shape`` and pin
    it with its maps."""
    prog = start_new(directory, gen, hook, shape, mode, background=False)
    try:
        return finish_new(directory, gen, hook, prog)
    finally:
        prog.close()   # the pins hold it (a long-lived process must not)


# the last prepare's split (seconds): building the images, writing them;
# and how many elements were written (live.py adds them to its STEPS)
TIMES: dict[str, float] = {}


# images built before the generation may be written (``images``):
# hook -> (the shape they were built for, the compiled chain, map_image's list)
Images = dict[str, tuple[Shape, Compiled, list]]


def images(att: A.Attachment, gen: int, compiled: dict[str, Compiled]) -> Images:
    """The map images of the hooks whose recorded program of generation
    ``gen`` covers the compiled chain (the map-only case of ``prepare``,
    which uses them when its program is that one): pure computation,
    nothing read or written, so that it can run while packets may still
    run that generation (before the grace period after the last switch).
    Hooks needing a new program, or written as INPUT's twin, are left to
    ``prepare``."""
    TIMES.clear()
    began = time.perf_counter()
    hooks = att.slots[gen].get("hooks", {})
    shared = {h for hs in twins(hooks, compiled).values() for h in hs} \
        if all(h in hooks for h in (LOOPED, "INPUT")) else set()
    out: Images = {}
    for hook, c in compiled.items():
        info = hooks.get(hook)
        if info is None or hook in shared:
            continue
        shape = shape_of(info["shape"])
        if shape.covers(c.shape):
            fit(c, shape)
            out[hook] = (shape, c, map_image(c, shape))
    TIMES["image"] = time.perf_counter() - began
    return out


def write_maps(directory: Path, gen: int, hook: str, c: Compiled, shape: Shape,
               also: tuple[str, ...] = (), built: Images | None = None) -> None:
    """The image of ``c`` into the generation's maps of ``hook`` and of the
    hooks ``also`` (same shape, same contents: each image is built once),
    only what differs from what they hold where this process knows it
    (shadow.py). ``built``: images made beforehand (``images``), used when
    made of ``c`` for this shape."""
    dirs = [hook_dir(directory, gen, h) for h in (hook, *also)]
    began = time.perf_counter()
    pre = (built or {}).get(hook)
    images = pre[2] if pre is not None and pre[1] is c and pre[0] == shape \
        else map_image(c, shape)
    built_at = time.perf_counter()
    written = 0
    for image in images:
        for d in dirs:
            fd = bpfsys.obj_get(str(d / image.name))
            try:
                written += shadow.write(fd, image.name, image.items, image.clear)[0]
            finally:
                os.close(fd)
    done = time.perf_counter()
    TIMES["image"] = TIMES.get("image", 0.0) + built_at - began
    TIMES["write"] = TIMES.get("write", 0.0) + done - built_at
    TIMES["elements"] = TIMES.get("elements", 0) + written


# programs the command server loaded while idle (mirror_load), not pinned
# yet: (hook, tc) -> program; prepare() takes one whose shape covers the
# compiled one instead of loading its own (the verifier may be done)
SPARE: dict[tuple[str, bool], "LoadedProgram"] = {}

# the shapes this process's last prepare() loaded new programs for:
# (generation, hook) -> the shape asked for (the command server loads the
# same into the other generation while idle: mirror_plan() and after)
LOADED: dict[tuple[int, str], Shape] = {}


def mirror_plan(directory: Path, att: A.Attachment) -> dict[str, Shape]:
    """What to load into the inactive generation: the shapes the active one
    was given new programs for by this process's last prepare() (LOADED),
    where the inactive generation's program does not cover them and the
    object cache has the program (never a bcc compile here: shapes with
    maps pinned by path are compiled by bcc, so they are left out).
    Updates alternate between the generations, so the next update would
    otherwise load (and verify) that program itself."""
    from .program import object_key
    from . import objcache

    wanted = {hook: shape for (gen, hook), shape in LOADED.items() if gen == att.active}
    LOADED.clear()
    if att.pending is not None or att.mode == NETFILTER:
        return {}   # netfilter programs are bcc's, never in the object cache
    have = att.slots[1 - att.active].get("hooks", {})
    plan = {}
    for hook, shape in wanted.items():
        info = have.get(hook)
        if info is not None and current_layout(info) and shape_of(info["shape"]).covers(shape):
            continue
        if "ctstate" in shape.fields or shape.nlogs or shape.nhashlimits or shape.nrecent \
                or shape.nsets:
            continue
        if objcache.lookup(object_key(shape, is_tc(att.mode, hook))) is not None:
            plan[hook] = shape
    return plan


def mirror_load(directory: Path, hook: str, shape: Shape, mode: str) -> "LoadedProgram":
    """A program of ``plan``'s shape from the object cache, not pinned, the
    kernel verifying it in a thread (``verifying()``); nothing recorded."""
    from .program import LoadedProgram

    return LoadedProgram(shape, tc=is_tc(mode, hook), background=True,
                         ct_dir=str(A.ns_pins(directory) / "conntrack"))


def verifying(prog: "LoadedProgram") -> bool:
    """Whether the kernel still verifies a program loaded in the background
    (objcache.Loaded's thread)."""
    thread = getattr(prog._loaded, "_thread", None)
    return thread is not None and thread.is_alive()


def mirror_pin(directory: Path, att: A.Attachment, hook: str, prog: "LoadedProgram") -> bool:
    """Pin ``prog`` (loaded by mirror_load) and its maps as the inactive
    generation's ``hook``, recorded in ``att`` with its slot off (the
    caller writes the record, under the lock it holds). False, changing
    nothing, when the inactive generation covers the shape by now. Its
    maps are empty: the next update writes them in full (no shadow knows
    them)."""
    other = 1 - att.active
    hooks = verified_hooks(directory, att, other)
    have = hooks.get(hook)
    if have is not None and shape_of(have["shape"]).covers(prog.shape):
        return False
    pin_maps(directory, other, hook, prog)
    hooks[hook] = finish_new(directory, other, hook, prog)
    slot = dict(att.slots[other])
    slot["hooks"] = hooks
    att.slots[other] = slot
    return True


# the parts of a program's shape that its maps' contents depend on
# (``image.map_image`` and ``fit``): the rest (steps per invocation, map
# capacities, intervals in use when it was loaded) shapes the program, not
# the bytes written into its maps
IMAGE_KEYS = ("nwords", "fields", "nlimits", "nlogs", "nhashlimits", "nrecent", "memo", "nsets",
              "src_bsize", "dst_bsize", "sport_bsize", "dport_bsize", "length_bsize",
              "ttl_bsize")


def image_key(shape: dict) -> tuple:
    """What of a recorded shape (shape_json) the map image depends on."""
    s = shape_of(shape)   # a record of an older version may lack a key
    return tuple(getattr(s, k) for k in IMAGE_KEYS)


def twins(hooks: dict[str, dict], compiled: dict[str, Compiled]) -> dict[str, tuple[str, ...]]:
    """INPUT -> (LOOPED,) when INPUT's image fits the looped copies'
    classifier: it holds INPUT's chain, so its maps get INPUT's image
    (built once per update, not twice). The two programs' shapes often
    differ where the image does not care: INPUT's may be the server's
    spare, loaded for an earlier rule set's intervals, the looped copies'
    one loaded for this one's (``src_nbounds``)."""
    if LOOPED in compiled and "INPUT" in compiled and \
            image_key(hooks[LOOPED]["shape"]) == image_key(hooks["INPUT"]["shape"]):
        return {"INPUT": (LOOPED,)}
    return {}


def prepare(directory: Path, att: A.Attachment, gen: int, compiled: dict[str, Compiled],
            mode: str, built: Images | None = None) -> tuple[dict[str, dict], list[str]]:
    """Programs of generation ``gen`` holding ``compiled`` (one per hook);
    returns the generation's hooks (for the record) and the hooks that
    needed a new program. Raises LoadError (bcc) or OSError (bpf(2)).
    A new program from the object cache is verified by the kernel while
    its maps are written. ``built``: the images made beforehand
    (``images``, whose time TIMES keeps)."""
    if built is None:
        TIMES.clear()
    LOADED.clear()
    shadow.claim(directory, gen)   # before any of its maps is written
    hooks = verified_hooks(directory, att, gen)
    pending: dict[str, tuple[Shape, LoadedProgram]] = {}
    # the looped copies' program with limit buckets opens INPUT's pinned
    # ones (limit_pin): loaded once INPUT's program, and so its maps, is
    # final (a cached INPUT refused by the kernel is loaded again, new maps)
    later: Shape | None = None
    try:
        for hook, c in compiled.items():
            have = hooks.get(hook)
            # a new INPUT program has new limit buckets, which the looped
            # copies' program must open if it has buckets at all (its loaded
            # shape: a rule set without limits may be followed by one with,
            # map-only)
            renew = (hook == LOOPED and "INPUT" in pending and have is not None
                     and shape_of(have["shape"]).nlimits > 0)
            # a looped copies' program using INPUT's maps must get INPUT's
            # image: where the two images would differ, it gets its own maps
            renew = renew or (hook == LOOPED and have is not None and "INPUT" in hooks
                              and image_key(have["shape"]) != image_key(hooks["INPUT"]["shape"])
                              and shares_maps(directory, gen))
            if have is None or renew or not shape_of(have["shape"]).covers(c.shape):
                # no spare for the looped copies' program (it may need
                # INPUT's limit buckets, see `later`)
                # nor in netfilter mode (its programs are bcc's, never cached)
                spare = (SPARE.pop((hook, is_tc(mode, hook)), None)
                         if hook != LOOPED and mode != NETFILTER else None)
                if spare is not None and spare.shape.covers(c.shape):
                    # loaded (and maybe verified) by the server while idle
                    wanted, prog = spare.shape, spare
                    pin_maps(directory, gen, hook, prog)
                else:
                    if spare is not None:
                        spare.close()
                    wanted = roomy(c)
                    if hook == LOOPED and wanted.nlimits:
                        later = wanted
                        continue
                    prog = (start_looped(directory, gen, wanted, mode, hooks) if hook == LOOPED
                            else start_new(directory, gen, hook, wanted, mode))
                pending[hook] = (wanted, prog)
                if hook != LOOPED:
                    LOADED[(gen, hook)] = wanted
                hooks[hook] = {"shape": shape_json(prog.shape)}
        shared = twins(hooks, compiled) if later is None else {}
        written = {h for hs in shared.values() for h in hs}
        for hook, c in compiled.items():
            if hook in written or (hook == LOOPED and later is not None):
                continue
            shape = shape_of(hooks[hook]["shape"])
            fit(c, shape)
            write_maps(directory, gen, hook, c, shape, shared.get(hook, ()), built)
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
    finally:
        # the pins hold what was pinned: the command server (a process that
        # stays) kept every program it loaded, and its maps, alive before
        for _, prog in pending.values():
            prog.close()
    new = list(pending)
    if later is not None:
        hooks[LOOPED] = load_new(directory, gen, LOOPED, later, mode)
        shape = shape_of(hooks[LOOPED]["shape"])
        fit(compiled[LOOPED], shape)
        write_maps(directory, gen, LOOPED, compiled[LOOPED], shape)
        new.append(LOOPED)
    shadow.settle(gen)   # unmap the maps of programs this generation no longer has
    for hook in hooks:
        hooks[hook]["on"] = hook in compiled
    return hooks, new


def write_counters(directory: Path, gen: int, values: "dict[str, counts.Flat]",
                   zeroed: bool = False) -> None:
    """Each hook's counter map set to its values (every slot: the map's
    earlier contents are overwritten or zeroed). ``zeroed``: the maps hold
    zeros (zero_counters), only counted slots are written."""
    for hook, flat in values.items():
        fd = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "counter_map"))
        try:
            bpfsys.write_counters_flat(fd, flat, sparse=zeroed)
        finally:
            os.close(fd)


def zero_counters(directory: Path, gen: int, hooks: list[str]) -> None:
    """The counter maps of the generation's ``hooks`` zeroed (all slots)."""
    for hook in hooks:
        fd = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "counter_map"))
        try:
            bpfsys.zero_counters(fd)
        finally:
            os.close(fd)


def read_counters(directory: Path, gen: int, hooks: list[str], nslots: int
                  ) -> "dict[str, counts.Flat]":
    """The hooks' counters. In a process that stays (numpy imported: the
    command server), the maps after the first are read by threads at the
    same time: each read is one bpf(2) call (~2.3 ms at 10k slots) that
    holds no GIL, and the machine has more than one CPU."""
    def read(hook: str) -> "counts.Flat":
        fd = bpfsys.obj_get(str(hook_dir(directory, gen, hook) / "counter_map"))
        try:
            return bpfsys.read_counters_flat(fd, nslots)
        finally:
            os.close(fd)

    if len(hooks) < 2 or "numpy" not in sys.modules or nslots < PARALLEL_READ_SLOTS:
        return {hook: read(hook) for hook in hooks}
    import threading

    got: dict[str, object] = {}

    def run(hook: str) -> None:
        try:
            got[hook] = read(hook)
        except OSError as exc:
            got[hook] = exc

    threads = [threading.Thread(target=run, args=(hook,)) for hook in hooks[1:]]
    for t in threads:
        t.start()
    try:
        out = {hooks[0]: read(hooks[0])}
    finally:
        for t in threads:
            t.join()
    for hook in hooks[1:]:
        value = got[hook]
        if isinstance(value, OSError):
            raise value
        out[hook] = value
    return out


# below this many slots a read is quicker than starting a thread
PARALLEL_READ_SLOTS = 2048


def fill_slots(directory: Path, gen: int, hooks: dict[str, dict], mode: str,
               rejects: bool = True) -> None:
    """Point the roots' prog array slots of ``gen`` at its hooks that are
    on; empty the others (the packet passes). ``rejects``: INPUT or
    FORWARD may send REJECT replies (reject_output.rejecting)."""
    root = A.ns_pins(directory) / "root"
    names = ("nf_slots",) if mode == NETFILTER else ("xdp_slots", "tc_slots")
    arrays = {name: bpfsys.obj_get(str(root / name)) for name in names}
    try:
        slots = dict(HOOK_INDEX)
        if mode not in ("tc", NETFILTER):
            slots[LOOPED] = HOOK_INDEX["INPUT"]   # tc_slots' INPUT slot is free then
        for hook, index in slots.items():
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
    # REJECT replies pass OUTPUT: the ingress classifiers' reply builders
    # tail-call this generation's OUTPUT classifier (or its XDP twin)
    if mode == NETFILTER:
        return   # netfilter's own REJECT sends the replies, through OUTPUT
    from .reject_output import link_output
    link_output(lambda hook: hook_dir(directory, gen, hook), hooks, mode, A.ns_pins(directory),
                rejects)


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
