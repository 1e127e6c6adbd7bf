"""Load bpf/filter.c compiled for a Shape, and fill its maps; the roots.

The C source is one template whose shape comes from -D flags. Compiling
costs about a second, so a loaded program is reused for any compiled rule
set whose shape it covers (Shape.covers): only map contents change. A
shape compiled before on this machine comes from the object cache
(objcache.py: raw bpf(2), no bcc, no clang); otherwise bcc compiles it and
the result is cached. Either way the program and its maps are plain file
descriptors this module owns, written and read by raw bpf(2) (bpfsys).

Compiling needs bcc (Debian's python3-bpfcc, importable from
/usr/bin/python3 or a venv with system site packages) and kernel headers
under /lib/modules/$(uname -r)/build (see the field notes)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .compiler import FIELD_ORDER, MAX_CHUNKS, POLICY_COUNTER, SIZE_ATTRS, Compiled, Shape
from . import bpfsys, maygoto, objcache
from .image import map_image, u32

# BPF_IPTABLES_BPF_DIR: another source tree (tests use a broken one to
# check that a program that fails to load leaves the attached one in place)
BPF_DIR = Path(os.environ.get("BPF_IPTABLES_BPF_DIR")
               or Path(__file__).resolve().parents[2] / "bpf")
SOURCE = BPF_DIR / "filter.c"
FUNCTION = "xdp_filter"
REJECT_FUNCTION = "xdp_reject"
# the stateful matches' own programs and their self_map slots (filter.c
# SLOT_HASHLIMIT, SLOT_RECENT), each loaded only for rule sets using it
HASHLIMIT_FUNCTION = "xdp_hashlimit"
RECENT_FUNCTION = "xdp_recent"
STATEFUL_SLOTS = {HASHLIMIT_FUNCTION: 2, RECENT_FUNCTION: 3}


def functions(shape: Shape) -> list[str]:
    """The object's programs: the classifier, the REJECT reply builder and,
    for rule sets with hashlimit or recent, their checks (filter.c)."""
    return ([FUNCTION, REJECT_FUNCTION] + ([HASHLIMIT_FUNCTION] if shape.nhashlimits else [])
            + ([RECENT_FUNCTION] if shape.nrecent else []))


def cflags(shape: Shape, tc: bool = False, ct_dir: str | None = None,
           limit_pin: str | None = None, nf: bool = False) -> list[str]:
    flags = [f"-I{BPF_DIR}", f"-DHOOK_TC={int(tc)}",
             f"-DNWORDS={shape.nwords}", f"-DNENTRIES={shape.nentries}",
             f"-DNCOUNTERS={shape.ncounters}", f"-DSTEPS={shape.steps}",
             # may_goto loops on 6.9+, bounded loops before (lib/loop.h)
             f"-DHAVE_MAY_GOTO={int(maygoto.available())}"]
    # every field kind and map size the compiler knows (compiler.FIELD_ORDER,
    # SIZE_ATTRS): a new field needs no edit here
    flags += [f"-D{k.upper()}={getattr(shape, k)}" for k in SIZE_ATTRS]
    # the dense blocks' slots (bpf/lib/ranges.h): a size, not one ``covers`` checks
    flags += [f"-DSRC_DENSE={shape.src_dense}", f"-DDST_DENSE={shape.dst_dense}"]
    if nf:
        # --mode netfilter (nfmode.py): kernel offsets and kfunc ids; the
        # kernel's conntrack instead of the eBPF tracker
        from .nfmode import cflags as nf_cflags
        flags += nf_cflags("ctstate" in shape.fields)
        if ct_dir:
            from .nfmode import reject_dir
            flags.append(f'-DNF_REJECT_PIN_DIR="{reject_dir(ct_dir)}"')
    for name in FIELD_ORDER:
        flags.append(f"-DFIELD_{name.upper()}={int(name in shape.fields)}")
    if "ctstate" in shape.fields and not nf:
        # the tracker (bpf/lib/conntrack.h) comes with its field; its maps
        # are the namespace's (pinned in ct_dir), or private without one
        flags.append("-DCONNTRACK=1")
        from ..conntrack.hz import kernel_hz  # --ctexpire of unconfirmed entries
        flags.append(f"-DCT_HZ={kernel_hz()}")
        if ct_dir:
            flags.append(f'-DCT_PIN_DIR="{ct_dir}"')
    if shape.nlimits:
        # the refill per jiffy of the credits limit.py computed costs with
        from ..extensions.limit import CREDITS_PER_JIFFY

        flags.append(f"-DLIMIT_CREDITS_PER_JIFFY={CREDITS_PER_JIFFY}")
        if limit_pin:
            # another program's buckets (the looped copies' INPUT shares INPUT's)
            flags.append(f'-DLIMIT_PIN="{limit_pin}"')
    if shape.nlogs and ct_dir:
        # LOG's ring and loss counter: the namespace's, next to conntrack's
        flags.append(f'-DLOG_PIN_DIR="{log_dir(ct_dir)}"')
    if shape.nhashlimits:
        # hashlimit's credits per jiffy (64-bit) and, attached, the
        # namespace's tables (hashlimit_tables.py)
        from ..extensions.hashlimit import BYTES_FULL, CPJ_BYTES
        from ..extensions.hashlimit import CREDITS_PER_JIFFY as HL_CPJ

        flags += [f"-DHL_CREDITS_PER_JIFFY={HL_CPJ}ULL", f"-DHL_CPJ_BYTES={CPJ_BYTES}ULL",
                  f"-DHL_BYTES_FULL={BYTES_FULL}ULL"]
        if ct_dir:
            flags.append(f'-DHL_PIN_DIR="{hashlimit_dir(ct_dir)}"')
    if shape.nrecent:
        from ..conntrack.hz import kernel_hz  # --seconds * HZ, as xt_recent
        from .recent import recent_dir

        flags.append(f"-DRECENT_HZ={kernel_hz()}")
        if ct_dir:
            # the recent tables: the namespace's, next to conntrack's
            flags.append(f'-DRECENT_PIN_DIR="{recent_dir(ct_dir)}"')
    if shape.nsets:
        # -m set: the namespace's set maps (ipset/maps.py, pinned by
        # bpf-iptables-set next to conntrack's), private ones without ct_dir
        from ..ipset.maps import BITMAP_SETS, BITMAP_WORDS, MAX_ELEMS

        flags += [f"-DSET_MAX_ELEMS={MAX_ELEMS}", f"-DSET_BITMAP_SLOTS={BITMAP_SETS * BITMAP_WORDS}"]
        if ct_dir:
            flags.append(f'-DSET_PIN_DIR="{set_dir(ct_dir)}"')
    return flags


def object_key(shape: Shape, tc: bool = False) -> str:
    """The object cache's key of the classifier for ``shape``: the
    classifier and the REJECT reply builder, loaded from one compile."""
    prog_type = SCHED_CLS if tc else XDP
    return objcache.key(SOURCE, cflags(shape, tc),
                        {name: prog_type for name in functions(shape)})


def hashlimit_dir(ct_dir: str) -> str:
    """The bpffs directory of the namespace's hashlimit tables."""
    return os.path.join(os.path.dirname(ct_dir), "hashlimit")


def set_dir(ct_dir: str) -> str:
    """The bpffs directory of the namespace's set maps (ipset/store.py)."""
    return os.path.join(os.path.dirname(ct_dir), "sets")


def log_dir(ct_dir: str) -> str:
    """The bpffs directory of the namespace's LOG ring (logger.py reads it)."""
    return os.path.join(os.path.dirname(ct_dir), "log")


@dataclass
class RuleCounters:
    packets: int
    bytes: int


@dataclass
class _Kept:
    data: bytes = b""


@contextmanager
def _stderr_kept_back():
    """bcc prints the verifier's log to file descriptor 2 when a load
    fails; a failure we recover from must not reach the user's terminal.
    What was printed is in the yielded object's ``data`` afterwards (the
    temporary file itself is gone by then)."""
    saved = os.dup(2)
    kept = _Kept()
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield kept
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            kept.data = buf.read()


XDP, SCHED_CLS = 6, 3   # enum bpf_prog_type


def _dup_fds(bpf, funcs: list[str]) -> objcache.Loaded:
    """bcc's map and program fds as our own (dup'ed: bcc closes its own at
    cleanup), so that a program bcc loaded is used exactly like one the
    cache loaded."""
    maps = {name: os.dup(fd) for name, fd in objcache.table_fds(bpf).items()}
    return objcache.Loaded(maps, {f: os.dup(bpf.funcs[f.encode()].fd) for f in funcs})


def _keep(key: str | None, bpf, funcs: dict[str, int], meta: dict) -> None:
    """Store what bcc just loaded in the object cache (when it can be)."""
    if key is None:
        return
    try:
        objcache.store(key, objcache.capture(bpf, funcs, meta))
    except objcache.Uncacheable:
        pass


def _from_cache(key: str | None, need: set[str], background: bool = False,
                share: dict[str, int] | None = None) -> tuple[objcache.Loaded, dict] | None:
    """The cached module of ``key`` loaded by raw bpf(2); None on a miss or
    when the entry does not load (the caller compiles, which rewrites it).
    ``background``: the programs still verifying (``Loaded.wait()``).
    ``share``: maps of another program to use (objcache.load)."""
    entry = objcache.lookup(key) if key is not None else None
    if entry is None or not need <= {m.name for m in entry.maps}:
        return None
    try:
        return objcache.load(entry, background=background, share=share), entry.meta
    except OSError:
        return None


class LoadedProgram:
    """One loaded classifier (XDP or TC) and its maps, as file descriptors
    this object owns. Loaded from the object cache when this shape was
    compiled before on this machine (no bcc import, no clang), otherwise
    compiled by bcc (and then cached)."""

    def __init__(self, shape: Shape, debug: int = 0, tc: bool = False,
                 background: bool = False, ct_dir: str | None = None,
                 limit_pin: str | None = None, nf: bool = False,
                 share: dict[str, int] | None = None):
        """``tc``: a TC (cls_bpf/tcx) program, not XDP: OUTPUT at egress, and
        INPUT/FORWARD at ingress in --mode tc (the interface field is
        skb->ifindex, the device the packet is on either way).
        ``background``: on a cache hit, return once the maps exist (they can
        be written) while the kernel verifies the program; ``finish()``
        (or ``fd``) waits for it and raises OSError if the kernel refused
        the cached program (then everything is closed: load it again).
        ``ct_dir``: the bpffs directory of the namespace's conntrack maps
        (created, or opened when pinned already; without it the tracker's
        maps are the program's own).
        ``nf``: a netfilter-hook program (--mode netfilter, nfmode.py):
        always compiled (the object cache does not keep kfunc calls).
        ``share``: name -> fd of another program's maps that this one uses
        too where they are the same map (from the object cache only; bcc
        makes its own)."""
        tracked = bool(ct_dir) and "ctstate" in shape.fields and not nf
        if tracked:
            os.makedirs(ct_dir, mode=0o700, exist_ok=True)
        if ct_dir and shape.nlogs:
            os.makedirs(log_dir(ct_dir), mode=0o700, exist_ok=True)
        if ct_dir and shape.nhashlimits:
            os.makedirs(hashlimit_dir(ct_dir), mode=0o700, exist_ok=True)
        if ct_dir and shape.nrecent:
            from .recent import recent_dir
            os.makedirs(recent_dir(ct_dir), mode=0o700, exist_ok=True)
        if ct_dir and shape.nsets:
            # created by us (not bcc) and filled from the set store first
            from ..ipset.store import ensure_maps
            from ..state import namespace_dir

            ensure_maps(namespace_dir())
        # maps bcc opens (or creates and pins) by path: the namespace's
        # conntrack table, LOG ring, hashlimit and recent tables, sets
        pinned = bool(ct_dir) and (tracked or bool(shape.nlogs) or bool(shape.nhashlimits)
                                   or bool(shape.nrecent) or bool(shape.nsets) or nf)
        # limit_pin: -m limit's buckets are the pinned map of another program
        limit_pin = limit_pin if shape.nlimits else None
        pinned = pinned or bool(limit_pin)
        if ct_dir and nf:
            # REJECT's records, shared with the x_tables side (nfmode.py)
            from .nfmode import reject_dir
            os.makedirs(reject_dir(ct_dir), mode=0o700, exist_ok=True)
        start = time.monotonic()
        # the raw loader would make private ones: programs with pinned maps
        # are always compiled
        key = (None if debug or pinned or nf
               else object_key(shape, tc))
        hit = _from_cache(key, set(map_names(shape)), background, share)
        steps = hit[1].get("steps") if hit else None
        if hit and not (isinstance(steps, int) and 0 < steps <= shape.steps):
            hit[0].close()
            hit = None
        self.cache_hit = hit is not None
        if hit is not None:
            self._loaded = hit[0]
        else:
            self._loaded, steps = self._compile(shape, tc, debug, key,
                                                ct_dir if pinned else None, limit_pin, nf)
        self.shape = replace(shape, steps=steps, scan=shape.scan_steps)
        self.maps = self._loaded.maps
        self._fd = -1
        self.compiled: Compiled | None = None
        self._start = start
        if not background:
            self.finish()

    def finish(self) -> None:
        """Wait for the program's load (a no-op once loaded)."""
        if self._fd >= 0:
            return
        self._loaded.wait()
        self._fd = self._loaded.progs[FUNCTION]
        # long scans continue in a tail call of the program itself
        bpfsys.map_update(self.maps["self_map"], u32(0), u32(self._fd))
        # -j REJECT: the reply is built by a program of its own (filter.c)
        bpfsys.map_update(self.maps["self_map"], u32(1),
                          u32(self._loaded.progs[REJECT_FUNCTION]))
        for name, slot in STATEFUL_SLOTS.items():
            if name in self._loaded.progs:
                # -m hashlimit, -m recent: evaluated by programs of their own
                bpfsys.map_update(self.maps["self_map"], u32(slot),
                                  u32(self._loaded.progs[name]))
        self.compile_seconds = time.monotonic() - self._start

    @staticmethod
    def _compile(shape: Shape, tc: bool, debug: int, key: str | None,
                 ct_dir: str | None = None, limit_pin: str | None = None,
                 nf: bool = False) -> tuple[objcache.Loaded, int]:
        from bcc import BPF  # imported late: only a cache miss needs bcc

        if nf:
            return _compile_nf(shape, debug, ct_dir)
        steps = shape.steps
        while True:
            bpf = BPF(src_file=str(SOURCE).encode(),
                      cflags=cflags(replace(shape, steps=steps), tc, ct_dir, limit_pin),
                      debug=debug)
            try:
                with _stderr_kept_back() as kept:
                    bpf.load_func(FUNCTION.encode(), BPF.SCHED_CLS if tc else BPF.XDP)
                break
            except Exception as exc:
                # E2BIG: the verifier gave up (it walks every iteration of
                # the scan loop, and how many states it keeps depends on
                # the fields compiled in). Fewer steps per invocation,
                # more tail calls, same scans.
                bpf.cleanup()
                fewer = steps * 2 // 3
                if ("Argument list too long" not in str(exc)
                        or fewer < 16 or shape.invocations(fewer) > MAX_CHUNKS):
                    os.write(2, kept.data)  # the verifier's log says why
                    raise
                steps = fewer
        try:
            # -j REJECT: the reply is built by a program of its own (filter.c),
            # and so are -m hashlimit's and -m recent's checks
            names = functions(shape)
            for name in names[1:]:
                bpf.load_func(name.encode(), BPF.SCHED_CLS if tc else BPF.XDP)
            prog_type = SCHED_CLS if tc else XDP
            # cached under the shape asked for, with the steps that verified
            _keep(key, bpf, {name: prog_type for name in names}, {"steps": steps})
            return _dup_fds(bpf, names), steps
        finally:
            bpf.cleanup()

    @property
    def fd(self) -> int:
        self.finish()
        return self._fd

    def map_fds(self) -> dict[str, int]:
        return {name: self.maps[name] for name in map_names(self.shape)}

    def close(self) -> None:
        self._loaded.close()

    # -- writing maps ---------------------------------------------------------

    def install(self, c: Compiled) -> None:
        """Write ``c`` into the maps (counters zeroed): by raw bpf(2), as
        generation.write_maps does for a pinned program."""
        for image in map_image(c, self.shape):
            fd = self.maps[image.name]
            if image.clear:
                keep = {k for k, _ in image.items}
                for key in bpfsys.map_keys(fd, bpfsys.map_info(fd).key_size):
                    if key not in keep:
                        bpfsys.map_delete(fd, key)
            bpfsys.map_update_many(fd, image.items)
        if c.hashlimits and "hl_tables" in self.maps:
            # a private program (tests): its own hashlimit tables, created
            # as an attached namespace's update does (hashlimit_tables.py)
            from .hashlimit_tables import creators, ensure_fds
            ensure_fds(self.maps["hl_tables"], self.maps["hl_added"], creators(c.hashlimits))
        if self.shape.nrecent:
            # the recent tables the rules name (private to this program
            # without a namespace's pins)
            from .recent import sync
            sync(self.maps["recent_tables"], _recent_needs(c))
        self.zero_counters()
        self.compiled = c

    # -- counters -------------------------------------------------------------

    def zero_counters(self) -> None:
        bpfsys.zero_counters(self.maps["counter_map"])

    def _counters(self) -> list[tuple[int, int]]:
        return bpfsys.read_counters(self.maps["counter_map"], self.shape.ncounters)

    def counter(self, slot: int) -> RuleCounters:
        return RuleCounters(*self._counters()[slot])

    def rule_counters(self) -> dict[tuple[str, int], RuleCounters]:
        assert self.compiled is not None
        values = self._counters()
        return {key: RuleCounters(*values[slot]) for key, slot in self.compiled.counter_of.items()}

    def policy_counters(self) -> RuleCounters:
        return self.counter(POLICY_COUNTER)


def _compile_nf(shape: Shape, debug: int, ct_dir: str | None) -> tuple[objcache.Loaded, int]:
    """The HOOK_NF build (--mode netfilter): compiled by bcc, loaded raw
    with its kfunc calls (nfmode.load_raw); fewer steps per invocation
    when the verifier gives up, as ``_compile``."""
    import errno

    from bcc import BPF
    from .nfmode import load_raw

    steps = shape.steps
    while True:
        bpf = BPF(src_file=str(SOURCE).encode(),
                  cflags=cflags(replace(shape, steps=steps), ct_dir=ct_dir, nf=True),
                  debug=debug)
        progs: dict[str, int] = {}
        try:
            for name in functions(shape):
                progs[name] = load_raw(bpf, name)
            maps = {name: os.dup(fd) for name, fd in objcache.table_fds(bpf).items()}
            return objcache.Loaded(maps, progs), steps
        except OSError as exc:
            for fd in progs.values():
                os.close(fd)
            fewer = steps * 2 // 3
            if (exc.errno != errno.E2BIG or fewer < 16
                    or shape.invocations(fewer) > MAX_CHUNKS):
                log = getattr(exc, "verifier_log", "")
                raise OSError(exc.errno, f"{exc.strerror}: {log[-2000:]}") from None
            steps = fewer
        finally:
            bpf.cleanup()


class ProgramCache:
    """Reuse one loaded program for every rule set its shape covers."""

    def __init__(self, nf: bool = False) -> None:
        self.programs: list[LoadedProgram] = []
        self.nf = nf   # netfilter-hook programs (--mode netfilter)

    def get(self, shape: Shape) -> LoadedProgram:
        for p in self.programs:
            if p.shape.covers(shape):
                return p
        prog = LoadedProgram(shape, nf=self.nf)
        self.programs.append(prog)
        return prog

    def close(self) -> None:
        for p in self.programs:
            p.close()
        self.programs.clear()



class Roots:
    """bpf/root.c: the programs attached to every interface for the
    namespace's lifetime, their prog arrays and the active-generation word
    (one module, so both roots share that one map). From the object cache
    when it has them (no bcc), else compiled by bcc and cached."""

    FUNCTIONS = {"xdp_root": XDP, "tc_ingress_root": SCHED_CLS, "tc_egress_root": SCHED_CLS,
                 "tc_loop_root": SCHED_CLS}
    MAPS = ("active_map", "xdp_slots", "tc_slots")

    def __init__(self, functions: list[str]):
        source = BPF_DIR / "root.c"
        funcs = {name: self.FUNCTIONS[name] for name in functions}
        key = objcache.key(source, [f"-I{BPF_DIR}"], funcs)
        hit = _from_cache(key, set(self.MAPS))
        self.cache_hit = hit is not None
        self.loaded = hit[0] if hit is not None else self._compile(source, funcs, key)

    @staticmethod
    def _compile(source: Path, funcs: dict[str, int], key: str) -> objcache.Loaded:
        from bcc import BPF

        bpf = BPF(src_file=str(source).encode(), cflags=[f"-I{BPF_DIR}"])
        try:
            for name, prog_type in funcs.items():
                bpf.load_func(name.encode(), prog_type)
            _keep(key, bpf, funcs, {})
            return _dup_fds(bpf, list(funcs))
        finally:
            bpf.cleanup()

    def prog_fds(self) -> dict[str, int]:
        return dict(self.loaded.progs)

    def map_fds(self) -> dict[str, int]:
        return {name: self.loaded.maps[name] for name in self.MAPS}

    def close(self) -> None:
        self.loaded.close()


def map_names(shape: Shape) -> list[str]:
    """Every map of a classifier compiled for ``shape`` that a later
    process writes or reads (so pins): the image's, counters, the tail-call
    array (pinned so that it keeps its entry). The image's names come from
    image.py itself (an empty chain's image with the shape's fields), so a
    new field's maps are pinned without an edit here."""
    # what the names depend on (the empty shape below has nothing else);
    # remembered: a load asks twice per program, ~2.5 ms each at 10k rules
    key = (shape.nwords, shape.fields, shape.nlimits, shape.nlogs, shape.nhashlimits,
           shape.nrecent, shape.memo, shape.nsets, shape.sport_bsize, shape.dport_bsize,
           bool(shape.src_dense), bool(shape.dst_dense))
    names = _MAP_NAMES.get(key)
    if names is None:
        from ..model import Table
        from .compiler import compile_chain

        empty = compile_chain(Table.empty("filter"), "INPUT", {},
                              Shape(shape.nwords, 1, 2, shape.fields, nlimits=shape.nlimits,
                                    nlogs=shape.nlogs, nhashlimits=shape.nhashlimits,
                                    nrecent=shape.nrecent, memo=shape.memo,
                                    nsets=shape.nsets,
                                    # the port slots decide whether filter.c has
                                    # ports_pair_map (compiler.ports_pair)
                                    sport_bsize=shape.sport_bsize,
                                    dport_bsize=shape.dport_bsize,
                                    # whether it has the dense blocks' maps
                                    src_dense=shape.src_dense,
                                    dst_dense=shape.dst_dense))
        names = _MAP_NAMES[key] = tuple(image.name for image in map_image(empty, empty.shape))
    return [*names, "counter_map", "self_map"]


_MAP_NAMES: dict[tuple, tuple[str, ...]] = {}


def _recent_needs(c: Compiled) -> dict[str, tuple[int, int]]:
    """The tables ``c``'s recent rules name (a program loaded without a
    rule set to look at: tests)."""
    from .recent import stamps_mask

    needs: dict[str, tuple[int, int]] = {}
    for d in c.recents:
        have = needs.get(d.name)
        needs[d.name] = (d.mask, max(stamps_mask(d.hit_count), have[1] if have else 0))
    return needs
