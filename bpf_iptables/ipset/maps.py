"""The namespace's sets as BPF maps (read by bpf/lib/set.h), one map per
set type, keyed by the set's id, pinned outside the generations:
``<bpffs>/netns-<cookie>/sets/{ip,net,ipport,port}``.

One map per type (not a map of maps): a classifier compiled with sets
refers to four fixed maps, so creating, destroying or swapping a set never
touches a program, and a member check is one lookup (a map of maps costs
a second lookup per check, and an inner map per set to create and pin).

- ``ip``: hash {u32 id, be32 addr} -> value
- ``net``: LPM trie {u32 prefixlen = 32 + cidr, be32 id, be32 addr} -> value
  (the id ahead of the address, so one trie holds every set's prefixes)
- ``ipport``: hash {u32 id, be32 addr, u8 proto, u8 0, u16 port} -> value
- ``port``: array of u64 words, 1024 per bitmap set (its slot: ``id``),
  bit ``port`` set for a member (no value: timeouts are refused there)
- value: {u64 expires (CLOCK_MONOTONIC ns, 0: never), u32 nomatch, u32 cidr}

The hashes are created without preallocation (BPF_F_NO_PREALLOC): their
``max_entries`` bounds the elements of all sets together and costs nothing
until used."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from ..datapath import bpfsys
from .model import Elem, IpSet, Member

HASH, ARRAY, LPM_TRIE = 1, 2, 11
NO_PREALLOC = 1
MAX_ELEMS = 1 << 20        # per map, all sets of that type together
BITMAP_SETS = 64           # bitmap:port sets per namespace
BITMAP_WORDS = 1024        # 65,536 bits per set
VALUE = struct.Struct("<QII")
# name -> (type, key size, value size, max entries, flags)
SPECS = {
    "ip": (HASH, 8, VALUE.size, MAX_ELEMS, NO_PREALLOC),
    "net": (LPM_TRIE, 12, VALUE.size, MAX_ELEMS, NO_PREALLOC),
    "ipport": (HASH, 12, VALUE.size, MAX_ELEMS, NO_PREALLOC),
    "port": (ARRAY, 4, 8, BITMAP_SETS * BITMAP_WORDS, 0),
}
MAP_OF_TYPE = {"hash:ip": "ip", "hash:net": "net", "hash:ip,port": "ipport",
               "bitmap:port": "port"}


def key_of(s: IpSet, elem: Elem) -> bytes:
    if s.type == "hash:ip":
        return struct.pack("<I", s.id) + elem[0].to_bytes(4, "big")
    if s.type == "hash:net":
        addr, cidr = elem
        return struct.pack("<I", 32 + cidr) + s.id.to_bytes(4, "big") + addr.to_bytes(4, "big")
    if s.type == "hash:ip,port":
        addr, proto, port = elem
        return struct.pack("<I", s.id) + addr.to_bytes(4, "big") + struct.pack("<BBH", proto, 0,
                                                                               port)
    raise ValueError(s.type)


def value_of(elem: Elem, m: Member) -> bytes:
    cidr = elem[1] if len(elem) == 2 else 32
    return VALUE.pack(m.expires, int(m.nomatch), cidr)


def bitmap_words(s: IpSet) -> list[tuple[bytes, bytes]]:
    """Every word of a bitmap:port set's slot (absent ports cleared)."""
    words = [0] * BITMAP_WORDS
    for (port,), m in s.members.items():
        words[port >> 6] |= 1 << (port & 63)
    base = s.id * BITMAP_WORDS
    return [(struct.pack("<I", base + i), struct.pack("<Q", w)) for i, w in enumerate(words)]


class SetMaps:
    """The four maps of a namespace (file descriptors this object owns)."""

    def __init__(self, fds: dict[str, int], owned: bool = True):
        self.fds = fds
        self.owned = owned

    @classmethod
    def open_or_create(cls, pin_dir: Path) -> tuple["SetMaps", bool]:
        """The pinned maps; created and pinned when missing (True then:
        the caller fills them from the store)."""
        fds: dict[str, int] = {}
        created = False
        os.makedirs(pin_dir, mode=0o700, exist_ok=True)
        for name, (mtype, ksize, vsize, maxe, flags) in SPECS.items():
            path = pin_dir / name
            try:
                fds[name] = bpfsys.obj_get(str(path))
                continue
            except OSError:
                pass
            fd = bpfsys.map_create(mtype, ksize, vsize, maxe, flags, f"set_{name}")
            try:
                bpfsys.obj_pin(fd, str(path))
            except FileExistsError:
                # another process pinned it first: use theirs
                os.close(fd)
                fd = bpfsys.obj_get(str(path))
            fds[name] = fd
            created = True
        return cls(fds), created

    def close(self) -> None:
        if self.owned:
            for fd in self.fds.values():
                os.close(fd)
        self.fds = {}

    # -- writing ---------------------------------------------------------------

    def put(self, s: IpSet, elems: list[Elem]) -> None:
        if s.type == "bitmap:port":
            self.write_bitmap(s)
            return
        fd = self.fds[MAP_OF_TYPE[s.type]]
        bpfsys.map_update_many(fd, [(key_of(s, e), value_of(e, s.members[e])) for e in elems])

    def remove(self, s: IpSet, elems: list[Elem]) -> None:
        if s.type == "bitmap:port":
            self.write_bitmap(s)
            return
        fd = self.fds[MAP_OF_TYPE[s.type]]
        for e in elems:
            bpfsys.map_delete(fd, key_of(s, e))

    def write_bitmap(self, s: IpSet) -> None:
        bpfsys.map_update_many(self.fds["port"], bitmap_words(s))

    def write_set(self, s: IpSet, old: IpSet | None = None) -> None:
        """The set's members as they are now; ``old``: what the maps held
        for this id before (removed unless still a member)."""
        if s.type == "bitmap:port":
            self.write_bitmap(s)
            return
        if old is not None:
            gone = [e for e in old.members if e not in s.members]
            self.remove(old, gone)
        self.put(s, list(s.members))

    def clear_set(self, s: IpSet) -> None:
        if s.type == "bitmap:port":
            bpfsys.map_update_many(self.fds["port"],
                                   [(struct.pack("<I", s.id * BITMAP_WORDS + i), bytes(8))
                                    for i in range(BITMAP_WORDS)])
            return
        self.remove(s, list(s.members))

    def write_all(self, sets: list[IpSet]) -> None:
        """Every set's members (maps just created, or private maps of a test
        program); stale keys of ids no longer in use are removed."""
        ids = {(MAP_OF_TYPE[s.type], s.id) for s in sets}
        for name in ("ip", "net", "ipport"):
            fd = self.fds[name]
            for key in bpfsys.map_keys(fd, SPECS[name][1]):
                sid = (int.from_bytes(key[4:8], "big") if name == "net"
                       else struct.unpack_from("<I", key)[0])
                if (name, sid) not in ids:
                    bpfsys.map_delete(fd, key)
        for s in sets:
            if s.type == "bitmap:port":
                self.write_bitmap(s)
            else:
                self.put(s, list(s.members))
