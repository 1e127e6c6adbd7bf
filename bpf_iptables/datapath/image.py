"""A compiled chain as raw map contents: what to write into which map.

``map_image()`` turns a ``Compiled`` chain into one ``MapImage`` per map of
``bpf/filter.c``: keys and values as the bytes the kernel stores (x86-64
layout). Both writers consume it: ``program.LoadedProgram.install`` through
bcc right after a compile, and the raw bpf(2) writer (``bpfsys``) when an
update only rewrites the maps of a program that is already loaded and
pinned. A new field therefore adds its map here, once.

Layouts (filter.c):
- array and hash keys: u32 (the mac map: u64, the 48-bit address); LPM keys: ``{u32 prefixlen; u32 addr}`` with the
  address in network byte order;
- bitvectors: ``nwords`` u64 words, bit e of the Python int = entry e;
- ``struct entry``: ten u32 (counter, verdict, next, tcp, src addr/mask/inv,
  dst addr/mask/inv), addresses and masks in network byte order;
- interval bounds (ports, length, ttl): ``bsize`` u32, padded with 65536."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .compiler import TCP_FLAGS_EVIL, Compiled, Shape


@dataclass
class MapImage:
    name: str                          # the map's name in filter.c
    items: list[tuple[bytes, bytes]]   # (key, value)
    # hash and LPM maps: keys not written must be deleted (stale entries of
    # an earlier rule set); arrays are overwritten in place
    clear: bool = False


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def be32(addr: int) -> bytes:
    """An address as stored in the packet and the LPM key: network order."""
    return (addr & 0xFFFFFFFF).to_bytes(4, "big")


def bitvector(value: int, nwords: int) -> bytes:
    return value.to_bytes(nwords * 8, "little")


def entry_bytes(e) -> bytes:
    sa, sm, si = e.residual("src")
    da, dm, di = e.residual("dst")
    return (u32(e.counter) + u32(e.verdict) + u32(e.next) + u32(int(e.tcp))
            + be32(sa) + be32(sm) + u32(int(si)) + be32(da) + be32(dm) + u32(int(di)))


def map_image(c: Compiled, shape: Shape) -> list[MapImage]:
    """Every map's contents for ``c`` in a program compiled for ``shape``
    (which must cover ``c.shape``). Entries beyond the new list keep stale
    contents: they have no bit in ``live_map`` and are never reached."""
    if not shape.covers(c.shape):
        raise ValueError("compiled rule set does not fit this program's shape")
    nw = shape.nwords
    bv = lambda v: bitvector(v, nw)  # noqa: E731 - a local shorthand
    fields = shape.fields
    out = [MapImage("config_map", [(u32(0), u32(0))]),
           MapImage("live_map", [(u32(0), bv(c.live))]),
           MapImage("entry_map", [(u32(i), entry_bytes(e)) for i, e in enumerate(c.entries)])]
    for name, prefixes in (("src", c.src), ("dst", c.dst)):
        if name in fields:
            out.append(MapImage(f"{name}_map", [(u32(p.length) + be32(p.addr), bv(v))
                                                for p, v in prefixes.items()], clear=True))
    for name, values in (("proto", c.proto), ("iif", c.iif), ("icmp", c.icmp), ("oif", c.oif)):
        if name in fields:
            out.append(MapImage(f"{name}_map", [(u32(k), bv(v)) for k, v in values.items()],
                                clear=True))
    if "frag" in fields:
        out.append(MapImage("frag_map", [(u32(i), bv(v)) for i, v in enumerate(c.frag)]))
    if "mac" in fields:
        out.append(MapImage("mac_map", [(struct.pack("<Q", k), bv(v)) for k, v in c.mac.items()],
                            clear=True))
    if "pkttype" in fields:
        out.append(MapImage("pkttype_map", [(u32(i), bv(v)) for i, v in enumerate(c.pkttype)]))
    if "tos" in fields:
        assert len(c.tos) == 256
        out.append(MapImage("tos_map", [(u32(i), bv(v)) for i, v in enumerate(c.tos)]))
    if "flags" in fields:
        assert len(c.flags) == TCP_FLAGS_EVIL + 1
        out.append(MapImage("flags_map", [(u32(i), bv(v)) for i, v in enumerate(c.flags)]))
    for name, bounds, vectors, bsize in (
            ("sport", c.sport_bounds, c.sport, shape.sport_bsize),
            ("dport", c.dport_bounds, c.dport, shape.dport_bsize),
            ("length", c.length_bounds, c.length, shape.length_bsize),
            ("ttl", c.ttl_bounds, c.ttl, shape.ttl_bsize)):
        if name not in fields:
            continue
        padded = b"".join(u32(bounds[i] if i < len(bounds) else 0x10000) for i in range(bsize))
        out.append(MapImage(f"{name}_bounds_map", [(u32(0), padded)]))
        intervals = vectors[:len(bounds)]
        items = [(u32(i), bv(v)) for i, v in enumerate(intervals)]
        if name in ("sport", "dport"):
            # then "no L4 header" at bsize and "offset-1 fragment" at bsize + 1
            items += [(u32(bsize), bv(vectors[-2])), (u32(bsize + 1), bv(vectors[-1]))]
        out.append(MapImage(f"{name}_map", items))
    if "ports" in fields:
        # the same slots as the sport / dport maps
        for name, vectors, bsize in (("ports_s", c.ports_s, shape.sport_bsize),
                                     ("ports_d", c.ports_d, shape.dport_bsize)):
            items = [(u32(i), bv(v)) for i, v in enumerate(vectors[:-2])]
            items += [(u32(bsize), bv(vectors[-2])), (u32(bsize + 1), bv(vectors[-1]))]
            out.append(MapImage(f"{name}_map", items))
    return out
