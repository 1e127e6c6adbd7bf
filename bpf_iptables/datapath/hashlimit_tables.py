"""-m hashlimit's tables in the data path: the namespace's, outside the
generations (bpf/lib/hashlimit.h).

The kernel keeps one table per ``--hashlimit-name`` and namespace, found by
name alone (htable_find_get()), configured by the rule that created it and
freed when no rule names it any more. In iptables-legacy a table replace
checks the new rules (finding the tables that exist, creating the others)
before it destroys the old ones, so a table the new rule set still names
keeps its buckets and its creator's configuration. An update here does the
same: ``ensure()`` before the switch creates the tables the new rule set
names and that do not exist, ``collect()`` after it destroys the others
(their configuration, their count, their buckets).

Pinned maps (``<namespace pins>/hashlimit/``; bcc creates them with the
first classifier that has a hashlimit rule):
- ``tables``: table id -> ``struct hl_table`` (written here only);
- ``added``: table id -> buckets ever created (the programs count);
- ``buckets``: ``struct hl_key`` -> ``struct hl_bucket``.
``sweep()`` (the namespace's daemon) deletes expired buckets, as the
kernel's gc worker does, and counts them in the table's ``removed``."""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from . import bpfsys
from ..extensions.hashlimit import (BYTES, HASH_ALL, RATE_MATCH, HashlimitData, table_id,
                                    table_max, user2credits, user2credits_byte)
from ..extensions.limit import HZ

if TYPE_CHECKING:
    from ..model import Table

# struct hl_table {cost, cap, expire, expire_ns, mode, srcmask, dstmask, max, removed}
TABLE = struct.Struct("<QQQQIIIIQ")
# struct hl_key {table, src, dst, sport, dport, pad}
KEY = struct.Struct("<QIIHHI")
# struct hl_bucket {lock, pad, credit, prev, expires, deadline, cap}
BUCKET = struct.Struct("<IIQQQQQ")
ADDED = struct.Struct("<Q")
BUILTIN_ORDER = ("INPUT", "FORWARD", "OUTPUT")


def pin_dir(ns_pins: Path) -> Path:
    return ns_pins / "hashlimit"


def _mask(length: int) -> int:
    """maskl(): the prefix as the be32 mask the program ANDs with."""
    m = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0
    return int.from_bytes(m.to_bytes(4, "big"), "little")


def expire_jiffies(ms: int) -> int:
    """msecs_to_jiffies() for an HZ that divides 1000: rounded up."""
    return -(-ms * HZ // 1000)


def table_value(d: HashlimitData, removed: int = 0) -> bytes:
    """htable_create()'s configuration for the creating rule ``d``, with
    what rateinfo_init() gives its buckets: cost and credit_cap (byte
    rates: user2credits_byte(avg) and the burst, the refills)."""
    expire = expire_jiffies(d.expire)
    if d.mode & BYTES:
        cost, cap = user2credits_byte(d.avg), d.burst
    else:
        cost, cap = user2credits(d.avg), user2credits(d.avg * d.burst)
    return TABLE.pack(cost, cap, expire, expire * 1_000_000_000 // HZ,
                      d.mode & (HASH_ALL | BYTES), _mask(d.srcmask), _mask(d.dstmask),
                      table_max(d), removed)


def named(table: "Table") -> dict[int, HashlimitData]:
    """Per table id, the rule that creates the table when none exists, in
    the order of the kernel's checks (the chains as iptables-legacy lays
    them out: INPUT, FORWARD, OUTPUT, then user chains by name). Every rule
    counts, reachable or not, as every rule is checked by the kernel;
    rules the data path refuses (rate-match) never reach it."""
    order = [c for c in BUILTIN_ORDER if c in table.chains]
    order += sorted(c for c in table.chains if c not in BUILTIN_ORDER)
    out: dict[int, HashlimitData] = {}
    for chain in order:
        for rule in table.chains[chain].rules:
            for m in rule.matches:
                if m.name == "hashlimit" and not m.data.mode & RATE_MATCH:
                    out.setdefault(table_id(m.data.name), m.data)
    return out


def creators(datas: Iterable[HashlimitData]) -> dict[int, HashlimitData]:
    """Per table id, the first rule naming it (private programs, tests)."""
    out: dict[int, HashlimitData] = {}
    for d in datas:
        out.setdefault(table_id(d.name), d)
    return out


def ensure_fds(tables_fd: int, added_fd: int, wanted: dict[int, HashlimitData]) -> list[int]:
    """Create the tables of ``wanted`` that do not exist; the ids created."""
    made = []
    for tid, d in wanted.items():
        key = ADDED.pack(tid)
        if bpfsys.map_lookup(tables_fd, key, TABLE.size) is not None:
            continue   # the kernel finds it: its creator's configuration stays
        bpfsys.map_update(added_fd, key, ADDED.pack(0))
        bpfsys.map_update(tables_fd, key, table_value(d))
        made.append(tid)
    return made


def collect_fds(tables_fd: int, added_fd: int, buckets_fd: int, keep: set[int],
                wait: Callable[[], None] = lambda: None) -> int:
    """Destroy every table not in ``keep`` (htable_put() at use 0): its
    buckets first, then its configuration. ``wait`` runs first when there
    is something to destroy (a grace period: no packet still runs a
    program naming it). The buckets destroyed."""
    gone = {ADDED.unpack(k)[0] for k in bpfsys.map_keys(tables_fd, ADDED.size)} - keep
    if not gone:
        return 0
    wait()
    n = 0
    for k in bpfsys.map_keys(buckets_fd, KEY.size):
        if KEY.unpack(k)[0] in gone and bpfsys.map_delete(buckets_fd, k):
            n += 1
    for tid in gone:
        bpfsys.map_delete(tables_fd, ADDED.pack(tid))
        bpfsys.map_delete(added_fd, ADDED.pack(tid))
    return n


class Maps:
    """The namespace's pinned hashlimit maps, opened (None when absent)."""

    def __init__(self, ns_pins: Path):
        d = pin_dir(ns_pins)
        self.fds: dict[str, int] = {}
        if not (d / "tables").exists():
            return
        try:
            for name in ("tables", "added", "buckets"):
                self.fds[name] = bpfsys.obj_get(str(d / name))
        except OSError:
            self.close()

    def __enter__(self) -> "Maps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def present(self) -> bool:
        return len(self.fds) == 3

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def ensure(ns_pins: Path, table: "Table") -> list[int]:
    """Before the switch: the tables the new rule set names (the maps exist
    once a classifier with a hashlimit rule was loaded; without one there
    is nothing to create)."""
    if not (pin_dir(ns_pins) / "tables").exists():
        return []   # no rule set with hashlimit yet: no walk over the rules
    with Maps(ns_pins) as m:
        wanted = named(table)
        if not m.present or not wanted:
            return []
        return ensure_fds(m.fds["tables"], m.fds["added"], wanted)


def collect(ns_pins: Path, table: "Table", wait: Callable[[], None] = lambda: None) -> int:
    """After the switch: the tables no rule names (after ``wait``)."""
    with Maps(ns_pins) as m:
        if not m.present:
            return 0
        return collect_fds(m.fds["tables"], m.fds["added"], m.fds["buckets"],
                           set(named(table)), wait)


def sweep(ns_pins: Path) -> int:
    """Delete the expired buckets (the kernel's htable_gc(): entries whose
    expiry has passed); each counted in its table's ``removed`` so the
    program's count (added - removed) stays the table's size. A bucket is
    read again right before its deletion: a packet may have renewed it."""
    with Maps(ns_pins) as m:
        if not m.present:
            return 0
        tables, buckets = m.fds["tables"], m.fds["buckets"]
        freed: dict[int, int] = {}
        for k in bpfsys.map_keys(buckets, KEY.size):
            if not _expired(bpfsys.map_lookup(buckets, k, BUCKET.size)):
                continue
            if _expired(bpfsys.map_lookup(buckets, k, BUCKET.size)) and \
                    bpfsys.map_delete(buckets, k):
                tid = KEY.unpack(k)[0]
                freed[tid] = freed.get(tid, 0) + 1
        for tid, n in freed.items():
            key = ADDED.pack(tid)
            raw = bpfsys.map_lookup(tables, key, TABLE.size)
            if raw is None:
                continue   # destroyed meanwhile
            fields = list(TABLE.unpack(raw))
            fields[-1] += n
            bpfsys.map_update(tables, key, TABLE.pack(*fields))
        return sum(freed.values())


def _expired(v: bytes | None) -> bool:
    return v is not None and BUCKET.unpack(v)[5] <= time.monotonic_ns()


def buckets(ns_pins: Path, name: str) -> list[tuple[tuple[int, int, int, int], int]]:
    """The table's buckets as ((src, dst, sport, dport), credit), for
    inspection and tests (addresses and ports as the key holds them)."""
    tid = table_id(name)
    out = []
    with Maps(ns_pins) as m:
        if not m.present:
            return out
        fd = m.fds["buckets"]
        for k in bpfsys.map_keys(fd, KEY.size):
            t, src, dst, sport, dport, _ = KEY.unpack(k)
            v = bpfsys.map_lookup(fd, k, BUCKET.size)
            if t == tid and v is not None:
                out.append(((src, dst, sport, dport), BUCKET.unpack(v)[2]))
    return out


# -- inspection: /proc/net/ipt_hashlimit/NAME ------------------------------------

def show(ns_pins: Path, name: str) -> list[str]:
    """The table's buckets as the kernel's /proc/net/ipt_hashlimit/NAME
    lists them for revision 3 (dl_seq_real_show_v2): seconds until expiry,
    ``src:sport->dst:dport`` (0 where not hashed), credit (refilled to
    now, as the kernel recalculates before printing), credit cap, cost.
    Sorted (the kernel's order is its hash's). Empty when no such table."""
    from ..extensions.hashlimit import BYTES_FULL, CPJ_BYTES, CREDITS_PER_JIFFY

    tid = table_id(name)
    lines = []
    with Maps(ns_pins) as m:
        if not m.present:
            return lines
        raw = bpfsys.map_lookup(m.fds["tables"], ADDED.pack(tid), TABLE.size)
        if raw is None:
            return lines
        cost, _, _, expire_ns, mode = TABLE.unpack(raw)[:5]
        now = time.monotonic_ns()
        fd = m.fds["buckets"]
        for k in bpfsys.map_keys(fd, KEY.size):
            t, src, dst, sport, dport, _ = KEY.unpack(k)
            v = bpfsys.map_lookup(fd, k, BUCKET.size)
            if t != tid or v is None:
                continue
            _, _, credit, _, _, deadline, cap = BUCKET.unpack(v)
            idle = max(0, now - (deadline - expire_ns)) * HZ // 1_000_000_000
            if mode & BYTES:
                credit = min(BYTES_FULL, credit + idle * CPJ_BYTES)
            else:
                credit = min(cap, credit + idle * CREDITS_PER_JIFFY)
            left = (deadline - now) // 1_000_000_000 if deadline >= now else \
                -((now - deadline) // 1_000_000_000)
            lines.append(f"{left} {_addr(src)}:{_port(sport)}->{_addr(dst)}:{_port(dport)} "
                         f"{credit} {cap} {cost}")
    return sorted(lines)


def _addr(v: int) -> str:
    return ".".join(str(b) for b in v.to_bytes(4, "little"))


def _port(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "little"), "big")


def main(argv: list[str]) -> int:
    """``show NAME`` (the kernel's /proc/net/ipt_hashlimit/NAME) or
    ``sweep`` (free the expired buckets now), in the current namespace."""
    import sys

    from ..state import namespace_dir
    from .attachment import ns_pins

    pins = ns_pins(namespace_dir())
    if argv[:1] == ["show"] and len(argv) == 2:
        for line in show(pins, argv[1]):
            print(line)
        return 0
    if argv == ["sweep"]:
        print(sweep(pins))
        return 0
    sys.stderr.write("usage: python -m bpf_iptables.datapath.hashlimit_tables "
                     "show NAME | sweep\n")
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
