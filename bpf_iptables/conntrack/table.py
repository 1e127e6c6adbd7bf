"""The pinned eBPF conntrack maps of a namespace, read and written by
bpf(2) (no bcc): entries, timeouts (sysctl names), statistics.

Layouts are bpf/lib/conntrack_defs.h's: key ``struct ct_key`` (a_addr,
b_addr host order, a_port, b_port, proto), value ``struct ct_entry``
(expires and stream_ts in CLOCK_MONOTONIC ns, then swapped, tcp_state,
status, close_init, last_index, last_dir, dying (killed: never listed,
swept), then the deadline in 32-bit jiffies that --ctexpire reads)."""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..datapath import bpfsys
from .tracker import DEFAULT_TIMEOUTS, TIMEOUT_SLOTS, Entry

KEY = struct.Struct("<IIHHI")
VALUE = struct.Struct("<QQBBBBBBBxI4x")
CONFIG_SLOTS = 16
NO_LOOSE_SLOT = 15
STAT_INSERTS, STAT_DELETES, STAT_SWEPT, NSTATS = 0, 1, 2, 4
NSEC = 1_000_000_000


def conntrack_dir(namespace_pins: Path) -> Path:
    """Where a namespace's conntrack maps are pinned (outside the generations)."""
    return namespace_pins / "conntrack"


@dataclass
class Row:
    """One entry as read from the map."""
    key: tuple[int, int, int, int, int]
    expires_ns: int
    stream_ts_ns: int
    swapped: bool
    tcp_state: int
    status: int
    close_init: bool
    last_index: int
    last_dir: int

    def as_entry(self, now_ns: int | None = None) -> Entry:
        """The model's view (times in seconds on the monotonic clock)."""
        return Entry(key=self.key, swapped=self.swapped, expires=self.expires_ns / NSEC,
                     tcp_state=self.tcp_state, status=self.status,
                     close_init=self.close_init, last_index=self.last_index,
                     last_dir=self.last_dir, stream_ts=self.stream_ts_ns / NSEC)


def _open(d: Path, name: str) -> int:
    return bpfsys.obj_get(str(d / name))


def pack_key(key: tuple[int, int, int, int, int]) -> bytes:
    return KEY.pack(*key)


def read(d: Path, live_only: bool = True) -> list[Row]:
    """Every entry (expired ones left out unless ``live_only`` is False:
    the programs delete them only when a packet finds them)."""
    fd = _open(d, "table")
    try:
        now = time.monotonic_ns()
        rows = []
        for k in bpfsys.map_keys(fd, KEY.size):
            v = bpfsys.map_lookup(fd, k, VALUE.size)
            if v is None:
                continue
            exp, sts, sw, st, status, ci, li, ld, dying, _ = VALUE.unpack(v)
            if live_only and (exp <= now or dying):
                continue
            rows.append(Row(KEY.unpack(k), exp, sts, bool(sw), st, status, bool(ci), li, ld))
        return rows
    finally:
        os.close(fd)


def gc(d: Path, sweeper: bool = False) -> int:
    """Delete the expired entries (the programs delete one when a packet
    finds it; the namespace's daemon sweeps the others periodically,
    ``sweeper``, counted apart; every bpf-iptables-conntrack command
    sweeps too); the count. An entry is looked up again just before its
    deletion: a packet may have replaced it by a new connection meanwhile
    (the window left is the two syscalls between, netfilter closes it
    with a lock)."""
    fd = _open(d, "table")
    try:
        n = 0
        for k in bpfsys.map_keys(fd, KEY.size):
            if not _gone(bpfsys.map_lookup(fd, k, VALUE.size)):
                continue
            if _gone(bpfsys.map_lookup(fd, k, VALUE.size)) and bpfsys.map_delete(fd, k):
                n += 1
    finally:
        os.close(fd)
    if n:
        _add_stat(d, STAT_DELETES, n)
        if sweeper:
            _add_stat(d, STAT_SWEPT, n)
    return n


def _gone(v: bytes | None) -> bool:
    """An entry value that is expired or killed (``dying``)."""
    if v is None:
        return False
    fields = VALUE.unpack(v)
    return fields[0] <= time.monotonic_ns() or bool(fields[8])


def flush(d: Path) -> int:
    """Delete every entry; the count (kept as deletions in the statistics)."""
    fd = _open(d, "table")
    try:
        n = sum(bpfsys.map_delete(fd, k) for k in bpfsys.map_keys(fd, KEY.size))
    finally:
        os.close(fd)
    if n:
        _add_stat(d, STAT_DELETES, n)
    return n


def _stat_values(fd: int, slot: int) -> list[int]:
    ncpu = bpfsys.possible_cpus()
    raw = bpfsys.map_lookup(fd, struct.pack("<I", slot), 8 * ncpu) or bytes(8 * ncpu)
    return list(struct.unpack(f"<{ncpu}Q", raw))


def _add_stat(d: Path, slot: int, n: int) -> None:
    fd = _open(d, "stats")
    try:
        values = _stat_values(fd, slot)
        values[0] += n
        bpfsys.map_update(fd, struct.pack("<I", slot),
                          struct.pack(f"<{len(values)}Q", *values))
    finally:
        os.close(fd)


@dataclass
class Stats:
    entries: int
    inserts: int
    deletes: int
    swept: int = 0      # of the deletes: expired entries the daemon's sweeps removed

    @property
    def evictions(self) -> int:
        """What the LRU table dropped to make room: every insert is still
        there, was deleted (expired, killed, flushed), or was evicted."""
        return max(0, self.inserts - self.deletes - self.entries)


def stats(d: Path) -> Stats:
    fd = _open(d, "stats")
    try:
        inserts = sum(_stat_values(fd, STAT_INSERTS))
        deletes = sum(_stat_values(fd, STAT_DELETES))
        swept = sum(_stat_values(fd, STAT_SWEPT))
    finally:
        os.close(fd)
    return Stats(len(read(d, live_only=False)), inserts, deletes, swept)


def set_timeouts(d: Path, values: dict[str, int]) -> None:
    """Set timeouts by their sysctl names (nf_conntrack_*_timeout*), in
    seconds; a TCP state's timeout also covers SYN_SENT2 for syn_sent.
    ``nf_conntrack_tcp_loose`` (0/1) is accepted too."""
    fd = _open(d, "config")
    try:
        for name, value in values.items():
            if name == "nf_conntrack_tcp_loose":
                slots = [NO_LOOSE_SLOT]
                value = 0 if value else 1
            else:
                if name not in DEFAULT_TIMEOUTS:
                    raise KeyError(f"unknown conntrack setting {name}")
                if not 0 < value < 1 << 32:
                    raise ValueError(f"{name}: {value} is not a timeout in seconds")
                slots = [i for i, n in enumerate(TIMEOUT_SLOTS) if n == name]
            for slot in slots:
                bpfsys.map_update(fd, struct.pack("<I", slot), struct.pack("<I", value))
    finally:
        os.close(fd)


def timeouts(d: Path) -> dict[str, int]:
    """The timeouts in force (netfilter's defaults where none was set)."""
    fd = _open(d, "config")
    try:
        out = dict(DEFAULT_TIMEOUTS)
        for slot, name in enumerate(TIMEOUT_SLOTS):
            if name is None:
                continue
            raw = bpfsys.map_lookup(fd, struct.pack("<I", slot), 4)
            value = struct.unpack("<I", raw)[0] if raw else 0
            if value:
                out[name] = value
        return out
    finally:
        os.close(fd)


# -- settings kept with the namespace's state (they outlive the maps) -------------

SETTINGS_FILE = "conntrack.json"


def saved_settings(state_dir: Path) -> dict[str, int]:
    import json

    try:
        return json.loads((state_dir / SETTINGS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_settings(state_dir: Path, values: dict[str, int]) -> None:
    """Remember timeouts (and nf_conntrack_tcp_loose) for the namespace: the
    maps are re-created when the data path is attached again."""
    import json

    for name, value in values.items():
        if name != "nf_conntrack_tcp_loose" and name not in DEFAULT_TIMEOUTS:
            raise KeyError(f"unknown conntrack setting {name}")
        if name != "nf_conntrack_tcp_loose" and not 0 < value < 1 << 32:
            raise ValueError(f"{name}: {value} is not a timeout in seconds")
    merged = {**saved_settings(state_dir), **values}
    tmp = state_dir / (SETTINGS_FILE + ".tmp")
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, state_dir / SETTINGS_FILE)


def apply_settings(state_dir: Path, d: Path) -> None:
    """Write the remembered settings into the namespace's config map."""
    values = saved_settings(state_dir)
    if values and (d / "config").exists():
        set_timeouts(d, values)
