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

from .compiler import POLICY_COUNTER, TCP_FLAGS_EVIL, Compiled, Shape

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
        """``tc``: a TC (cls_bpf) program for egress (OUTPUT), not XDP."""
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

    def close(self) -> None:
        self.bpf.cleanup()

    # -- writing maps ---------------------------------------------------------

    def _bv(self, table, value: int):
        """A bitvector leaf: bit e of ``value`` is bit e%64 of word e/64,
        i.e. the little-endian bytes of the integer on x86-64."""
        leaf = table.Leaf()
        data = value.to_bytes(self.shape.nwords * 8, "little")
        ctypes.memmove(ctypes.addressof(leaf), data, len(data))
        return leaf

    def _clear(self, name: str) -> None:
        table = self.bpf[name.encode()]
        for key in list(table.keys()):
            del table[key]

    def _array(self, name: str, values: list[int], index: list[int] | None = None) -> None:
        table = self.bpf[name.encode()]
        for i, v in zip(index if index is not None else range(len(values)), values):
            table[ctypes.c_int(i)] = self._bv(table, v)

    def install(self, c: Compiled) -> None:
        """Write ``c`` into the maps (counters zeroed)."""
        if not self.shape.covers(c.shape):
            raise ValueError("compiled rule set does not fit this program's shape")
        b = self.bpf
        fields = self.shape.fields
        cfg = b[b"config_map"]
        leaf = cfg.Leaf()
        leaf.first_word = 0
        cfg[ctypes.c_int(0)] = leaf
        self._array("live_map", [c.live], [0])
        # entries: stale ones beyond the new list are never reached (no live bit)
        entries = b[b"entry_map"]
        for i, e in enumerate(c.entries):
            el = entries.Leaf()
            el.counter, el.verdict, el.next, el.tcp = e.counter, e.verdict, e.next, e.tcp
            addr, mask, inv = e.residual("src")
            el.src_addr, el.src_mask, el.src_inv = socket_order(addr), socket_order(mask), inv
            addr, mask, inv = e.residual("dst")
            el.dst_addr, el.dst_mask, el.dst_inv = socket_order(addr), socket_order(mask), inv
            entries[ctypes.c_int(i)] = el
        for name, prefixes in (("src", c.src), ("dst", c.dst)):
            if name in fields:
                self._clear(f"{name}_map")
                table = b[f"{name}_map".encode()]
                for p, v in prefixes.items():
                    key = table.Key()
                    key.prefixlen, key.addr = p.length, socket_order(p.addr)
                    table[key] = self._bv(table, v)
        for name, values in (("proto", c.proto), ("iif", c.iif), ("icmp", c.icmp)):
            if name in fields:
                self._clear(f"{name}_map")
                table = b[f"{name}_map".encode()]
                for k, v in values.items():
                    table[table.Key(k)] = self._bv(table, v)
        if "frag" in fields:
            self._array("frag_map", c.frag)
        if "flags" in fields:
            assert len(c.flags) == TCP_FLAGS_EVIL + 1
            self._array("flags_map", c.flags)
        for name, bounds, vectors, bsize in (
                ("sport", c.sport_bounds, c.sport, self.shape.sport_bsize),
                ("dport", c.dport_bounds, c.dport, self.shape.dport_bsize)):
            if name not in fields:
                continue
            table = b[f"{name}_bounds_map".encode()]
            bl = table.Leaf()
            for i in range(bsize):
                bl.b[i] = bounds[i] if i < len(bounds) else 0x10000
            table[ctypes.c_int(0)] = bl
            self._array(f"{name}_map", vectors[:-2])
            self._array(f"{name}_map", vectors[-2:], [bsize, bsize + 1])
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


def socket_order(addr: int) -> int:
    """The u32 whose memory holds ``addr`` big-endian (the LPM key layout)."""
    return int.from_bytes(addr.to_bytes(4, "big"), "little")


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



class Dispatcher:
    """bpf/dispatch.c: sends ingress packets to the INPUT or the FORWARD
    classifier (by tail call) as the kernel's route lookup would."""

    def __init__(self, input_fd: int, forward_fd: int):
        from bcc import BPF

        self.bpf = BPF(src_file=str(BPF_DIR / "dispatch.c").encode(), cflags=[f"-I{BPF_DIR}"])
        self.fn = self.bpf.load_func(b"xdp_dispatch", BPF.XDP)
        chains = self.bpf[b"chain_map"]
        chains[ctypes.c_int(0)] = ctypes.c_int(input_fd)
        chains[ctypes.c_int(1)] = ctypes.c_int(forward_fd)

    @property
    def fd(self) -> int:
        return self.fn.fd
