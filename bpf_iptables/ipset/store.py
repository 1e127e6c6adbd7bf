"""A namespace's sets between invocations: ``<namespace_dir>/ipset.json``
(written by rename, so readers never see half a file), serialised by a
lock file next to it, and mirrored into the namespace's pinned BPF maps
(maps.py) when a bpffs is mounted: every change is written there before
the command returns, so the data path sees it without a recompile."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .maps import BITMAP_SETS, SetMaps
from .model import IpSet, IpsetError, now_ns

FILE = "ipset.json"
LOCK = "ipset.lock"


def read_sets(directory: Path) -> dict[str, IpSet]:
    """The sets of the namespace whose state is ``directory`` (no lock:
    the file is replaced whole). Creation order is kept."""
    try:
        data = json.loads((directory / FILE).read_text())
    except FileNotFoundError:
        return {}
    return {d["name"]: IpSet.from_json(d) for d in data["sets"]}


def pin_dir(directory: Path) -> Path:
    from ..datapath.attachment import ns_pins

    return ns_pins(directory) / "sets"


def bpffs_here() -> bool:
    from ..datapath.attachment import is_bpffs, pin_root

    return is_bpffs(pin_root())


def ensure_maps(directory: Path) -> Path:
    """The namespace's set maps, created and filled from the store when
    missing (a classifier with sets opens them by path); their directory."""
    d = pin_dir(directory)
    with locked(directory):
        maps, created = SetMaps.open_or_create(d)
        try:
            if created:
                maps.write_all(list(read_sets(directory).values()))
        finally:
            maps.close()
    return d


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class SetStore:
    """The sets of one namespace, loaded for one command and saved back."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.sets = read_sets(directory)
        self._maps: SetMaps | None = None
        self._maps_tried = False
        # what the data path held when loaded (expired members purged)
        now = now_ns()
        for s in self.sets.values():
            dead = s.purge(now)
            maps = self.maps() if dead else None
            if maps is not None:
                maps.remove(s, dead)

    def maps(self) -> SetMaps | None:
        """The pinned maps, when the namespace's data path has a pin
        directory (it is attached, or was and keeps its pins): otherwise
        nothing is pinned, and the first classifier with a set match
        creates the maps from the store (ensure_maps)."""
        if not self._maps_tried:
            self._maps_tried = True
            if bpffs_here() and pin_dir(self.directory).parent.is_dir():
                self._maps, created = SetMaps.open_or_create(pin_dir(self.directory))
                if created:
                    self._maps.write_all(list(self.sets.values()))
        return self._maps

    def close(self) -> None:
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    def get(self, name: str) -> IpSet:
        s = self.sets.get(name)
        if s is None:
            raise IpsetError("The set with the given name does not exist")
        return s

    def new_id(self, settype: str) -> int:
        used = {s.id for s in self.sets.values() if (s.type == "bitmap:port")
                == (settype == "bitmap:port")}
        if settype == "bitmap:port":
            for slot in range(BITMAP_SETS):
                if slot not in used:
                    return slot
            raise IpsetError(f"bpf-iptables-set: more than {BITMAP_SETS} bitmap:port sets in "
                             "one namespace are not supported")
        return max(used, default=0) + 1

    def save(self) -> None:
        tmp = self.directory / (FILE + ".tmp")
        tmp.write_text(json.dumps({"sets": [s.to_json() for s in self.sets.values()]}))
        os.replace(tmp, self.directory / FILE)


# -- references: rules of the namespace's rule set that name a set ----------------

def references(directory: Path) -> dict[str, int]:
    """Per set name, the rules of the stored rule set with a set match
    naming it (ipset's reference count, which iptables' rules hold)."""
    from ..state import Store

    counts: dict[str, int] = {}
    try:
        ruleset = Store(directory).load()
    except FileNotFoundError:
        return counts
    for table in ruleset.tables.values():
        for chain in table.chains.values():
            for rule in chain.rules:
                for m in rule.matches:
                    if m.name == "set":
                        counts[m.data.name] = counts.get(m.data.name, 0) + 1
    return counts
