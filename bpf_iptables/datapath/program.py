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
import time
from dataclasses import dataclass
from pathlib import Path

from .compiler import POLICY_COUNTER, Compiled, Shape
from .image import map_image

# BPF_IPTABLES_BPF_DIR: another source tree (tests use a broken one to
# check that a program that fails to load leaves the attached one in place)
BPF_DIR = Path(os.environ.get("BPF_IPTABLES_BPF_DIR")
               or Path(__file__).resolve().parents[2] / "bpf")
SOURCE = BPF_DIR / "filter.c"
FUNCTION = "xdp_filter"


def cflags(shape: Shape, tc: bool = False) -> list[str]:
    flags = [f"-I{BPF_DIR}", f"-DHOOK_TC={int(tc)}",
             f"-DNWORDS={shape.nwords}", f"-DNENTRIES={shape.nentries}",
             f"-DNCOUNTERS={shape.ncounters}", f"-DSTEPS={shape.steps}",
             f"-DSRC_MAX={shape.src_max}", f"-DDST_MAX={shape.dst_max}",
             f"-DPROTO_MAX={shape.proto_max}", f"-DIIF_MAX={shape.iif_max}",
             f"-DSPORT_BSIZE={shape.sport_bsize}", f"-DDPORT_BSIZE={shape.dport_bsize}",
             f"-DICMP_MAX={shape.icmp_max}"]
    for name in ("src", "dst", "proto", "iif", "frag", "flags", "sport", "dport", "icmp"):
        flags.append(f"-DFIELD_{name.upper()}={int(name in shape.fields)}")
    return flags


@dataclass
class RuleCounters:
    packets: int
    bytes: int


class LoadedProgram:
    """One loaded XDP program and its maps (owned by a bcc BPF object)."""

    def __init__(self, shape: Shape, debug: int = 0, tc: bool = False):
        """``tc``: a TC (cls_bpf/tcx) program, not XDP: OUTPUT at egress, and
        INPUT/FORWARD at ingress in --mode tc (the interface field is
        skb->ifindex, the device the packet is on either way)."""
        from bcc import BPF  # imported late: only the data path needs bcc

        self.shape = shape
        start = time.monotonic()
        self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags(shape, tc), debug=debug)
        self.fn = self.bpf.load_func(FUNCTION.encode(), BPF.SCHED_CLS if tc else BPF.XDP)
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
            for key, value in image.items:
                table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(value)
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
    array (pinned so that it keeps its entry)."""
    names = ["config_map", "live_map", "entry_map", "counter_map", "self_map"]
    for f in ("src", "dst", "proto", "iif", "icmp", "frag", "flags"):
        if f in shape.fields:
            names.append(f"{f}_map")
    for f in ("sport", "dport"):
        if f in shape.fields:
            names += [f"{f}_bounds_map", f"{f}_map"]
    return names
