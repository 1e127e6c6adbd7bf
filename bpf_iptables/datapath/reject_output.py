"""REJECT replies through OUTPUT: the ingress classifiers' SLOT_OUTPUT points
at the generation's OUTPUT classifier (bpf/lib/reject_out.h).

iptables' replies (icmp_send, nf_send_reset) traverse filter OUTPUT: it
counts them and its verdict decides whether they leave. The ingress
classifiers' reply builder (xdp_reject) tail-calls, through slot 4 of its
own ``self_map``, a classifier of OUTPUT's rules with the reply:

- ``--mode tc``: INPUT and FORWARD are TC programs like OUTPUT's, so the
  slot holds OUTPUT's classifier itself;
- XDP modes: an XDP program cannot tail-call a TC one, so the slot holds
  OUTPUT's **XDP twin**: filter.c built for OUTPUT's shape as XDP with
  ``-DREPLY_XDP=1``, loaded by raw bpf(2) with OUTPUT's own maps (rules,
  counters, limit buckets; the namespace's conntrack, LOG, hashlimit,
  recent and set maps by their pins), so map-only updates of OUTPUT
  update the twin too and both count in one counter map. Only its
  scratch maps and its own prog array are private. Pinned next to
  OUTPUT's program (``reply_prog``, ``reply_self_map``); a new OUTPUT
  program (a new hook directory) gets a new twin. Loaded only while
  INPUT or FORWARD has a REJECT rule; the compiled module is kept in the
  object cache (a miss compiles it with bcc once).

An empty slot (OUTPUT has nothing to do: no rules, policy ACCEPT) sends
the reply unclassified, as before."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import NotSupported
from . import bpfsys, objcache
from .compiler import MAX_CHUNKS, VERDICT_CONTINUE, Compiled, Shape
from .image import u32

SLOT_OUTPUT = 4        # bpf/lib/reject_out.h
VERDICT_REJECT = 0x100
INGRESS_HOOKS = ("INPUT", "FORWARD")
TWIN_PROG, TWIN_SELF = "reply_prog", "reply_self_map"
XDP = 6
# the twin's own maps: per-CPU scratch and its tail-call array
PRIVATE = {"self_map", "resume_map", "ct_scratch", "set_result", "hl_scratch", "recent_scratch"}


class TwinError(OSError):
    """The XDP twin could not be made to share OUTPUT's maps."""


def rejecting(compiled: dict[str, Compiled]) -> bool:
    """Whether INPUT or FORWARD has a REJECT entry (its reply needs OUTPUT)."""
    return any(e.verdict != VERDICT_CONTINUE and e.verdict & VERDICT_REJECT
               for hook in INGRESS_HOOKS if hook in compiled for e in compiled[hook].entries)


# the kernel's tail calls per packet (MAX_TAIL_CALL_CNT)
TAIL_CALLS = 33


def check_tail_calls(compiled: dict[str, Compiled]) -> None:
    """A reply's path: the root's tail call, the rejecting chain's scan
    invocations, xdp_reject, then OUTPUT's scan invocations; past the
    kernel's 33 tail calls OUTPUT could not classify it (the reply would
    leave unclassified or be dropped), so such a rule set is refused."""
    output = compiled.get("OUTPUT")
    if output is None:
        return
    m = output.shape.invocations(output.shape.steps)
    for hook in INGRESS_HOOKS:
        c = compiled.get(hook)
        if c is None or not rejecting({hook: c}):
            continue
        if 1 + c.shape.invocations(c.shape.steps) + m > TAIL_CALLS:
            raise NotSupported(f"REJECT in {hook} with chains this long: its replies pass "
                               "OUTPUT, and the two scans need more than the kernel's "
                               f"{TAIL_CALLS} tail calls per packet in the eBPF data path")


def link_output(hook_dir: Callable[[str], Path], hooks: dict[str, dict], mode: str,
                ns_pins: Path, rejects: bool = True) -> None:
    """Fill (or empty) SLOT_OUTPUT of every ingress classifier that is on
    in ``hooks`` (a generation's record), given where each hook's pins
    live; ``rejects``: whether any ingress chain can reject (else the XDP
    twin is not loaded). Raises OSError (bpf(2), or the twin's load)."""
    output = hooks.get("OUTPUT")
    ingress = [h for h in INGRESS_HOOKS if h in hooks and hooks[h].get("on")]
    prog = -1
    if output is not None and output.get("on") and rejects and ingress:
        if mode == "tc":
            prog = bpfsys.obj_get(str(hook_dir("OUTPUT") / "prog"))
        else:
            prog = ensure_twin(hook_dir("OUTPUT"), _shape(output["shape"]), ns_pins)
    try:
        for hook in ingress:
            arr = bpfsys.obj_get(str(hook_dir(hook) / "self_map"))
            try:
                if prog >= 0:
                    bpfsys.map_update(arr, u32(SLOT_OUTPUT), u32(prog))
                else:
                    bpfsys.map_delete(arr, u32(SLOT_OUTPUT))   # ENOENT: False
            finally:
                os.close(arr)
    finally:
        if prog >= 0:
            os.close(prog)


def _shape(d: dict) -> Shape:
    from .generation import shape_of
    return shape_of(d)


# -- OUTPUT's XDP twin ---------------------------------------------------------

def twin_functions(shape: Shape) -> list[str]:
    """The twin's programs: the classifier and the stateful checks it
    continues through (no reply builder: OUTPUT rejecting a reply drops it)."""
    from .program import FUNCTION, HASHLIMIT_FUNCTION, RECENT_FUNCTION
    return ([FUNCTION] + ([HASHLIMIT_FUNCTION] if shape.nhashlimits else [])
            + ([RECENT_FUNCTION] if shape.nrecent else []))


def twin_cflags(shape: Shape) -> list[str]:
    """filter.c as XDP for OUTPUT's shape, in reply mode; without the
    namespace's pin directories (the loader opens those maps by pin)."""
    from .program import cflags
    return cflags(shape, tc=False) + ["-DREPLY_XDP=1"]


def pinned_maps(hook_dir: Path, shape: Shape, ns_pins: Path) -> dict[str, Path]:
    """Every shared map of the twin -> the pin of OUTPUT's (or the
    namespace's) map of that name."""
    from .program import map_names
    ct = ns_pins / "conntrack"
    out = {name: hook_dir / name for name in map_names(shape) if name not in PRIVATE}
    out.update({"ct_table": ct / "table", "ct_config": ct / "config", "ct_stats": ct / "stats",
                "log_ring": ns_pins / "log" / "ring", "log_lost": ns_pins / "log" / "lost",
                "hl_tables": ns_pins / "hashlimit" / "tables",
                "hl_added": ns_pins / "hashlimit" / "added",
                "hl_buckets": ns_pins / "hashlimit" / "buckets",
                "recent_tables": ns_pins / "recent" / "tables",
                "set_ip": ns_pins / "sets" / "ip", "set_net": ns_pins / "sets" / "net",
                "set_ipport": ns_pins / "sets" / "ipport", "set_port": ns_pins / "sets" / "port"})
    return out


def ensure_twin(hook_dir: Path, shape: Shape, ns_pins: Path) -> int:
    """OUTPUT's XDP twin (a new fd): the pinned one, or loaded and pinned."""
    pin = hook_dir / TWIN_PROG
    if pin.exists():
        return bpfsys.obj_get(str(pin))
    module = twin_module(shape)
    shared = pinned_maps(hook_dir, shape, ns_pins)
    fds: list[int] = []
    own: dict[str, int] = {}
    progs: dict[str, int] = {}
    try:
        for d in module.maps:
            if d.name in PRIVATE:
                fd = bpfsys.map_create(d.type, d.key_size, d.value_size, d.max_entries,
                                       d.flags, d.name)
                own[d.name] = fd
            elif d.name in shared and shared[d.name].exists():
                fd = bpfsys.obj_get(str(shared[d.name]))
                info = bpfsys.map_info(fd)
                if (info.type, info.key_size, info.value_size, info.max_entries) != (
                        d.type, d.key_size, d.value_size, d.max_entries):
                    os.close(fd)
                    raise TwinError(f"OUTPUT's map {d.name} does not fit its XDP twin")
            else:
                raise TwinError(f"no map of OUTPUT's for its XDP twin's {d.name}")
            fds.append(fd)
        for name, f in module.funcs.items():
            progs[name] = bpfsys.prog_load(f.prog_type, objcache.patched(f, fds),
                                           module.license, name)
        from .program import FUNCTION, STATEFUL_SLOTS
        self_map = own["self_map"]
        bpfsys.map_update(self_map, u32(0), u32(progs[FUNCTION]))
        for name, slot in STATEFUL_SLOTS.items():
            if name in progs:
                bpfsys.map_update(self_map, u32(slot), u32(progs[name]))
        bpfsys.obj_pin(self_map, str(hook_dir / TWIN_SELF))
        bpfsys.obj_pin(progs[FUNCTION], str(pin))
        return os.dup(progs[FUNCTION])
    finally:
        for fd in [*fds, *progs.values()]:
            os.close(fd)


def twin_module(shape: Shape) -> objcache.Module:
    """The twin's compiled module: from the object cache, else bcc (kept)."""
    funcs = {name: XDP for name in twin_functions(shape)}
    key = objcache.key(objcache_source(), twin_cflags(shape), funcs)
    m = objcache.lookup(key)
    if m is not None:
        return m
    m = _compile(shape, funcs)
    objcache.store(key, m)
    return m


def objcache_source() -> Path:
    from .program import SOURCE
    return SOURCE


def _compile(shape: Shape, funcs: dict[str, int]) -> objcache.Module:
    """bcc, with fewer steps per invocation while the verifier gives up
    (E2BIG), as program.LoadedProgram does for the classifier."""
    from dataclasses import replace

    from bcc import BPF

    from .program import SOURCE, _stderr_kept_back
    steps = shape.steps
    while True:
        try:
            bpf = BPF(src_file=str(SOURCE).encode(),
                      cflags=twin_cflags(replace(shape, steps=steps)))
        except Exception as exc:   # bcc reports compile errors as Exception
            raise TwinError(f"OUTPUT's XDP twin does not compile: {exc}") from None
        try:
            with _stderr_kept_back() as kept:
                for name in funcs:
                    bpf.load_func(name.encode(), BPF.XDP)
        except Exception as exc:
            bpf.cleanup()
            fewer = steps * 2 // 3
            if ("Argument list too long" not in str(exc)
                    or fewer < 16 or shape.invocations(fewer) > MAX_CHUNKS):
                os.write(2, kept.data)
                raise TwinError(f"OUTPUT's XDP twin does not load: {exc}") from None
            steps = fewer
            continue
        try:
            return objcache.capture(bpf, funcs, {"steps": steps})
        except objcache.Uncacheable as exc:
            # the loader (ensure_twin) needs the captured module
            raise TwinError(f"OUTPUT's XDP twin cannot be loaded raw: {exc}") from None
        finally:
            bpf.cleanup()
