"""-m recent in the data path: the per-entry maps and the namespace's tables.

The classifier's part (bpf/filter.c, bpf/lib/recent.h): per entry a
``struct entry_state`` {need, set, recent} (memo bits of stateful jump
rules, and the rule's recent_rule_map slot), per recent rule a ``struct
recent_rule``. The tables themselves are one hash map per namespace,
pinned at ``<namespace pins>/recent/tables`` outside the generations (as
conntrack's table): key a 64-bit digest of the name, value ``struct
recent_table`` (name, mask, stamps mask, entries). xt_recent keeps a table
while some rule names it, flushes it when a new rule needs more stamps
than it keeps, and frees it with its last rule; ``sync()`` does the same at
every write of the rule set. ``Table``/``read_tables``/``write_table``
serve ``bpf-iptables-recent`` (the /proc/net/xt_recent/NAME of the data
path)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotSupported
from . import bpfsys

if TYPE_CHECKING:
    from ..model import Table as RuleTable
    from .compiler import Compiled
    from .image import MapImage

RECENT_MAX = 100          # ip_list_tot (recent.h)
NSTAMPS = 64              # RECENT_NSTAMPS
NAME_LEN = 200
SLOT = struct.Struct("<IBBHHHIQ")          # addr used ttl index nstamps pad pad2 lru
SLOT_SIZE = SLOT.size + 8 * NSTAMPS        # 536
HEAD = struct.Struct("<IIIIQ")             # lock entries mask stamps_mask clock
VALUE_SIZE = HEAD.size + NAME_LEN + RECENT_MAX * SLOT_SIZE
BPF_F_LOCK = 4


def table_key(name: str) -> int:
    """The map key of table ``name``: the first 8 bytes of its SHA-256 (the
    same in every process, so rule sets and the inspection agree)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8],
                          "little")


def stamps_mask(hit_count: int) -> int:
    """nstamps_max_mask as recent_mt_check() computes it."""
    from ..extensions.recent import ip_pkt_list_tot

    tot = ip_pkt_list_tot()
    if tot and hit_count < tot:
        return (1 << (tot - 1).bit_length()) - 1
    if hit_count:
        return (1 << (hit_count - 1).bit_length()) - 1
    return 31


def table_needs(table: "RuleTable") -> dict[str, tuple[int, int]]:
    """name -> (mask, stamps mask) of every table a rule of ``table`` names
    (loaded rules hold their table whether a hook reaches them or not).
    Refused: more stamps than the data path keeps, and rules giving one
    table different masks (the kernel keeps the mask of the rule that made
    the table, which depends on the history of rule loads)."""
    needs: dict[str, tuple[int, int]] = {}
    for chain in table.chains.values():
        for rule in chain.rules:
            for m in rule.matches:
                if m.name != "recent":
                    continue
                d = m.data
                sm = stamps_mask(d.hit_count)
                if sm + 1 > NSTAMPS:
                    raise NotSupported(f"match `recent' with --hitcount {d.hit_count} in the "
                                       f"eBPF data path (at most {NSTAMPS})")
                have = needs.get(d.name)
                if have is not None and have[0] != d.mask:
                    raise NotSupported(f"match `recent': list `{d.name}' with two different "
                                       "--mask values in the eBPF data path")
                needs[d.name] = (d.mask, max(sm, have[1] if have else 0))
    if len(needs) > 64:
        raise NotSupported("more than 64 recent lists in the eBPF data path")
    return needs


# -- the classifier's per-entry maps (image.map_image) --------------------------

def images(c: "Compiled", shape) -> list["MapImage"]:
    """entry_state_map (with recent or memo bits) and recent_rule_map (with
    recent, always listed: its name is pinned from an empty image)."""
    from .image import MapImage, Packed, array_keys

    blob = b"".join(struct.pack("<QQII", e.need, e.set, e.recent, 0) for e in c.entries)
    out = [MapImage("entry_state_map", Packed(4, 24, array_keys(len(c.entries)), blob,
                                              dense=True))]
    if shape.nrecent:
        rules = [(struct.pack("<I", i),
                  struct.pack("<QIIIIII", table_key(d.name), d.check_set, d.seconds,
                              d.hit_count, int(d.invert), int(d.side_dest), 0))
                 for i, d in enumerate(c.recents, start=1)]
        out.append(MapImage("recent_rule_map", rules))
    return out


# -- the tables ------------------------------------------------------------------

@dataclass
class Entry:
    addr: int            # host order
    ttl: int
    index: int
    nstamps: int
    lru: int
    stamps: list[int]    # the ring, as stored (stamps[:nstamps])


@dataclass
class Table:
    name: str
    mask: int
    stamps_mask: int
    clock: int = 0
    slots: list["Entry | None"] = field(default_factory=lambda: [None] * RECENT_MAX)

    def entries(self) -> list[Entry]:
        """Oldest (least recently updated) first."""
        return sorted((e for e in self.slots if e is not None), key=lambda e: e.lru)

    def pack(self) -> bytes:
        used = [e for e in self.slots if e is not None]
        out = [HEAD.pack(0, len(used), self.mask, self.stamps_mask, self.clock),
               self.name.encode("utf-8", "surrogateescape")[:NAME_LEN - 1].ljust(NAME_LEN, b"\0")]
        for e in self.slots:
            if e is None:
                out.append(bytes(SLOT_SIZE))
                continue
            stamps = (e.stamps + [0] * NSTAMPS)[:NSTAMPS]
            out.append(SLOT.pack(e.addr, 1, e.ttl, e.index, e.nstamps, 0, 0, e.lru)
                       + array("Q", stamps).tobytes())
        return b"".join(out)

    @classmethod
    def unpack(cls, raw: bytes) -> "Table":
        _, _, mask, smask, clock = HEAD.unpack_from(raw, 0)
        name = raw[HEAD.size:HEAD.size + NAME_LEN].split(b"\0", 1)[0]
        t = cls(name.decode("utf-8", "surrogateescape"), mask, smask, clock)
        base = HEAD.size + NAME_LEN
        for i in range(RECENT_MAX):
            off = base + i * SLOT_SIZE
            addr, used, ttl, index, nstamps, _, _, lru = SLOT.unpack_from(raw, off)
            if used:
                stamps = array("Q", raw[off + SLOT.size:off + SLOT_SIZE]).tolist()
                t.slots[i] = Entry(addr, ttl, index, nstamps, lru, stamps[:nstamps])
        return t

    # the proc file's writes (recent_mt_proc_write), ``now`` in jiffies
    def find(self, addr: int) -> int | None:
        for i, e in enumerate(self.slots):
            if e is not None and e.addr == addr:
                return i
        return None

    def add(self, addr: int, now: int) -> None:
        """``+ADDR``: a new entry (TTL 0, the oldest evicted from a full
        table) or one more stamp for an existing one (not masked: the
        kernel does not apply the mask here either)."""
        i = self.find(addr)
        self.clock += 1
        if i is None:
            live = self.entries()
            if len(live) >= RECENT_MAX:
                self.slots[self.slots.index(live[0])] = None
            free = self.slots.index(None)
            self.slots[free] = Entry(addr, 0, 1, 1, self.clock, [now])
            return
        e = self.slots[i]
        assert e is not None
        ix = e.index & self.stamps_mask & (NSTAMPS - 1)
        ring = (e.stamps + [0] * NSTAMPS)[:NSTAMPS]
        ring[ix] = now
        e.index = ix + 1
        e.nstamps = max(e.nstamps, e.index)
        e.stamps = ring[:e.nstamps]
        e.lru = self.clock

    def remove(self, addr: int) -> None:
        i = self.find(addr)
        if i is not None:
            self.slots[i] = None

    def flush(self) -> None:
        self.slots = [None] * RECENT_MAX

    def proc_text(self) -> str:
        """The kernel's recent_seq_show() lines (oldest entry first)."""
        lines = []
        for e in self.entries():
            last = e.stamps[(e.index - 1) & self.stamps_mask] if e.stamps else 0
            stamps = "".join(f"{',' if i else ''} {s}" for i, s in enumerate(e.stamps))
            lines.append(f"src={_ip(e.addr)} ttl: {e.ttl} last_seen: {last} "
                         f"oldest_pkt: {e.index}{stamps}\n")
        return "".join(lines)


def _ip(addr: int) -> str:
    return ".".join(str(addr >> s & 0xFF) for s in (24, 16, 8, 0))


def _elem(cmd: int, fd: int, key: bytes, value: ctypes.Array, flags: int) -> int:
    k = ctypes.create_string_buffer(key, len(key))
    attr = bpfsys._ElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(value),
                            flags=flags)
    rc = bpfsys._libc.syscall(bpfsys.SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return 0 if rc >= 0 else ctypes.get_errno()


def lookup(fd: int, key: int) -> Table | None:
    """The table under its lock (BPF_F_LOCK: a consistent copy)."""
    v = ctypes.create_string_buffer(VALUE_SIZE)
    err = _elem(bpfsys.BPF_MAP_LOOKUP_ELEM, fd, struct.pack("<Q", key), v, BPF_F_LOCK)
    if err:
        return None
    return Table.unpack(v.raw)


def store(fd: int, t: Table) -> None:
    v = ctypes.create_string_buffer(t.pack(), VALUE_SIZE)
    err = _elem(bpfsys.BPF_MAP_UPDATE_ELEM, fd, struct.pack("<Q", table_key(t.name)), v,
                BPF_F_LOCK)
    if err:
        raise OSError(err, f"recent table update: {os.strerror(err)}")


def read_tables(fd: int) -> dict[str, Table]:
    out = {}
    for raw_key in bpfsys.map_keys(fd, 8):
        t = lookup(fd, struct.unpack("<Q", raw_key)[0])
        if t is not None:
            out[t.name] = t
    return out


def sync(fd: int, needs: dict[str, tuple[int, int]], remove: bool = True) -> None:
    """Make the tables what xt_recent would hold after loading a rule set
    naming ``needs``: tables no rule names any more are freed, a table whose
    rules now need more stamps is flushed (recent_mt_check), new names get
    an empty table with the mask of their rules; the rest keep their
    entries (the kernel's table outlives a table replace). ``remove``
    False: the unnamed lists stay (the old rules may still run)."""
    have = {}
    for raw_key in bpfsys.map_keys(fd, 8):
        have[struct.unpack("<Q", raw_key)[0]] = raw_key
    wanted = {table_key(n): n for n in needs}
    for key, raw_key in have.items():
        if remove and key not in wanted:
            bpfsys.map_delete(fd, raw_key)
    for key, name in wanted.items():
        mask, smask = needs[name]
        t = lookup(fd, key) if key in have else None
        if t is not None and smask <= t.stamps_mask:
            continue
        # new, or flushed with the larger ring (the mask stays the table's)
        fresh = Table(name, t.mask if t is not None else mask, smask)
        v = ctypes.create_string_buffer(fresh.pack(), VALUE_SIZE)
        err = _elem(bpfsys.BPF_MAP_UPDATE_ELEM, fd, struct.pack("<Q", key), v, 0)
        if err:
            raise OSError(err, f"recent table create: {os.strerror(err)}")


def tables_pin(ns_pins: Path) -> Path:
    return Path(ns_pins) / "recent" / "tables"


def recent_dir(ct_dir: str) -> str:
    """The bpffs directory of the namespace's recent tables (next to
    conntrack's, whose directory the loader is given)."""
    return os.path.join(os.path.dirname(ct_dir), "recent")


def sync_pinned(ns_pins: Path, needs: dict[str, tuple[int, int]], remove: bool = True) -> None:
    """``sync()`` on the namespace's pinned tables, when they exist (no
    rule ever named a list: nothing to do)."""
    pin = tables_pin(ns_pins)
    if not pin.exists():
        return
    fd = bpfsys.obj_get(str(pin))
    try:
        sync(fd, needs, remove)
    finally:
        os.close(fd)


def jiffies_now() -> int:
    """The kernel's jiffies (what bpf_jiffies64() reads), from
    /proc/timer_list."""
    with open("/proc/timer_list") as f:
        for line in f:
            if line.startswith("jiffies:"):
                return int(line.split()[1])
    raise OSError("no jiffies in /proc/timer_list")
