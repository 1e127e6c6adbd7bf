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
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .compiler import (PAIR_BITS, PROTO_DEFAULT, TCP_FLAGS_EVIL, Compiled, Intervals, Shape,
                       DENSE_DEPTH, pair_summary, ports_pair, ports_pair_slots,
                       summary_words)


class Packed(Sequence):
    """Items of a large array map already laid out as the kernel wants
    them (keys back to back, values back to back): 65,536-slot tables
    would otherwise cost a Python tuple per slot on every update."""

    def __init__(self, key_size: int, value_size: int, keys: bytes, values: "bytes | None",
                 dense: bool = False, matrix: "Any" = None, version: int = 0):
        self.key_size, self.value_size = key_size, value_size
        self.keys, self._values = keys, values
        # keys are 0, 1, 2, ...: the values are the array's memory image
        self.dense = dense
        # a dense table's values as a C-contiguous uint64 matrix, one row per
        # key (matrix_rows' kept buffer: no 21 MB bytes copy per update).
        # It is live: the next update of the hook writes into it, so
        # matrix_rows freezes a Packed still alive then (_freeze: its bytes
        # copied first). VERSION names these contents: a map known to hold
        # an earlier version gets only the columns changed since
        # (columns_since, shadow.write).
        self.matrix, self.version = matrix, version

    @property
    def values(self) -> bytes:
        if self._values is None:
            self._values = self.matrix.tobytes()   # (a copy: safe past the next update)
        return self._values

    def _freeze(self) -> None:
        """The live matrix is about to change: keep its bytes, drop it."""
        if self.matrix is not None:
            self.values
            self.matrix, self.version = None, 0

    def columns_since(self, held: int) -> "tuple[tuple[int, int], ...] | None":
        return columns_since(self.version, held) if self.matrix is not None else None

    def __len__(self) -> int:
        return len(self.keys) // self.key_size

    def __getitem__(self, i):  # (key, value), as the writers' fallback reads them
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)   # ends iteration (Sequence.__iter__), as for a list
        k, v = self.key_size, self.value_size
        return self.keys[i * k:(i + 1) * k], self.values[i * v:(i + 1) * v]

    def joined(self) -> tuple[bytes, bytes]:
        return self.keys, self.values


def joined(items) -> tuple[bytes, bytes]:
    """Keys and values of ``items`` back to back (one batch write)."""
    if isinstance(items, Packed):
        return items.joined()
    return b"".join(k for k, _ in items), b"".join(v for _, v in items)


@lru_cache(maxsize=8)
def array_keys(count: int) -> bytes:
    """Keys 0 .. count - 1 of an array map, back to back."""
    return array("I", range(count)).tobytes()


def packed_array(values: "array | list[int]") -> Packed:
    """An array map's u32 values from index 0, laid out for one batch."""
    blob = (values if isinstance(values, array) else array("I", values)).tobytes()
    return Packed(4, 4, array_keys(len(blob) // 4), blob, dense=True)


def slots(bounds: list[int], span: int) -> Packed:
    """value -> interval index for every value in [0, span): a range field
    looked up by one array access instead of a binary search."""
    table = array("I", bytes(4 * span))
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] if i + 1 < len(bounds) else span
        if lo < hi:
            table[lo:hi] = array("I", [i]) * (hi - lo)
    return packed_array(table)


@dataclass
class MapImage:
    name: str                          # the map's name in filter.c
    items: "list[tuple[bytes, bytes]] | Packed"   # (key, value)
    # hash and LPM maps: keys not written must be deleted (stale entries of
    # an earlier rule set); arrays are overwritten in place
    clear: bool = False


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def be32(addr: int) -> bytes:
    """An address as stored in the packet and the LPM key: network order."""
    return (addr & 0xFFFFFFFF).to_bytes(4, "big")


# byte -> b"1" when its lowest bit is set (see bitvector())
_LOW_BIT = bytes(b"01"[i & 1] for i in range(256))


def bitvector(value: int, nwords: int) -> bytes:
    """The words, then the summary: bit j of summary word j/64 is set when
    word j is not zero (bitvector.h), so the scan skips empty words.

    Built with big-int operations only (64k-entry rule sets have tens of
    thousands of 8 KiB bitvectors): OR-folding each word onto its lowest
    bit reaches exactly 63 bits, so bit 64j of ``fold`` says whether word j
    is non-zero; every 8th byte holds it."""
    words = value.to_bytes(nwords * 8, "little")
    fold = value
    for shift in (32, 16, 8, 4, 2, 1):
        fold |= fold >> shift
    flags = fold.to_bytes(nwords * 8, "little")[::8].translate(_LOW_BIT)
    summary = int(flags[::-1], 2)
    return words + summary.to_bytes(summary_words(nwords) * 8, "little")


def bitvectors(values: list[int], nwords: int) -> bytes:
    """``bitvector(v, nwords)`` of every value, back to back. Values that
    are the same object (a table's shared default) are laid out once.
    Large tables go through numpy: one pass over all words for the
    summaries instead of a dozen big-int operations per vector (at 10k
    rules: ~10k vectors of 2 KiB)."""
    if len(values) < 16:
        return b"".join(bitvector(v, nwords) for v in values)
    first: dict[int, int] = {}
    order: list[int] = []
    unique: list[int] = []
    for v in values:
        at = first.get(id(v))
        if at is None:
            at = first[id(v)] = len(unique)
            unique.append(v)
        order.append(at)
    rows = _rows(unique, nwords)
    if len(unique) == len(values):
        return rows
    size = (nwords + summary_words(nwords)) * 8
    return b"".join([rows[at * size:(at + 1) * size] for at in order])


def _rows(values: list[int], nwords: int) -> bytes:
    return vector_rows(values, nwords, (None,))


# rows whose summaries one numpy pass computes: small enough that a pass's
# temporaries stay in the cache (the masked words of all 10k 2 KiB vectors
# at once were a 20 MB array per mask)
PASS_ROWS = 1024


def vector_rows(values: list[int], nwords: int, masks: "tuple[int | None, ...]") -> bytes:
    """Per value its ``nwords`` u64 words, then per mask the summary of
    value & mask (None: of the value itself), ``summary_words`` each.

    The words are the one cost that grows with the rule set (int.to_bytes
    of every vector): each is converted once, already at its row's full
    length (the summaries' bytes zero), and joined into one mutable buffer
    where numpy fills the summaries in; the rows are never copied again
    until the final bytes."""
    import numpy as np   # only processes that write maps pay its import

    nsum = summary_words(nwords)
    size = nwords * 8
    total = size + len(masks) * nsum * 8
    n = len(values)
    buf = bytearray().join([v.to_bytes(total, "little") for v in values])
    _summarise(np.frombuffer(buf, np.uint8).reshape(n, total), nwords, masks)
    return bytes(buf)


# (hook, field) -> (Compiled.serial, the layout's base array, the tree's
# width, the rows as matrix_rows made them last): the next compile of the
# hook, patched from that one with the same prefixes, gathers only the
# words from the edited entry's on (an entry before it keeps its bits)
_kept_rows: dict[tuple[str, str], tuple] = {}
# (hook, field) -> the Packed last handed out on that kept buffer (weakly:
# the writers drop it after the update) and the version of its contents
_handed: "dict[tuple[str, str], tuple[Any, int]]" = {}
_versions = iter(range(1, 1 << 62))
# version -> (the version it was patched from (0: none), the columns that
# differ from it), for the last LINEAGE versions: a map that holds an
# older version (the other generation's, written one update before) gets
# the union of the columns since (Packed.columns_since)
_lineage: "dict[int, tuple[int, tuple[tuple[int, int], ...] | None]]" = {}
LINEAGE = 16


def columns_since(version: int, held: int) -> "tuple[tuple[int, int], ...] | None":
    """The columns that can differ between the kept rows of ``version``
    and those of ``held``, an ancestor of it by patches; None: unknown
    (written in full)."""
    if not held:
        return None
    out: list[tuple[int, int]] = []
    for _ in range(4):
        prior, columns = _lineage.get(version, (0, None))
        if not prior or columns is None:
            return None
        out.extend(columns)
        if prior == held:
            merged: list[tuple[int, int]] = []
            for lo, hi in sorted(out):
                if merged and lo <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            return tuple(merged)
        version = prior
    return None


@dataclass
class Rows:
    """matrix_rows' answer for a kept buffer: the live matrix, its contents'
    version, the version it was patched from (0: none) and the columns
    that may differ from that one (also in _lineage)."""
    matrix: Any
    version: int
    prior: int
    columns: "tuple[tuple[int, int], ...] | None"


def matrix_rows(iv: Intervals, nwords: int, masks: "tuple[int | None, ...]",
                keep: "tuple | None" = None) -> "bytes | Rows":
    """``vector_rows`` of an address table built as a uint64 bit matrix
    (compiler ``Intervals.tree`` / ``.rows``). From a tree, the rows are
    gathered straight into the map's buffer, full width (the few internal
    rows padded first), and the summaries come from the tree too; a
    matrix is copied into the buffer's first columns."""
    import numpy as np

    total = nwords + len(masks) * summary_words(nwords)
    if iv.tree is not None:
        tree = iv.tree
        if keep is None:
            out = tree.rows(total, scratch=True)   # (copied out by tobytes)
        else:
            # keep: (hook, field, serial, the serial it was patched from, the
            # edited entry's word)
            hook, name, serial, since, first, used = keep
            kept = _kept_rows.pop((hook, name), None)
            handed = _handed.pop((hook, name), None)
            if handed is not None and (p := handed[0]()) is not None:
                p._freeze()   # (someone still holds the last image: its own bytes)
            prior, columns = 0, None
            width = tree.internal.shape[1]
            shape = (len(tree.base), total)
            if kept is not None and kept[3].shape == shape and since is not None \
                    and kept[0] == since and kept[1] is tree.base and kept[2] == width:
                out, room = kept[3], kept[4]
                # what can differ from the rows before: the words from the
                # edited entry's to the last entry's (of either: words past
                # it have no entry's bit, zero in both) and the summaries
                # (made again below); only those words gathered
                hi = min(width, max(used, kept[6]))
                out[:, first:hi] = _tree_columns(tree, first, hi)
                prior = kept[5]
                columns = ((first, hi), (nwords, total))
            else:
                # into the hook's own buffer, kept with room to spare: a
                # fresh one per update (an address added: one more row)
                # costs more in page faults than the gather
                room = kept[4] if kept is not None else None
                if room is None or len(room) < shape[0] * total:
                    room = np.empty(shape[0] * total * 9 // 8 + total, dtype=np.uint64)
                out = tree.rows(total, into=room[:shape[0] * total].reshape(shape))
            version = next(_versions)
            _kept_rows[(hook, name)] = (serial, tree.base, width, out, room, version, used)
            _lineage[version] = (prior, columns)
            _lineage.pop(version - LINEAGE, None)
            _tree_summaries(out, tree, nwords, masks)
            return Rows(out, version, prior, columns)
        _tree_summaries(out, tree, nwords, masks)
        return out.tobytes()
    matrix = iv.rows
    out = np.zeros((matrix.shape[0], total), dtype="<u8")
    out[:, :matrix.shape[1]] = matrix
    _summarise(out.view(np.uint8), nwords, masks)
    return out.tobytes()


def _tree_columns(tree: "Any", first: int, hi: int) -> "Any":
    """Words ``first``..``hi`` of every row as ``tree.rows()`` makes them
    (``tree.columns(first)`` cut at ``hi``: an -A at fw1-10k gathers one
    word per row, not the ~110 up to the tree's width)."""
    from .compiler import scatter_bits

    out = tree.internal[:, first:hi][tree.base]
    entries = tree.leaf_entries
    within = (entries >= first * 64) & (entries < hi * 64)
    scatter_bits(out, tree.leaf_rows[within], entries[within] - first * 64)
    return out


def _tree_summaries(out: "Any", tree: "Any", nwords: int,
                    masks: "tuple[int | None, ...]") -> None:
    """The summaries of rows made as compiler.AddressTree says: word j of
    a row is non-zero (under a mask) when its internal row's is or one of
    its leaf bits is there (and in the mask), so the flags come from the
    few internal rows and the leaf bits, not from reading every row."""
    import numpy as np

    nsum = summary_words(nwords)
    internal = tree.internal
    if internal.shape[1] < nwords:   # (a larger program: the rest is zero)
        internal = np.concatenate(
            (internal, np.zeros((internal.shape[0], nwords - internal.shape[1]), np.uint64)),
            axis=1)
    word = tree.leaf_entries >> 6
    bit = np.left_shift(np.uint64(1), (tree.leaf_entries & 63).astype(np.uint64))
    for i, m in enumerate(masks):
        if m is None:
            nonzero = internal != 0
            keep = slice(None)
        else:
            mw = np.frombuffer(m.to_bytes(nwords * 8, "little"), "<u8")
            nonzero = (internal & mw) != 0
            keep = (mw[word] & bit) != 0
        flags = nonzero[tree.base]
        flags[tree.leaf_rows[keep], word[keep]] = True
        at = (nwords + i * nsum) * 8
        packed = np.packbits(flags, axis=1, bitorder="little")   # (fewer than 8 bytes
        out.view(np.uint8)[:, at:at + nsum * 8] = 0               # under 64 words)
        out.view(np.uint8)[:, at:at + packed.shape[1]] = packed


def _summarise(rows: "Any", nwords: int, masks: "tuple[int | None, ...]") -> None:
    """Fill in the summaries of ``rows`` (uint8, one row per vector: its
    words, then per mask ``summary_words`` zero words), in passes of
    PASS_ROWS rows."""
    import numpy as np

    nsum = summary_words(nwords)
    size = nwords * 8
    n = rows.shape[0]
    words = rows[:, :size].view("<u8")
    step = max(1, min(PASS_ROWS, n))
    # per mask the words it keeps anything of: the others' summary bits
    # are zero (as the buffer is); the pair summary's masks keep few (fw1-10k:
    # 45-86 of 256 words, acl1-10k: 2-153)
    passes = []
    for i, m in enumerate(masks):
        if m is None:
            cols, kept = None, None
        else:
            mw = np.frombuffer(m.to_bytes(size, "little"), "<u8")
            cols = np.flatnonzero(mw)
            if not len(cols):
                continue
            kept = mw[cols]
        # per pass its own flags: columns it never writes stay clear
        passes.append((size + i * nsum * 8, cols, kept, np.zeros((step, nwords), bool)))
    for start in range(0, n, step):
        w = words[start:start + step]
        k = w.shape[0]
        for at, cols, kept, nonzero in passes:
            if cols is None:
                np.not_equal(w, 0, out=nonzero[:k])
            else:
                picked = w[:, cols]
                picked &= kept
                nonzero[:k, cols] = picked != 0
            # bit j of the summary: word j is not zero (little-endian bit order)
            flags = np.packbits(nonzero[:k], axis=1, bitorder="little")
            rows[start:start + k, at:at + flags.shape[1]] = flags


def vector_items(keys: "list[int] | range", values: list[int], nwords: int,
                 dense: bool = False) -> Packed:
    """u32 keys with bitvector values, laid out for one batch write."""
    key_blob = array_keys(len(keys)) if dense else array("I", keys).tobytes()
    return Packed(4, (nwords + summary_words(nwords)) * 8, key_blob,
                  bitvectors(values, nwords), dense=dense)


_NO_RESIDUAL = (0, 0, 0, 0, 0, 0)


def entry_blob(entries) -> bytes:
    """Every ``entry_bytes()``, back to back: per column of struct entry a
    list comprehension over the entries (a plain attribute read each, the
    cheapest Python step) put into its column by numpy; entries with a
    residual address test (few) laid out again by entry_bytes()."""
    import numpy as np

    n = len(entries)
    if n < 64:
        return _entry_blob_loop(entries)
    out = np.zeros((n, 10), dtype="<u4")
    for col, values in enumerate((
            [e.counter for e in entries],
            [e.verdict & 0xFFFFFFFF for e in entries],
            [e.next for e in entries],
            [(1 if e.tcp else 0) | (ENTRY_HASHLIMIT if e.hashlimit else 0)
             | (ENTRY_RECENT if e.recent else 0) for e in entries])):
        out[:, col] = np.frombuffer(array("I", values), "<u4")
    for i, f in enumerate([e.fields for e in entries]):
        if f.src.residual or f.dst.residual:
            out[i] = np.frombuffer(entry_bytes(entries[i]), "<u4")
    return out.tobytes()


# hook -> (Compiled.serial, its entry rows as a (n, 10) u32 array): the
# next compile of the hook, when patched from that one (c.edit), patches them
_entry_rows: dict[str, "tuple[int, Any]"] = {}


def entry_rows(c: Compiled) -> bytes:
    """entry_blob(c.entries); for a patched single edit of the compile whose
    rows are kept, those rows patched (the same bytes): the edited entry's
    row inserted and/or removed, every counter moved by the edit's
    ``moved``, those after it by one more or less, and their ``next``
    too (_patched's _renumber); the policy's row made again."""
    import numpy as np

    edit, kept = c.edit, _entry_rows.get(c.hook)
    if c.serial and kept is not None and kept[0] == c.serial:
        return kept[1].tobytes()   # (the same compile's image again)
    if c.serial and edit is not None and kept is not None and kept[0] == edit.serial:
        rows = kept[1][:-1]   # (the policy's row: made again below)
        k = edit.k
        rows = np.delete(rows, k, axis=0) if edit.gone is not None else rows.copy()
        # the entries from k on (without the new one) move by one more or less
        shift = (edit.new is not None) - (edit.gone is not None)
        _add(rows[:, 0], edit.moved)
        _add(rows[k:, 0], shift)
        _add(rows[k:, 2], shift)
        parts = [rows[:k]]
        if edit.new is not None:
            parts.append(np.frombuffer(_entry_blob_loop([edit.new]), "<u4").reshape(1, 10))
        parts += [rows[k:], np.frombuffer(_entry_blob_loop(c.entries[-1:]), "<u4").reshape(1, 10)]
        rows = np.concatenate(parts)
        blob = rows.tobytes()
    else:
        blob = entry_blob(c.entries)
        rows = np.frombuffer(blob, "<u4").reshape(-1, 10)
    if c.serial:   # (serials are never reused: no stale match possible)
        _entry_rows[c.hook] = (c.serial, rows)
    return blob


def _add(column: "Any", delta: int) -> None:
    """``delta`` added to a u32 column in place (modulo 2**32, as the counters wrap never)."""
    import numpy as np

    if delta > 0:
        column += np.uint32(delta)
    elif delta < 0:
        column -= np.uint32(-delta)


def _entry_blob_loop(entries) -> bytes:
    """``entry_blob`` of a few entries, one at a time."""
    flat: list[int] = []
    add = flat.extend
    residual = []
    for i, e in enumerate(entries):
        f = e.fields
        if f.src.residual or f.dst.residual:
            residual.append(i)
        add((e.counter, e.verdict & 0xFFFFFFFF, e.next,
             (1 if e.tcp else 0) | (ENTRY_HASHLIMIT if e.hashlimit else 0)
             | (ENTRY_RECENT if e.recent else 0)))
        add(_NO_RESIDUAL)
    out = array("I", flat)
    for i in residual:
        out[10 * i:10 * i + 10] = array("I", entry_bytes(entries[i]))
    return out.tobytes()


# struct entry's tcp word (filter.c): bit 1 the rule has a hashlimit, bit 2
# a recent match; either stops the scan for the match's own program
ENTRY_HASHLIMIT = 2
ENTRY_RECENT = 4


def tcp_word(e) -> int:
    """struct entry's ``tcp``: bit 0 hot-drops offset-1 TCP fragments, bits
    1 and 2 mark a hashlimit or recent check (so the scan loop reads no
    other map to know it must stop there)."""
    return ((1 if e.tcp else 0) | (ENTRY_HASHLIMIT if e.hashlimit else 0)
            | (ENTRY_RECENT if e.recent else 0))


def entry_bytes(e) -> bytes:
    sa, sm, si = e.residual("src")
    da, dm, di = e.residual("dst")
    return (u32(e.counter) + u32(e.verdict) + u32(e.next) + u32(tcp_word(e))
            + be32(sa) + be32(sm) + u32(int(si)) + be32(da) + be32(dm) + u32(int(di)))


CTCHECK_SIZE = 88   # struct ct_check (lib/conntrack_defs.h)


def ctcheck_blobs(entries) -> tuple[bytes, bytes]:
    """ctcheck_map's memory image (every entry's first struct ct_check;
    zeros: no check, so a stale check of an earlier rule set never stays)
    and ctextra_map's (the further checks, slot 0 unused), chained by
    ``next`` (a ctextra_map slot, 0: the last)."""
    first = bytearray(CTCHECK_SIZE * len(entries))
    extra = [bytes(CTCHECK_SIZE)]
    pack = lambda k, nxt: struct.pack("<22I", k.flags, k.inv, *k.addr, *k.mask,  # noqa: E731
                                      *k.plo, *k.phi, k.proto, k.exp_lo, k.exp_hi, nxt)
    for i, e in enumerate(entries):
        checks = e.fields.ctcheck
        if not checks:
            continue
        slots = list(range(len(extra), len(extra) + len(checks) - 1)) + [0]
        first[CTCHECK_SIZE * i:CTCHECK_SIZE * (i + 1)] = pack(checks[0], slots[0])
        extra += [pack(k, slots[j + 1]) for j, k in enumerate(checks[1:])]
    return bytes(first), b"".join(extra)


MARK_CHECK_SIZE = 24   # struct mark_check (filter.c): two (mask, value, invert)


def mark_blob(entries) -> bytes:
    """mark_map's memory image: per entry two tests of the packet's mark,
    (mask, value, invert); zeros test nothing (a stale test of an earlier
    rule set never stays)."""
    out = array("I", bytes(MARK_CHECK_SIZE * len(entries)))
    for i, e in enumerate(entries):
        for j, (mask, value, inv) in enumerate(e.fields.mark):
            out[6 * i + 3 * j:6 * i + 3 * j + 3] = array("I", [mask, value, int(inv)])
    return out.tobytes()


def map_image(c: Compiled, shape: Shape) -> list[MapImage]:
    """Every map's contents for ``c`` in a program compiled for ``shape``
    (which must cover ``c.shape``). Entries beyond the new list keep stale
    contents: they have no bit in ``live_map`` and are never reached."""
    if not shape.covers(c.shape):
        raise ValueError("compiled rule set does not fit this program's shape")
    nw = shape.nwords
    bv = lambda v: bitvector(v, nw)  # noqa: E731 - a local shorthand
    fields = shape.fields
    # struct config (filter.c): first_word, and with the tracker the fast path
    config = (struct.pack("<IIQ", 0, c.fast_counter, c.fast_slots) if "ctstate" in fields
              else u32(0))
    out = [MapImage("config_map", [(u32(0), config)]),
           MapImage("live_map", [(u32(0), bv(c.live))]),
           MapImage("entry_map", Packed(4, 40, array_keys(len(c.entries)),
                                        entry_rows(c), dense=True))]
    if shape.nlimits:
        out.extend(limit_images(c))
    if shape.nlogs:
        out.extend(log_images(c))
    if shape.nhashlimits:
        out.append(hashlimit_image(c))
    if shape.nrecent or shape.memo:
        from .recent import images as stateful_images   # -m recent, memo bits
        out.extend(stateful_images(c, shape))
    if shape.nsets:
        from .sets import set_images

        out.extend(set_images(c, shape.nsets))
    parts = pair_parts(c) if pair_summary(shape) else None
    if parts is not None and ports_pair(shape):
        parts.ports_wild = ports_wild(c)
    for name, iv, bsize in (("src", c.src_iv, shape.src_bsize), ("dst", c.dst_iv, shape.dst_bsize)):
        if name in fields:
            assert iv is not None
            # (a flat compile kept for patching: its rows kept, see matrix_rows)
            keep = ((c.hook, name, c.serial, c.edit.serial if c.edit is not None else None,
                     c.edit.k // 64 if c.edit is not None else 0, -(-len(c.entries) // 64))
                    if c.serial else None)
            out.extend(address_images(name, iv, bsize, nw, parts, keep,
                                      getattr(shape, f"{name}_dense")))
    if parts is not None:
        out.append(MapImage("pair_map", Packed(4, summary_words(nw) * 8, array_keys(1 << 16),
                                               pair_table(parts, nw), dense=True)))
    if parts is not None and parts.ports_wild is not None:
        out.append(MapImage("ports_pair_map", Packed(
            4, summary_words(nw) * 8, array_keys(ports_pair_slots(shape)),
            ports_pair_table(c, shape, parts.ports_wild), dense=True)))
    if "proto" in fields:
        # every protocol number has its slot: an array lookup, no hashing
        other = c.proto[PROTO_DEFAULT]
        out.append(MapImage("proto_map", vector_items(
            range(256), [c.proto.get(p, other) for p in range(256)], nw, dense=True)))
    for name, values in (("iif", c.iif), ("icmp", c.icmp), ("oif", c.oif)):
        if name in fields:
            out.append(MapImage(f"{name}_map", vector_items(list(values), list(values.values()),
                                                            nw), clear=True))
    if "frag" in fields:
        out.append(MapImage("frag_map", [(u32(i), bv(v)) for i, v in enumerate(c.frag)]))
    if "mac" in fields:
        out.append(MapImage("mac_map", [(struct.pack("<Q", k), bv(v)) for k, v in c.mac.items()],
                            clear=True))
    if "pkttype" in fields:
        out.append(MapImage("pkttype_map", [(u32(i), bv(v)) for i, v in enumerate(c.pkttype)]))
    if "ctstate" in fields:
        out.append(MapImage("ctstate_map", [(u32(i), bv(v)) for i, v in enumerate(c.ctstate)]))
    if "ctcheck" in fields:
        first, extra = ctcheck_blobs(c.entries)
        out.append(MapImage("ctcheck_map", Packed(4, CTCHECK_SIZE, array_keys(len(c.entries)),
                                                  first, dense=True)))
        out.append(MapImage("ctextra_map", Packed(4, CTCHECK_SIZE,
                                                  array_keys(len(extra) // CTCHECK_SIZE),
                                                  extra, dense=True)))
    if "atcheck" in fields:
        checks = array("I", bytes(8 * len(c.entries)))
        for i, e in enumerate(c.entries):
            if e.fields.atcheck is not None:
                checks[2 * i:2 * i + 2] = array("I", e.fields.atcheck)
        out.append(MapImage("atcheck_map", Packed(4, 8, array_keys(len(c.entries)),
                                                  checks.tobytes(), dense=True)))
        # struct at_key {prefixlen, addr (network order)} -> struct at_val {type, dev}
        out.append(MapImage("atype_lpm", [(u32(n) + be32(a), struct.pack("<II", t, d))
                                          for n, a, t, d in c.atype_lpm], clear=True))
    if "mark" in fields:
        out.append(MapImage("mark_map", Packed(4, MARK_CHECK_SIZE, array_keys(len(c.entries)),
                                               mark_blob(c.entries), dense=True)))
    if "tos" in fields:
        assert len(c.tos) == 256
        out.append(MapImage("tos_map", vector_items(range(256), c.tos, nw, dense=True)))
    if "flags" in fields:
        assert len(c.flags) == TCP_FLAGS_EVIL + 1
        out.append(MapImage("flags_map", vector_items(range(len(c.flags)), c.flags, nw,
                                                      dense=True)))
    for name, bounds, vectors, bsize in (
            ("sport", c.sport_bounds, c.sport, shape.sport_bsize),
            ("dport", c.dport_bounds, c.dport, shape.dport_bsize),
            ("length", c.length_bounds, c.length, shape.length_bsize),
            ("ttl", c.ttl_bounds, c.ttl, shape.ttl_bsize)):
        if name not in fields:
            continue
        # one array access finds the interval (the TTL has 256 values)
        out.append(MapImage(f"{name}_slot_map", slots(bounds, 256 if name == "ttl" else 1 << 16)))
        keys = list(range(len(bounds)))
        if name in ("sport", "dport"):
            # then "no L4 header" at bsize and "offset-1 fragment" at bsize + 1
            keys += [bsize, bsize + 1]
            vectors = vectors[:len(bounds)] + vectors[-2:]
        out.append(MapImage(f"{name}_map", vector_items(keys, vectors[:len(keys)], nw)))
    if "ports" in fields:
        # the same slots as the sport / dport maps
        for name, vectors, bsize in (("ports_s", c.ports_s, shape.sport_bsize),
                                     ("ports_d", c.ports_d, shape.dport_bsize)):
            keys = list(range(len(vectors) - 2)) + [bsize, bsize + 1]
            out.append(MapImage(f"{name}_map", vector_items(keys, vectors, nw)))
    return out


def limit_images(c: Compiled) -> list[MapImage]:
    """-m limit (bpf/lib/limit.h): per entry its bucket slot; per bucket
    ``struct limit_state`` {lock, credit, credit_cap, cost, started, pad,
    prev} with started 0, so the first packet finds the bucket full (every
    write restarts the buckets, as a table replace does in the kernel)."""
    slots = array("I", [e.limit for e in c.entries]).tobytes()
    states = [(u32(i), struct.pack("<IIIIIIQ", 0, 0, cap, cost, 0, 0, 0))
              for i, (cap, cost) in enumerate(c.limits, start=1)]
    return [MapImage("entry_limit_map", Packed(4, 4, array_keys(len(c.entries)), slots,
                                               dense=True)),
            MapImage("limit_map", states)]


def hashlimit_image(c: Compiled) -> MapImage:
    """-m hashlimit (bpf/lib/hashlimit.h): per entry ``struct hl_rule``
    {table id, flags (1: --hashlimit-above, 2: a byte rate), zero}, table
    0 for entries without one. The tables themselves are the namespace's
    (datapath/hashlimit_tables.py)."""
    from ..extensions.hashlimit import BYTES, INVERT, table_id

    rules = [struct.pack("<QII", table_id(d.name), (1 if d.mode & INVERT else 0)
                         | (2 if d.mode & BYTES else 0), 0)
             for d in c.hashlimits]
    none = bytes(16)
    blob = b"".join(rules[e.hashlimit - 1] if e.hashlimit else none for e in c.entries)
    return MapImage("entry_hl_map", Packed(4, 16, array_keys(len(c.entries)), blob, dense=True))


HOOK_NUMBERS = {"INPUT": 0, "FORWARD": 1, "OUTPUT": 2}


def log_images(c: Compiled) -> list[MapImage]:
    """-j LOG (bpf/lib/log.h): per entry its log_map slot; per slot
    ``struct log_info`` {level, flags, hook, pad, prefix[32]}."""
    slots = array("I", [e.log for e in c.entries]).tobytes()
    infos = []
    for i, data in enumerate(c.logs, start=1):
        prefix = data.prefix.encode("utf-8", "surrogateescape")[:31]
        infos.append((u32(i), struct.pack("<IIII32s", data.level, data.logflags,
                                          HOOK_NUMBERS[c.hook], 0, prefix)))
    return [MapImage("entry_log_map", Packed(4, 4, array_keys(len(c.entries)), slots,
                                             dense=True)),
            MapImage("log_map", infos)]


# What the maps mean to a program, for programs an older version loaded:
# raised whenever a map's contents change meaning for bpf/filter.c (2: the
# /16 tables' depth bits; 3: a /16 of depth TOP_DENSE holds a dense
# block's slot instead of its first interval). A namespace's recorded
# program of another layout is replaced, never given this version's
# images (generation.verified_hooks): it would misread them.
MAP_LAYOUT = 3

# the /16 table's value: the /16's first interval below this bit, its
# depth from here up (bpf/lib/ranges.h TOP_DEPTH_SHIFT); the depth
# TOP_DENSE marks a /16 with a dense block, whose slot is below
TOP_DEPTH_SHIFT = 27
TOP_DENSE = 31
DENSE_WORDS = 1024   # 64-address words of a /16


def top_with_depth(iv: Intervals) -> array:
    """The /16 table with each /16's depth in its top bits (the probes its
    own search needs, ``Intervals.top_depth``: kept with the address
    layout, so an update that leaves a field's prefixes as they were does
    not count them again); the program skips the search steps beyond it
    (ranges.h)."""
    import numpy as np

    if len(iv.bounds) >= 1 << TOP_DEPTH_SHIFT:
        raise ValueError(f"{len(iv.bounds)} address intervals: the /16 table holds fewer")
    top = np.frombuffer(iv.top, dtype=np.uint32)
    return array("I", (top | (iv.slash16_depth() << TOP_DEPTH_SHIFT)).astype("<u4").tobytes())


def dense_blocks(iv: Intervals, slots: int) -> tuple[array, bytes]:
    """The /16 table (as ``top_with_depth``) with the most crowded /16s (of
    depth DENSE_DEPTH and more, up to ``slots``) given a dense block, and
    the blocks (``struct NAME_dense``, bpf/lib/ranges.h): per slot, per
    64-address word the interval at the word's start, then per word a bit
    per address where an interval starts (a /16's first address left
    out: the table's own interval is the one there). A /16 left without a
    slot keeps its depth and is searched."""
    import numpy as np

    top = np.frombuffer(top_with_depth(iv), dtype=np.uint32).copy()
    base = np.zeros((slots, DENSE_WORDS), dtype="<u4")
    bits = np.zeros((slots, DENSE_WORDS), dtype="<u8")
    depth = iv.slash16_depth()
    # most crowded first, then by address: the same choice every build
    crowded = np.flatnonzero(depth >= DENSE_DEPTH)
    crowded = crowded[np.argsort(-depth[crowded].astype(np.int64), kind="stable")][:slots]
    if len(crowded):
        bounds = iv.tree.bounds if iv.tree is not None else np.asarray(iv.bounds, dtype=np.int64)
        slot_of = np.full(1 << 16, -1, dtype=np.int64)
        slot_of[crowded] = np.arange(len(crowded))
        offset = bounds & 0xFFFF
        slot = slot_of[bounds >> 16]
        inside = (offset != 0) & (slot >= 0)
        slot, offset = slot[inside], offset[inside]
        word = slot * DENSE_WORDS + (offset >> 6)      # flat, over the used slots
        np.bitwise_or.at(bits.reshape(-1), word,
                         np.left_shift(np.uint64(1), (offset & 63).astype(np.uint64)))
        used = len(crowded)
        starts = np.bincount(word, minlength=used * DENSE_WORDS).reshape(used, DENSE_WORDS)
        first = top[crowded] & np.uint32((1 << TOP_DEPTH_SHIFT) - 1)
        # the interval at a word's start: the /16's first, plus the starts
        # in the words before
        base[:used] = first[:, None] + (np.cumsum(starts, axis=1) - starts).astype(np.uint32)
        top[crowded] = (np.arange(len(crowded), dtype=np.uint32)
                        | np.uint32(TOP_DENSE << TOP_DEPTH_SHIFT))
    return array("I", top.astype("<u4").tobytes()), base.tobytes() + bits.tobytes()


def address_images(name: str, iv: Intervals, bsize: int, nwords: int,
                   parts: "PairParts | None" = None, keep: "tuple | None" = None,
                   dense: int = 0) -> list[MapImage]:
    """Per /16 the interval its first address is in; the interval starts
    (host order, padded with 0xFFFFFFFF, above any address but the last);
    per interval slot the id of its bitvector (padding slots repeat the
    last interval's, so a search landing on them is still right); the
    bitvectors (with the pair summary: ``struct addr_vector``, below)."""
    pad = bsize - len(iv.bounds)
    if iv.tree is not None:
        # (the layout's numpy arrays: no 13k-element lists to convert)
        import numpy as np

        tree = iv.tree
        bounds = np.concatenate((tree.bounds, np.full(pad, 0xFFFFFFFF, dtype=np.int64))
                                ).astype("<u4").tobytes()
        index = Packed(4, 4, array_keys(bsize), np.concatenate(
            (tree.index, np.full(pad, tree.index[-1], dtype=np.int64))).astype("<u4").tobytes(),
            dense=True)
    else:
        bounds = array("I", iv.bounds + [0xFFFFFFFF] * pad).tobytes()
        index = packed_array(iv.index + [iv.index[-1]] * pad)
    matrix = iv.rows is not None or iv.tree is not None
    if parts is None and not matrix:
        vectors = vector_items(range(len(iv.vectors)), iv.vectors, nwords, dense=True)
    else:
        masks = parts.masks(name) if parts is not None else (None,)
        blob = (matrix_rows(iv, nwords, masks, keep) if matrix
                else vector_rows(iv.vectors, nwords, masks))
        size = (nwords + len(masks) * summary_words(nwords)) * 8
        if isinstance(blob, Rows):
            import weakref

            vectors = Packed(4, size, array_keys(len(iv.vectors)), None, dense=True,
                             matrix=blob.matrix, version=blob.version)
            _handed[(keep[0], keep[1])] = (weakref.ref(vectors), blob.version)
        else:
            vectors = Packed(4, size, array_keys(len(iv.vectors)), blob, dense=True)
    if dense:
        top, blocks = dense_blocks(iv, dense)
        extra = [MapImage(f"{name}_dense_map", [(u32(0), blocks)])]
    else:
        top, extra = top_with_depth(iv), []
    return [MapImage(f"{name}_top_map", packed_array(top)),
            MapImage(f"{name}_bounds_map", [(u32(0), bounds)]),
            MapImage(f"{name}_index_map", index),
            MapImage(f"{name}_map", vectors), *extra]


# -- the source x destination pair summary (filter.c PAIR) ------------------

@dataclass
class PairParts:
    """What the pair summary is made of (filter.c, above struct
    addr_vector): SW / DW the entries in every source / destination
    vector (an entry whose address is "don't care" there), SPEC the live
    entries in neither, and per /8 of each address the OR of the SPEC
    entries of the pieces that meet it."""

    src_wild: int
    dst_wild: int
    spec: int
    src_buckets: list[int]     # 1 << PAIR_BITS
    dst_buckets: list[int]
    # with the source x ports summary (filter.c PORTS_PAIR): PW, the live
    # entries in every sport and every dport vector
    ports_wild: "int | None" = None

    def masks(self, name: str) -> "tuple[int, ...]":
        """(summary mask, spec mask[, pw mask]) of the ``name`` address's
        vectors: a source vector under PORTS_PAIR has the third."""
        if name == "src":
            if self.ports_wild is not None:
                return self.dst_wild, self.spec, self.ports_wild
            return self.dst_wild, self.spec
        return self.src_wild & ~self.dst_wild, self.spec


def _every(vectors: list[int], live: int) -> int:
    out = live
    for v in vectors:
        out &= v
    return out


def _buckets(iv: Intervals, spec: int) -> list[int]:
    """Per top-PAIR_BITS bucket, the OR of the SPEC entries of every
    interval meeting it (a superset of any address's there): the OR of
    the bucket's distinct vectors, masked once (interval starts are
    sorted, so a bucket's intervals are a run of them)."""
    shift = 32 - PAIR_BITS
    vectors, index = iv.vectors, iv.index
    out = []
    first = 0     # the interval holding the bucket's first address
    for b in range(1 << PAIR_BITS):
        end = bisect_left(iv.bounds, (b + 1) << shift, first)   # past the bucket's
        acc = 0
        for x in set(index[first:end]):
            acc |= vectors[x]
        out.append(acc & spec)
        # the next bucket starts inside the last interval of this one
        # unless an interval starts exactly there
        first = end if end < len(iv.bounds) and iv.bounds[end] == (b + 1) << shift else end - 1
    return out


def pair_parts(c: Compiled) -> PairParts:
    assert c.src_iv is not None and c.dst_iv is not None
    sw = _every_of(c.src_iv, c.live)
    dw = _every_of(c.dst_iv, c.live)
    spec = c.live & ~sw & ~dw
    return PairParts(sw, dw, spec, _buckets_of(c.src_iv, spec), _buckets_of(c.dst_iv, spec))


def _every_of(iv: Intervals, live: int) -> int:
    """``_every`` of the address vectors, by one numpy AND over the rows
    when the table is a matrix."""
    import numpy as np

    tree = iv.tree
    if tree is not None:
        # a leaf's own entries are in its row only: in every row only
        # when there is one row
        every = np.bitwise_and.reduce(tree.internal[np.unique(tree.base)], axis=0)
        if len(tree.base) == 1:
            every = tree.rows()[0]
        return live & int.from_bytes(every.tobytes(), "little")
    if iv.rows is None:
        return _every(iv.vectors, live)
    return live & int.from_bytes(np.bitwise_and.reduce(iv.rows, axis=0).tobytes(), "little")


def _buckets_of(iv: Intervals, spec: int) -> list[int]:
    """``_buckets`` by numpy for a matrix table (``_tree_buckets`` for a
    tree). Vector ids are numbered in order of first appearance along the
    addresses, so the ids that first appear in a bucket's run of intervals
    are a range of rows, one reduceat segment each (the segments tile the
    rows: one pass, no gather); the ids seen before that come back in the
    run (a prefix around a bucket's more specific ones) are few, ORed in
    one by one."""
    import numpy as np

    if iv.rows is None and iv.tree is None:
        return _buckets(iv, spec)
    shift = 32 - PAIR_BITS
    nb = 1 << PAIR_BITS
    rows = iv.rows
    tree = iv.tree
    bounds = tree.bounds if tree is not None else np.asarray(iv.bounds, dtype=np.int64)
    index = tree.index if tree is not None else np.asarray(iv.index, dtype=np.int64)
    starts = np.arange(nb, dtype=np.int64) << shift
    # the interval holding the bucket's first address, and past the bucket's
    first = np.searchsorted(bounds, starts, side="right") - 1
    end = np.searchsorted(bounds, starts + (1 << shift), side="left")
    if tree is not None:
        return _tree_buckets(iv, first, end, index, spec)
    seen = np.maximum.accumulate(index) + 1   # ids seen up to interval i
    # the run's first interval (it may go on from the bucket before) is
    # among the "seen" ones below: the ranges [before, upto) of the buckets
    # then never overlap, and reduceat takes them as (start, end) pairs
    before = seen[first]
    upto = seen[end - 1]
    out = np.zeros((nb, rows.shape[1]), dtype=np.uint64)
    new = np.flatnonzero(upto > before)
    if len(new):
        cuts = np.stack((before[new], upto[new]), axis=1).reshape(-1)
        if cuts[-1] == rows.shape[0]:
            cuts = cuts[:-1]   # the last range runs to the end
        out[new] = np.bitwise_or.reduceat(rows, cuts, axis=0)[::2]
    # ids of the run seen before it: its first interval's and any an inner
    # prefix's end brings back
    bucket, ids = _run_ids(first, end, index)
    old = ids < before[bucket]
    if old.any():
        nvec = rows.shape[0]
        pairs = np.unique(bucket[old] * nvec + ids[old])
        b, x = pairs // nvec, pairs % nvec
        heads = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
        out[b[heads]] |= np.bitwise_or.reduceat(rows[x], heads, axis=0)
    out &= np.frombuffer(spec.to_bytes(rows.shape[1] * 8, "little"), "<u8")
    return [int.from_bytes(row.tobytes(), "little") for row in out]


def _run_ids(first: "Any", end: "Any", index: "Any") -> "tuple[Any, Any]":
    """(bucket, vector id) of every interval of every bucket's run."""
    import numpy as np

    counts = end - first
    bucket = np.repeat(np.arange(len(first), dtype=np.int64), counts)
    at = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts,
                                                                    counts)
    return bucket, index[np.repeat(first, counts) + at]


# up to this many internal rows, _tree_buckets ORs each into its buckets
# (one numpy step per row), else all at once by a reduceat
FEW_INTERNAL = 64


def _tree_buckets(iv: Intervals, first: "Any", end: "Any", index: "Any", spec: int
                  ) -> list[int]:
    """``_buckets`` from what the rows are made of (compiler.AddressTree):
    a bucket's rows are ORs of a few internal prefixes' rows and of their
    leaves' own bits, so it ORs those (distinct per bucket) and never
    reads the rows themselves. A leaf's row is in the buckets its prefix
    meets (its intervals are the whole prefix)."""
    import numpy as np

    from .compiler import scatter_bits

    tree = iv.tree
    assert tree is not None
    internal = tree.internal
    nb = len(first)
    out = np.zeros((nb, internal.shape[1]), dtype=np.uint64)
    # the internal rows in each bucket: a (bucket, internal row) table
    bucket, ids = _run_ids(first, end, index)
    present = np.zeros((nb, internal.shape[0]), dtype=bool)
    present[bucket, tree.base[ids]] = True
    if internal.shape[0] <= FEW_INTERNAL:
        for x in np.flatnonzero(present.any(axis=0)):
            out[present[:, x]] |= internal[x]
    else:
        b, x = np.nonzero(present)   # (by bucket)
        heads = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
        out[b[heads]] = np.bitwise_or.reduceat(internal[x], heads, axis=0)
    # the leaves' own entries, in every bucket their prefix meets
    if len(tree.leaf_entries):
        shift = 32 - PAIR_BITS
        lo = tree.leaf_first >> shift
        n = ((tree.leaf_past - 1) >> shift) - lo + 1
        at = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        scatter_bits(out, np.repeat(lo, n) + at, np.repeat(tree.leaf_entries, n))
    out &= np.frombuffer(spec.to_bytes(internal.shape[1] * 8, "little"), "<u8")
    return [int.from_bytes(row.tobytes(), "little") for row in out]


def _words(values: list[int], nwords: int):
    import numpy as np

    size = nwords * 8
    return np.frombuffer(b"".join([v.to_bytes(size, "little") for v in values]),
                         dtype="<u8").reshape(len(values), nwords)


# the last pair tables built, the newest first: (nwords, source buckets,
# destination buckets, the table). A rule appended (or deleted from the
# end) that leaves one address open changes no bucket: it and the policy
# entry it moves are in every vector of an address (SW or DW, not SPEC),
# and every SPEC entry keeps its index, so such -A / -D reuse the table;
# two are kept because a deletion often restores the rule set of two
# updates ago (-I 1 then -D: the table before the insert)
_pair_tables: "list[tuple[int, list[int], list[int], bytes]]" = []
PAIR_TABLES_KEPT = 2


def pair_table(parts: PairParts, nwords: int) -> bytes:
    """pair_map's memory image (``build_pair_table``), a kept one again
    when it was built from the same buckets (512 int comparisons each)."""
    for i, (words, src, dst, table) in enumerate(_pair_tables):
        if words == nwords and src == parts.src_buckets and dst == parts.dst_buckets:
            _pair_tables.insert(0, _pair_tables.pop(i))
            return table
    table = build_pair_table(parts, nwords)
    _pair_tables.insert(0, (nwords, list(parts.src_buckets), list(parts.dst_buckets), table))
    del _pair_tables[PAIR_TABLES_KEPT:]
    return table


def build_pair_table(parts: PairParts, nwords: int) -> bytes:
    """pair_map's memory image: at a << PAIR_BITS | b the summary of the
    source bucket a's SPEC entries ANDed with the destination bucket b's.
    Word by word: a word's 64 entries meet few buckets of either address
    (their own prefixes'), so only those pairs are tested (all 65,536
    pairs for each of 256 words took 20 ms at fw1-10k)."""
    import numpy as np

    nsum = summary_words(nwords)
    n = 1 << PAIR_BITS
    src = _words(parts.src_buckets, nwords)
    dst = _words(parts.dst_buckets, nwords)
    out = np.zeros((n * n, nsum), dtype="<u8")
    for j in np.flatnonzero(src.any(axis=0) & dst.any(axis=0)):
        rows = np.flatnonzero(src[:, j])
        cols = np.flatnonzero(dst[:, j])
        hit = (src[rows, j][:, None] & dst[cols, j][None, :]) != 0
        a, b = np.nonzero(hit)
        out[(rows[a] << PAIR_BITS) | cols[b], j >> 6] |= np.uint64(1 << (int(j) & 63))
    return out.tobytes()


# -- the source x ports summary (filter.c PORTS_PAIR) -----------------------

def ports_wild(c: Compiled) -> int:
    """PW: the live entries in every sport and every dport vector (the
    "no ports" and "offset-1 fragment" ones too: a packet may get those)."""
    return _every(c.dport, _every(c.sport, c.live))


def ports_pair_table(c: Compiled, shape: Shape, pw: int) -> bytes:
    """ports_pair_map's memory image: at sport key * (dport_bsize + 2) +
    dport key (the keys image.map_image gives the sport / dport vectors)
    the summary of sport & dport & ~PW & live; slots of no key stay zero
    (no packet reaches them). Numpy over all slot pairs: 25 x 79 vectors of
    256 words at fw1-10k."""
    import numpy as np

    nw = shape.nwords
    nsum = summary_words(nw)
    dn = shape.dport_bsize + 2

    def keyed(vectors: list[int], nbounds: int, bsize: int) -> "tuple[list[int], object]":
        keys = list(range(nbounds)) + [bsize, bsize + 1]
        values = vectors[:nbounds] + vectors[-2:]
        return keys, _words([v & c.live & ~pw for v in values], nw)

    skeys, s = keyed(c.sport, len(c.sport_bounds), shape.sport_bsize)
    dkeys, d = keyed(c.dport, len(c.dport_bounds), shape.dport_bsize)
    out = np.zeros(((shape.sport_bsize + 2) * dn, nsum), dtype="<u8")
    for i, sk in enumerate(skeys):
        nonzero = (s[i][None, :] & d) != 0                    # (dport keys, words)
        flags = np.packbits(nonzero, axis=1, bitorder="little")   # summary bytes
        rows = np.array(dkeys) + sk * dn
        out.view(np.uint8)[rows, :flags.shape[1]] = flags
    return out.tobytes()
