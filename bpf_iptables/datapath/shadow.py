"""Write a generation's maps by difference: only the elements whose bytes
differ from what the map already holds.

Why: an update rewrote every map of the inactive generation (about 23 MB
at 10k rules) although one rule changed; most rows of most tables are
the same bytes as the generation's last write. A long-lived writer (the
command server) keeps, per map, a *shadow* of the bytes it last wrote
there, and writes only the rows that differ from it. The generation
being prepared was last written two updates ago, so the difference also
carries the change it missed (the one the other generation got): the
shadow is what the map holds, not what the last update changed.

When the shadow is trusted:
- it is keyed by the map's kernel id (a map made anew, by a new program
  or a new attach, has none: written in full);
- every writer of a generation's maps first names itself in the
  generation's writer file (``gen-G.writer`` in the namespace's state
  directory) under the xtables lock; a shadow is used only while that
  file still names this process's token, so a write by any other process
  (a command run in-process, the watcher's resync child) makes every
  shadow of that generation stale;
- a write that fails part way drops the map's shadow (a batch may have
  written some elements);
- maps the program itself writes (``MUTABLE``: the limit buckets) are
  always written in full, which restarts them as a table replace does.

Rows are compared with numpy (imported by the image already): the whole
image is compared, and only rows that differ reach the kernel, in one
batch per map.

**Mapped arrays.** An array map created ``BPF_F_MMAPABLE`` (filter.c's
per-field tables, entry_map, the slot tables) is written through shared
memory instead (``bpfsys.Mapping``): that memory is what the program
reads, so the write compares the image with the map itself, piece by
piece, and copies the pieces that differ. No shadow is kept for such a
map and none of the trust rules above matter for it: whoever wrote it
last, the memory says what it holds. A process that writes again (the
command server) keeps one mapping per map (by id) while the map belongs
to a generation it writes: ``settle()`` after a generation's prepare
unmaps the maps that generation no longer has (a mapping holds its map
alive). Hash, LPM and per-CPU maps, and the arrays the program writes
itself (``limit_map``: spin locks cannot be mapped), stay on batches."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys

# maps the classifier writes (lib/limit.h keeps its token buckets there)
MUTABLE = frozenset({"limit_map"})
TOKEN = f"{os.getpid()}-{secrets.token_hex(8)}"


@dataclass
class Shadow:
    """What one map holds, as this process last wrote it: either the
    values of keys 0..n-1 of an array (``dense``) back to back, or key ->
    value."""

    dense: bool
    value_size: int
    values: bytes = b""
    items: dict[bytes, bytes] | None = None
    gen: int = 0    # the generation the map belongs to
    # a dense map's rows past ``values`` (an earlier, longer image's last
    # rows): kept apart, so that a shorter image is not copied to append them
    tail: bytes = b""


# map id -> its shadow
_shadows: dict[int, Shadow] = {}
# the bytes shadows may hold in all (they keep the images' bytes alive):
# at 10k rules a generation's maps are ~23 MB; at 64k ~1 GB, whose big
# maps are then written in full, as without shadows
BUDGET = 256 << 20


def _held() -> int:
    return sum(len(v.values) + len(v.tail) + (len(v.items) * 64 if v.items else 0)
               for v in _shadows.values())


def _keep(map_id: int, shadow: Shadow) -> None:
    """Remember ``shadow`` unless that passes BUDGET (then the map has
    none: written in full next time)."""
    size = len(shadow.values) + len(shadow.tail) + (len(shadow.items) * 64 if shadow.items else 0)
    if _held() + size <= BUDGET:
        _shadows[map_id] = shadow
_claimed = 0   # the generation being written (claim())
# whether this process keeps shadows: the command server does (it writes
# again); a command run in-process does not (it exits after one update)
enabled = False


# map id -> (its mapping, the generation it was written for), kept by a
# process that writes again (``enabled``); the ids written since the
# last claim()
_mappings: "dict[int, tuple[bpfsys.Mapping, int]]" = {}
_touched: set[int] = set()
# mapped map id -> the image written there since the last claim(): a map
# two programs share (the looped copies' program uses INPUT's, see
# generation.shared_maps) is handed the same image twice, and the second
# time there is nothing to do
_seen: dict[int, object] = {}
# mapped map id -> the version of the live address matrix (image.Packed
# .version) whose rows it holds, as this process wrote them: the next
# image patched from that version writes only its changed columns there.
# Any other write to the map, a claim by another writer, a fork: forgotten.
_holds: dict[int, int] = {}


def _mapping(fd: int, info: "bpfsys.MapInfo") -> "tuple[bpfsys.Mapping | None, bool]":
    """The map's mapping (None: not a mappable array) and whether it is
    kept (else the caller closes it)."""
    if not enabled:
        return bpfsys.map_mmap(fd, info), False
    kept = _mappings.get(info.id)
    if kept is None:
        m = bpfsys.map_mmap(fd, info)
        if m is None:
            return None, False
        kept = (m, _claimed)
    _mappings[info.id] = (kept[0], _claimed)
    _touched.add(info.id)
    return kept[0], True


def settle(gen: int) -> None:
    """After generation ``gen`` was written: unmap the maps it was not
    written to this time (programs replaced since: their maps live on only
    through the mapping)."""
    _seen.clear()
    for map_id in [k for k, (_, g) in _mappings.items() if g == gen and k not in _touched]:
        _mappings.pop(map_id)[0].close()
        _holds.pop(map_id, None)


def unmap_all() -> None:
    for m, _ in _mappings.values():
        m.close()
    _mappings.clear()
    _holds.clear()


def _forked() -> None:
    # a forked child has none of the mappings (MADV_DONTFORK)
    _mappings.clear()
    _seen.clear()
    _holds.clear()


os.register_at_fork(after_in_child=_forked)


def writer_file(directory: Path, gen: int) -> Path:
    return directory / f"gen-{gen}.writer"


def claim(directory: Path, gen: int) -> bool:
    """Name this process as the last writer of generation ``gen`` (before
    any of its maps is written; under the xtables lock); True when it was
    already the last one, so that its shadows hold. A process that keeps
    no shadows claims too: it makes the server's stale."""
    global _claimed
    _claimed = gen
    _touched.clear()
    _seen.clear()
    path = writer_file(directory, gen)
    try:
        was = path.read_text()
    except OSError:
        was = ""
    mine = was == TOKEN
    if not mine:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(TOKEN)
        os.replace(tmp, path)
        forget(gen)
    return mine


def forget(gen: int | None = None) -> None:
    """Trust no shadow of generation ``gen`` (another writer was there),
    or of any generation."""
    for map_id in [k for k, v in _shadows.items() if gen is None or v.gen == gen]:
        del _shadows[map_id]
    # (which maps are of gen is not known here: every hold forgotten)
    _holds.clear()


def _dense_keys(items) -> bool:
    return bool(getattr(items, "dense", False))


def _rows(blob: bytes, size: int):
    import numpy as np

    if size % 8 == 0:
        return np.frombuffer(blob, np.uint64).reshape(-1, size // 8)
    if size % 4 == 0:
        return np.frombuffer(blob, np.uint32).reshape(-1, size // 4)
    return np.frombuffer(blob, np.uint8).reshape(-1, size)


# the last _dense_changes(): (shadow values, tail, new values, result). A
# hook sharing another's image (generation.twins) has a shadow holding the
# very same bytes objects when both maps were last written together: the
# difference found for the first map is the second's too
_last_diff: "tuple[bytes, bytes, bytes, int, tuple[bytes, bytes] | None] | None" = None


def _dense_changes(old: Shadow, values: bytes, size: int) -> tuple[bytes, bytes] | None:
    """Keys and values (back to back) of the rows of ``values`` that
    differ from the shadow's; None when all of them do."""
    global _last_diff
    last = _last_diff
    if last is not None and last[0] is old.values and last[1] == old.tail \
            and last[2] is values and last[3] == size:
        return last[4]
    changes = _compare(old, values, size)
    _last_diff = (old.values, old.tail, values, size, changes)
    return changes


# every SAMPLED-th row is compared first
SAMPLED = 16


def _compare(old: Shadow, values: bytes, size: int) -> tuple[bytes, bytes] | None:
    import numpy as np

    n = len(values) // size
    held = len(old.values) // size
    m = held + len(old.tail) // size
    common = min(n, m)
    if common == 0:
        return None
    new_rows = _rows(values, size)
    first = min(common, held)
    old_rows = _rows(old.values, size)
    if first >= SAMPLED * 4 and (new_rows[:first:SAMPLED] != old_rows[:first:SAMPLED]).any(
            axis=1).all():
        # every sampled row differs (an update's address vectors: each has
        # the new entry's bit): written in full, which is always right,
        # without comparing the other rows (20 MB at fw1-10k)
        return None
    differ = (new_rows[:first] != old_rows[:first]).any(axis=1)
    if common > first:
        tail = _rows(old.tail, size)[:common - first]
        differ = np.concatenate([differ, (new_rows[first:common] != tail).any(axis=1)])
    index = np.flatnonzero(differ)
    if n > m:
        index = np.concatenate([index, np.arange(m, n)])
    if len(index) == n:
        return None
    index = index.astype(np.uint32)
    raw = np.frombuffer(values, np.uint8).reshape(n, size)
    return index.tobytes(), raw[index].tobytes()


def _rest(old: "Shadow | None", length: int) -> bytes:
    """What the map holds past its first ``length`` bytes, by the shadow
    (dense): rows an earlier, longer image wrote, which a shorter one
    leaves in place."""
    if old is None or not old.dense:
        return b""
    if length >= len(old.values):
        return old.tail[length - len(old.values):]
    return old.values[length:] + old.tail


def _update_rows(fd: int, size: int, keys: bytes, values: bytes) -> None:
    if not bpfsys.map_update_packed(fd, 4, size, keys, values):
        bpfsys.map_update_many(fd, [(keys[i * 4:i * 4 + 4], values[i * size:(i + 1) * size])
                                    for i in range(len(keys) // 4)])


def write(fd: int, name: str, items, clear: bool) -> tuple[int, int]:
    """Write ``items`` (pairs or an image.Packed) into the map ``fd``
    named ``name`` of a generation claim()ed first; with ``clear``, keys
    not in ``items`` are deleted. Returns (elements written, deleted)."""
    info = bpfsys.map_info(fd)
    if not clear:
        seen, live = _seen.get(info.id), getattr(items, "matrix", None) is not None
        if seen is items or (live and seen == ("matrix", items.version)):
            return 0, 0   # a shared map: written with this very image already
        m, kept = _mapping(fd, info)
        if m is not None:
            _shadows.pop(info.id, None)
            held = _holds.pop(info.id, 0)
            try:
                written = 0
                if not items:
                    pass
                elif getattr(items, "matrix", None) is not None and _dense_keys(items):
                    # the live matrix itself (no bytes); only the columns
                    # that changed since the version the map holds
                    written = m.write_matrix(items.matrix, items.columns_since(held))
                    if kept:
                        _holds[info.id] = items.version
                elif _dense_keys(items):
                    if items.value_size != m.value_size:
                        raise ValueError(f"{name}: values of {items.value_size} bytes for "
                                         f"a map of {m.value_size}")
                    written = m.write_dense(items.joined()[1])
                else:
                    written = m.write_items(items)
            finally:
                if not kept:
                    m.close()
            # (a live matrix's version, not the image: holding it would make
            # the next update copy its bytes out, image.Packed._freeze)
            _seen[info.id] = ("matrix", items.version) if live else items
            return written, 0
    keep = enabled
    map_id = info.id
    old = _shadows.pop(map_id, None) if keep and name not in MUTABLE else None
    if not items:
        if clear:
            gone = list(old.items) if old is not None and old.items is not None \
                else bpfsys.map_keys(fd, bpfsys.map_info(fd).key_size)
            for key in gone:
                bpfsys.map_delete(fd, key)
            if keep and name not in MUTABLE:
                _keep(map_id, Shadow(False, 0, items={}, gen=_claimed))
            return 0, len(gone)
        return 0, 0
    dense = _dense_keys(items) and not clear
    written = deleted = 0
    if dense:
        size = items.value_size
        values = items.joined()[1]
        changes = _dense_changes(old, values, size) \
            if old is not None and old.dense and old.value_size == size else None
        if changes is None:
            bpfsys.map_update_many(fd, items)
            written = len(items)
        elif changes[0]:
            _update_rows(fd, size, *changes)
            written = len(changes[0]) // 4
        if keep and name not in MUTABLE:
            _keep(map_id, Shadow(True, size, values=values, tail=_rest(old, len(values)),
                                 gen=_claimed))
        return written, 0
    pairs = list(items) if not isinstance(items, list) else items
    if old is not None and old.items is not None:
        was = old.items
        changed = [(k, v) for k, v in pairs if was.get(k) != v]
        if clear:
            now_keys = {k for k, _ in pairs}
            gone = [k for k in was if k not in now_keys]
        else:
            gone = []
    else:
        was = None
        changed = pairs
        gone = []
        if clear:
            keep_keys = {k for k, _ in pairs}
            gone = [k for k in bpfsys.map_keys(fd, len(pairs[0][0])) if k not in keep_keys]
    for key in gone:
        bpfsys.map_delete(fd, key)
    deleted = len(gone)
    if changed:
        bpfsys.map_update_many(fd, changed)
        written = len(changed)
    if keep and name not in MUTABLE:
        now = dict(pairs) if clear or was is None else {**was, **dict(pairs)}
        _keep(map_id, Shadow(False, 0, items=now, gen=_claimed))
    return written, deleted
