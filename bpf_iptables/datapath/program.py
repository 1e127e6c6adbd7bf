"""Compile bpf/filter.c for a Shape with bcc, load it, and fill its maps.

The C source is one template whose shape comes from -D flags. Compiling
costs about a second, so a loaded program is reused for any compiled rule
set whose shape it covers (Shape.covers): only map contents change.

Needs bcc (Debian's python3-bpfcc, importable from /usr/bin/python3 or a
venv with system site packages) and kernel headers under
/lib/modules/$(uname -r)/build (see the field notes)."""
from __future__ import annotations

import ctypes
import os
import tempfile
from contextlib import contextmanager
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .compiler import FIELD_ORDER, MAX_CHUNKS, POLICY_COUNTER, SIZE_ATTRS, Compiled, Shape
from .bpfsys import write_mappable
from .image import joined, map_image

# BPF_IPTABLES_BPF_DIR: another source tree (tests use a broken one to
# check that a program that fails to load leaves the attached one in place)
BPF_DIR = Path(os.environ.get("BPF_IPTABLES_BPF_DIR")
               or Path(__file__).resolve().parents[2] / "bpf")
SOURCE = BPF_DIR / "filter.c"
FUNCTION = "xdp_filter"


def cflags(shape: Shape, tc: bool = False, ct_dir: str | None = None) -> list[str]:
    flags = [f"-I{BPF_DIR}", f"-DHOOK_TC={int(tc)}",
             f"-DNWORDS={shape.nwords}", f"-DNENTRIES={shape.nentries}",
             f"-DNCOUNTERS={shape.ncounters}", f"-DSTEPS={shape.steps}"]
    # every field kind and map size the compiler knows (compiler.FIELD_ORDER,
    # SIZE_ATTRS): a new field needs no edit here
    flags += [f"-D{k.upper()}={getattr(shape, k)}" for k in SIZE_ATTRS]
    for name in FIELD_ORDER:
        flags.append(f"-DFIELD_{name.upper()}={int(name in shape.fields)}")
    if "ctstate" in shape.fields:
        # the tracker (bpf/lib/conntrack.h) comes with its field; its maps
        # are the namespace's (pinned in ct_dir), or private without one
        flags.append("-DCONNTRACK=1")
        from ..conntrack.hz import kernel_hz  # --ctexpire of unconfirmed entries
        flags.append(f"-DCT_HZ={kernel_hz()}")
        if ct_dir:
            flags.append(f'-DCT_PIN_DIR="{ct_dir}"')
    return flags


@dataclass
class RuleCounters:
    packets: int
    bytes: int


@contextmanager
def _stderr_kept_back():
    """bcc prints the verifier's log to file descriptor 2 when a load
    fails; a failure we recover from must not reach the user's terminal."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)


class LoadedProgram:
    """One loaded XDP program and its maps (owned by a bcc BPF object)."""

    def __init__(self, shape: Shape, debug: int = 0, tc: bool = False,
                 ct_dir: str | None = None):
        """``tc``: a TC (cls_bpf/tcx) program, not XDP: OUTPUT at egress, and
        INPUT/FORWARD at ingress in --mode tc (the interface field is
        skb->ifindex, the device the packet is on either way). ``ct_dir``:
        the bpffs directory of the namespace's conntrack maps (created, or
        opened when pinned already; without it the tracker's maps are the
        program's own)."""
        from bcc import BPF  # imported late: only the data path needs bcc

        if ct_dir and "ctstate" in shape.fields:
            os.makedirs(ct_dir, mode=0o700, exist_ok=True)

        start = time.monotonic()
        steps = shape.steps
        while True:
            self.shape = replace(shape, steps=steps, scan=shape.scan_steps)
            self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags(self.shape, tc, ct_dir),
                           debug=debug)
            try:
                with _stderr_kept_back() as kept:
                    self.fn = self.bpf.load_func(FUNCTION.encode(),
                                                 BPF.SCHED_CLS if tc else BPF.XDP)
                break
            except Exception as exc:
                # E2BIG: the verifier gave up (it walks every iteration of
                # the scan loop, and how many states it keeps depends on
                # the fields compiled in). Fewer steps per invocation,
                # more tail calls, same scans.
                self.bpf.cleanup()
                fewer = steps * 2 // 3
                if ("Argument list too long" not in str(exc)
                        or fewer < 16 or -(-shape.scan_steps // fewer) > MAX_CHUNKS):
                    os.write(2, kept.read())  # the verifier's log says why
                    raise
                steps = fewer
        # long scans continue in a tail call of the program itself
        self.bpf[b"self_map"][ctypes.c_int(0)] = ctypes.c_int(self.fn.fd)
        self.compile_seconds = time.monotonic() - start
        self.compiled: Compiled | None = None

    @property
    def fd(self) -> int:
        return self.fn.fd

    def map_fds(self) -> dict[str, int]:
        return {name: self.bpf[name.encode()].map_fd for name in map_names(self.shape)}

    def close(self) -> None:
        self.bpf.cleanup()

    # -- writing maps ---------------------------------------------------------

    def install(self, c: Compiled) -> None:
        """Write ``c`` into the maps (counters zeroed)."""
        for image in map_image(c, self.shape):
            table = self.bpf[image.name.encode()]
            if image.clear:
                for key in list(table.keys()):
                    del table[key]
            # one BPF_MAP_UPDATE_BATCH per map: a 64k-rule set writes
            # hundreds of thousands of values
            n = len(image.items)
            key_blob, value_blob = joined(image.items)
            if getattr(image.items, "dense", False) and write_mappable(table.map_fd, value_blob):
                continue
            keys = (table.Key * n).from_buffer_copy(key_blob)
            values = (table.Leaf * n).from_buffer_copy(value_blob)
            table.items_update_batch(keys, values)
        self.zero_counters()
        self.compiled = c

    # -- counters -------------------------------------------------------------

    def zero_counters(self) -> None:
        table = self.bpf[b"counter_map"]
        zero = table.Leaf()  # one zeroed value per possible CPU
        for i in range(self.shape.ncounters):
            table[ctypes.c_int(i)] = zero

    def counter(self, slot: int) -> RuleCounters:
        values = self.bpf[b"counter_map"][ctypes.c_int(slot)]
        return RuleCounters(sum(v.packets for v in values), sum(v.bytes for v in values))

    def rule_counters(self) -> dict[tuple[str, int], RuleCounters]:
        assert self.compiled is not None
        return {key: self.counter(slot) for key, slot in self.compiled.counter_of.items()}

    def policy_counters(self) -> RuleCounters:
        return self.counter(POLICY_COUNTER)


class ProgramCache:
    """Reuse one loaded program for every rule set its shape covers."""

    def __init__(self) -> None:
        self.programs: list[LoadedProgram] = []

    def get(self, shape: Shape) -> LoadedProgram:
        for p in self.programs:
            if p.shape.covers(shape):
                return p
        prog = LoadedProgram(shape)
        self.programs.append(prog)
        return prog

    def close(self) -> None:
        for p in self.programs:
            p.close()
        self.programs.clear()



class Roots:
    """bpf/root.c: the programs attached to every interface for the
    namespace's lifetime, their prog arrays and the active-generation word
    (one bcc module, so both roots share that one map)."""

    FUNCTIONS = {"xdp_root": "XDP", "tc_ingress_root": "SCHED_CLS",
                 "tc_egress_root": "SCHED_CLS"}
    MAPS = ("active_map", "xdp_slots", "tc_slots")

    def __init__(self, functions: list[str]):
        from bcc import BPF

        self.bpf = BPF(src_file=str(BPF_DIR / "root.c").encode(), cflags=[f"-I{BPF_DIR}"])
        self.fns = {name: self.bpf.load_func(name.encode(), getattr(BPF, self.FUNCTIONS[name]))
                    for name in functions}

    def prog_fds(self) -> dict[str, int]:
        return {name: fn.fd for name, fn in self.fns.items()}

    def map_fds(self) -> dict[str, int]:
        return {name: self.bpf[name.encode()].map_fd for name in self.MAPS}


def map_names(shape: Shape) -> list[str]:
    """Every map of a classifier compiled for ``shape`` that a later
    process writes or reads (so pins): the image's, counters, the tail-call
    array (pinned so that it keeps its entry). The image's names come from
    image.py itself (an empty chain's image with the shape's fields), so a
    new field's maps are pinned without an edit here."""
    from ..model import Table
    from .compiler import compile_chain

    empty = compile_chain(Table.empty("filter"), "INPUT", {},
                          Shape(1, 1, 2, shape.fields))
    return [image.name for image in map_image(empty, empty.shape)] + ["counter_map", "self_map"]