"""Counter values of a program's slots as one flat array, and the few
operations an update and a listing do on them.

Why: a counter read at 10k rules used to become 10k (packets, bytes)
tuples, summed and compared tuple by tuple in Python (~2 ms per read,
~4 per update on top of the bpf(2) calls). Here slot ``i``'s packets
and bytes are items ``2i`` and ``2i+1`` of an ``array('Q')``: comparing
two reads is one C loop, and where numpy is imported already (the
command server) sums and differences are vector operations. A fresh
process (a listing run in-process) never imports numpy for this: the
array module does the same, a little slower."""
from __future__ import annotations

import operator
import sys
from array import array
from typing import Iterator

Flat = array   # 'Q': packets of slot i at 2i, bytes at 2i + 1


def zeros(nslots: int) -> Flat:
    return array("Q", bytes(16 * nslots))


def _np():
    return sys.modules.get("numpy")


def add(a: Flat, b: Flat) -> Flat:
    """Slot-wise sum of two reads of the same length (a new array)."""
    np = _np()
    if np is not None:
        out = array("Q")
        out.frombytes((np.frombuffer(a, np.uint64) + np.frombuffer(b, np.uint64)).tobytes())
        return out
    return array("Q", map(operator.add, a, b))


def total(rows: list[Flat]) -> Flat:
    """Slot-wise sum of reads (the hooks' programs), over the longest."""
    if len(rows) == 1:
        return rows[0]
    n = max((len(r) for r in rows), default=0)
    out = zeros(n // 2)
    for r in rows:
        if len(r) == n:
            out = add(out, r)
        else:
            out = add(out, r + zeros((n - len(r)) // 2))
    return out


def changed(now: Flat, was: Flat) -> list[int]:
    """The slots whose values differ between two reads (``was`` may be
    shorter: slots past it count as changed when not zero)."""
    if now == was:
        return []   # the usual case: one comparison in C
    common = min(len(now), len(was))
    np = _np()
    if np is not None:
        a = np.frombuffer(now, np.uint64)
        diff = a[:common] != np.frombuffer(was, np.uint64)[:common]
        slots = set((np.nonzero(diff)[0] // 2).tolist())
        slots.update((np.nonzero(a[common:])[0] // 2 + common // 2).tolist())
        return sorted(slots)
    out = {i // 2 for i in range(common) if now[i] != was[i]}
    out.update(i // 2 for i in range(common, len(now)) if now[i])
    return sorted(out)


def get(flat: Flat, slot: int) -> tuple[int, int]:
    return flat[2 * slot], flat[2 * slot + 1]


def pairs(flat: Flat, first: int, count: int) -> Iterator[tuple[int, int]]:
    """(packets, bytes) of slots first..first+count-1 (fewer past the end)."""
    it = iter(flat[2 * first:2 * (first + count)])
    return zip(it, it)


def per_cpu(flat: Flat, ncpu: int) -> bytes:
    """Per-CPU array values back to back for a batch update: each slot's
    (packets, bytes) in CPU 0's share, the other CPUs' zero."""
    nslots = len(flat) // 2
    if ncpu == 1:
        return flat.tobytes()
    np = _np()
    if np is not None:
        out = np.zeros((nslots, ncpu, 2), np.uint64)
        out[:, 0, :] = np.frombuffer(flat, np.uint64).reshape(nslots, 2)
        return out.tobytes()
    out = zeros(nslots * ncpu)
    stride = 2 * ncpu
    out[0::stride] = flat[0::2]
    out[1::stride] = flat[1::2]
    return out.tobytes()


def summed(values: bytes | bytearray, nslots: int, ncpu: int) -> Flat:
    """A per-CPU batch read (slot by slot, CPU by CPU, (packets, bytes))
    summed over the CPUs."""
    np = _np()
    out = array("Q")
    if ncpu == 1:
        out.frombytes(bytes(values[:16 * nslots]))
        return out
    if np is not None:
        # CPU by CPU into the first one's columns: ~5x quicker than
        # sum(axis=1) over an axis of 2 to 8 values
        v = np.frombuffer(values, np.uint64, count=2 * ncpu * nslots).reshape(nslots, 2 * ncpu)
        acc = v[:, 0:2].copy()
        for c in range(1, ncpu):
            acc += v[:, 2 * c:2 * c + 2]
        out.frombytes(acc.tobytes())
        return out
    flat = memoryview(values).cast("Q")
    step = 2 * ncpu
    packets = flat[0:2 * ncpu * nslots:step].tolist()
    nbytes = flat[1:2 * ncpu * nslots:step].tolist()
    for c in range(1, ncpu):
        packets = list(map(operator.add, packets, flat[2 * c::step].tolist()))
        nbytes = list(map(operator.add, nbytes, flat[2 * c + 1::step].tolist()))
    out = zeros(nslots)
    out[0::2] = array("Q", packets)
    out[1::2] = array("Q", nbytes)
    return out


def sub(now: Flat, was: Flat) -> Flat:
    """Slot-wise ``now - was`` over the slots both have (counters only
    grow between two reads of one generation)."""
    n = min(len(now), len(was))
    np = _np()
    if np is not None:
        out = array("Q")
        out.frombytes((np.frombuffer(now, np.uint64, count=n)
                       - np.frombuffer(was, np.uint64, count=n)).tobytes())
        return out
    return array("Q", map(operator.sub, now[:n], was[:n]))



def nonzero_slots(flat: Flat) -> list[int]:
    """The slots with a packet or byte counted."""
    np = _np()
    if np is not None:
        return np.nonzero(np.frombuffer(flat, np.uint64).reshape(-1, 2).any(axis=1))[0].tolist()
    return [i for i in range(len(flat) // 2) if flat[2 * i] or flat[2 * i + 1]]


def select(flat: Flat, slots: list[int]) -> Flat:
    """The values of ``slots``, in that order."""
    out = array("Q")
    for i in slots:
        out.append(flat[2 * i])
        out.append(flat[2 * i + 1])
    return out


def with_first(flat: Flat, head: Flat) -> Flat:
    """A copy of ``flat`` whose first slots are ``head``'s."""
    out = flat[:]
    out[:len(head)] = head
    return out
