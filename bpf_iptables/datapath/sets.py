"""-m set's tables (bpf/lib/set.h): the chain's distinct set checks and what
every entry wants of them, resolved against the namespace's sets
(bpf-iptables-set's store).

A check is a (set, directions) pair: ``struct set_check`` {type, id,
flags} in ``set_check_map`` slot k (from 1; slot 0 holds their number),
looked up once per packet into bit k - 1 of the packet's membership mask. An entry's set matches
are ``struct set_want`` {mask, want} in ``entry_set_map``: the bits it
needs and their wanted values (0 for ``! --match-set``). The records name
a set by id; the members are in the namespace's set maps (ipset/maps.py),
which bpf-iptables-set writes in place, so a set change never recompiles."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import NotSupported
from .fields import SetCheck

if TYPE_CHECKING:
    from ..ipset.model import IpSet
    from .compiler import Compiled, Entry
    from .image import MapImage

SET_TYPE = {"hash:ip": 1, "hash:net": 2, "hash:ip,port": 3, "bitmap:port": 4}
SET_SRC0, SET_SRC1, SET_DIMS, SET_RETURN_NOMATCH = 1, 2, 8, 16
MAX_CHECKS = 63           # bits of the packet's mask; bit 63 is never set:
NEVER = 1 << 63           # an entry wanting it (both outcomes of one check) never holds
RECORD = struct.Struct("<IIII")


def resolve(check: SetCheck, sets: "dict[str, IpSet]") -> bytes:
    """The check's ``struct set_check``; NotSupported for what set.h cannot
    look up as the kernel does."""
    s = sets.get(check.name)
    if s is None:
        # a kernel ipset (iptables found it there) or none at all
        raise NotSupported(f"match `set' on `{check.name}', which is not a bpf-iptables-set "
                           "set, in the eBPF data path")
    if s.type == "bitmap:port" and s.timeout is not None:
        raise NotSupported("match `set' on a bitmap:port set with timeout in the eBPF data path")
    flags = SET_SRC0 if check.dirs[0] == "src" else 0
    if len(check.dirs) > 1 and check.dirs[1] == "src":
        flags |= SET_SRC1
    if len(check.dirs) >= s.dimension:
        flags |= SET_DIMS
    if check.return_nomatch:
        flags |= SET_RETURN_NOMATCH
    return RECORD.pack(SET_TYPE[s.type], s.id, flags, 0)


def assign(entries: "list[Entry]", sets: "dict[str, IpSet] | None" = None) -> list[bytes]:
    """Set every entry's (set_mask, set_want); the distinct checks' records."""
    slot: dict[tuple[str, tuple[str, ...], bool], int] = {}
    records: list[bytes] = []
    for e in entries:
        checks = e.fields.sets
        if not checks or e.fields.never:
            continue
        if sets is None:
            from ..reference.sets import current_sets

            sets = current_sets()
        mask = want = 0
        for check in checks:
            key = (check.name, check.dirs, check.return_nomatch)
            k = slot.get(key)
            if k is None:
                if len(records) == MAX_CHECKS:
                    raise NotSupported(f"more than {MAX_CHECKS} distinct set matches in one "
                                       "chain in the eBPF data path")
                records.append(resolve(check, sets))
                k = slot[key] = len(records) - 1
            bit = 1 << k
            if mask & bit and bool(want & bit) == check.invert:
                mask |= NEVER   # in the set and not in it
                want |= NEVER
            mask |= bit
            if not check.invert:
                want |= bit
        e.set_mask, e.set_want = mask, want
    return records


def set_images(c: "Compiled", nsets: int) -> "list[MapImage]":
    """The maps of a program with ``nsets`` set_check_map slots."""
    from .image import MapImage, Packed, array_keys

    wants = b"".join(struct.pack("<QQ", e.set_mask, e.set_want) for e in c.entries)
    # slot 0: the number of checks (in its id); the slots after them cleared
    records = ([RECORD.pack(0, len(c.set_records), 0, 0)] + c.set_records
               + [RECORD.pack(0, 0, 0, 0)] * (nsets - 1 - len(c.set_records)))
    return [MapImage("entry_set_map", Packed(4, 16, array_keys(len(c.entries)), wants,
                                             dense=True)),
            MapImage("set_check_map", [(struct.pack("<I", i), r)
                                       for i, r in enumerate(records)])]
