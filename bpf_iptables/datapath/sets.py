"""-m set's per-entry tables (bpf/lib/set.h): the set checks of every entry,
resolved against the namespace's sets (bpf-iptables-set's store).

An entry's checks are ``struct set_check`` records {type, id, flags,
next} in ``set_check_map`` (slot 0 unused), the first one's slot in
``entry_set_map`` (0: none). The records name a set by id: the members
themselves are in the namespace's set maps (ipset/maps.py), which
bpf-iptables-set writes in place, so a set change never recompiles."""
from __future__ import annotations

import struct
from array import array
from typing import TYPE_CHECKING

from ..errors import NotSupported
from .fields import SetCheck

if TYPE_CHECKING:
    from ..ipset.model import IpSet
    from .compiler import Compiled, Entry
    from .image import MapImage

SET_TYPE = {"hash:ip": 1, "hash:net": 2, "hash:ip,port": 3, "bitmap:port": 4}
SET_SRC0, SET_SRC1, SET_INV, SET_DIMS = 1, 2, 4, 8
RECORD = struct.Struct("<IIII")


def resolve(check: SetCheck, sets: "dict[str, IpSet]") -> tuple[int, int, int]:
    """(type, id, flags) of one check; NotSupported for what set.h cannot
    look up as the kernel does."""
    s = sets.get(check.name)
    if s is None:
        # a kernel ipset (iptables found it there) or none at all
        raise NotSupported(f"match `set' on `{check.name}', which is not a bpf-iptables-set "
                           "set, in the eBPF data path")
    if s.type == "bitmap:port" and s.timeout is not None:
        raise NotSupported("match `set' on a bitmap:port set with timeout in the eBPF data path")
    flags = SET_INV if check.invert else 0
    if check.dirs[0] == "src":
        flags |= SET_SRC0
    if len(check.dirs) > 1 and check.dirs[1] == "src":
        flags |= SET_SRC1
    if len(check.dirs) >= s.dimension:
        flags |= SET_DIMS
    return SET_TYPE[s.type], s.id, flags


def assign(entries: "list[Entry]", sets: "dict[str, IpSet] | None" = None) -> list[bytes]:
    """Give every entry with set matches its chain of records (``Entry.sets``
    = the first record's slot); the records, from slot 1. Entries reached
    through the same rule path share nothing: each has its own chain (they
    are few, and sharing would need the path's identity)."""
    records: list[bytes] = []
    for e in entries:
        checks = e.fields.sets
        if not checks or e.fields.never:
            continue
        if sets is None:
            from ..reference.sets import current_sets

            sets = current_sets()
        first = len(records) + 1
        for i, check in enumerate(checks):
            stype, sid, flags = resolve(check, sets)
            nxt = first + i + 1 if i + 1 < len(checks) else 0
            records.append(RECORD.pack(stype, sid, flags, nxt))
        e.sets = first
    return records


def set_images(c: "Compiled") -> "list[MapImage]":
    from .image import MapImage, Packed, array_keys

    first = array("I", [e.sets for e in c.entries]).tobytes()
    return [MapImage("entry_set_map", Packed(4, 4, array_keys(len(c.entries)), first,
                                             dense=True)),
            MapImage("set_check_map", [(struct.pack("<I", i), r)
                                       for i, r in enumerate(c.set_records, start=1)])]
