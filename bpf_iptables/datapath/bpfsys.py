"""The bpf(2) commands a later process needs, through ctypes.

Reading counters of an attached program (``-L -v``, ``-S -v``, save -c)
and rewriting the maps of a pinned program (an update that needs no new
program shape) must not import bcc (its import alone costs more than a
listing): pinned objects are opened with BPF_OBJ_GET, maps read and
written element by element or in batches (BPF_MAP_*_BATCH: one syscall
for thousands of elements), and root programs attached with bpf links
(BPF_LINK_CREATE: XDP, and TCX at TC ingress/egress)."""
from __future__ import annotations

import ctypes
import mmap
from array import array
import errno
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import counts

SYS_BPF = 321  # x86_64
BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
BPF_OBJ_PIN, BPF_OBJ_GET = 6, 7
BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 15, 16
BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH = 24, 26, 27
BPF_LINK_CREATE, BPF_LINK_DETACH = 28, 34
# attach types (uapi enum bpf_attach_type)
BPF_XDP, BPF_TCX_INGRESS, BPF_TCX_EGRESS = 37, 46, 47

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("_pad", ctypes.c_uint64 * 4)]


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad0", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("_pad", ctypes.c_uint64 * 4)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64), ("_pad", ctypes.c_uint64 * 4)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("_pad", ctypes.c_uint64 * 4)]


class _LinkAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("_pad", ctypes.c_uint64 * 6)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("_pad0", ctypes.c_uint32),
                ("_pad", ctypes.c_uint64 * 6)]


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    rc = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16),
                ("_pad", ctypes.c_uint64 * 12)]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("_pad", ctypes.c_uint64 * 12)]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int, name: str) -> int:
    """A new map (its fd). No BTF: the data path's maps are plain arrays,
    hashes and prog arrays, which the kernel creates without type info."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=flags,
                          map_name=name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, attr, f"create map {name}")


def prog_load(prog_type: int, insns: bytes, license: str, name: str,
              expected_attach_type: int = 0, log_size: int = 0) -> int:
    """BPF_PROG_LOAD of ready instructions (map fds already patched in);
    the verifier runs as for any load. With ``log_size``, a failure's
    OSError carries the verifier's log (``.verifier_log``)."""
    return prog_load_logged(prog_type, insns, license, name, expected_attach_type,
                            log_size, 1)[0]


def prog_load_logged(prog_type: int, insns: bytes, license: str, name: str,
                     expected_attach_type: int = 0, log_size: int = 0, log_level: int = 1
                     ) -> tuple[int, str]:
    """prog_load, also answering the verifier's log at ``log_level`` (4:
    the statistics only) when ``log_size`` is given."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                         log_level=log_level if log else 0, log_size=log_size,
                         log_buf=ctypes.addressof(log) if log else 0,
                         prog_name=name.encode()[:15],
                         expected_attach_type=expected_attach_type)
    try:
        fd = _bpf(BPF_PROG_LOAD, attr, f"load program {name}")
    except OSError as exc:
        exc.verifier_log = log.value.decode(errors="replace") if log else ""  # type: ignore[attr-defined]
        raise
    return fd, log.value.decode(errors="replace") if log else ""


@dataclass
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    id: int = 0


def map_info(fd: int) -> MapInfo:
    """struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags."""
    info = _info(fd)
    return MapInfo(info[0], info[2], info[3], info[4], info[5], info[1])


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr, f"pin {path}")


def obj_get(path: str) -> int:
    """A new file descriptor for the object pinned at ``path``."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name))
    return _bpf(BPF_OBJ_GET, attr, f"open {path}")


def _info(fd: int) -> "ctypes.Array[ctypes.c_uint32]":
    info = (ctypes.c_uint32 * 64)()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "object info")
    return info


def obj_id(fd: int) -> int:
    """The id of a program or map (both info structs start with type, id)."""
    return _info(fd)[1]


def pinned_id(path: str) -> int:
    """The id of the object pinned at ``path`` (0: nothing there)."""
    try:
        fd = obj_get(path)
    except OSError:
        return 0
    try:
        return obj_id(fd)
    finally:
        os.close(fd)


# -- links -------------------------------------------------------------------------

def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    """Attach a program to an interface through a bpf link (a new fd).
    XDP: ``flags`` are XDP_FLAGS_*_MODE; a device that already has an XDP
    program refuses (EBUSY): somebody else's program is never replaced."""
    attr = _LinkAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type,
                     flags=flags)
    return _bpf(BPF_LINK_CREATE, attr, "attach")


@dataclass
class LinkInfo:
    prog_id: int
    ifindex: int       # 0: the device is gone (the link is defunct)
    attach_type: int


def link_info(fd: int) -> LinkInfo:
    """struct bpf_link_info: type, id, prog_id, then the union (xdp: ifindex;
    tcx: ifindex, attach_type)."""
    info = _info(fd)
    return LinkInfo(prog_id=info[2], ifindex=info[4], attach_type=info[5])


class _QueryAttr(ctypes.Structure):
    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
                ("_pad0", ctypes.c_uint32), ("_pad", ctypes.c_uint64 * 6)]


def attached_count(ifindex: int, attach_type: int) -> int:
    """How many programs a device of this namespace has at a TCX hook
    (``tc filter show`` does not list TCX links)."""
    attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type)
    _bpf(BPF_PROG_QUERY, attr, "query")
    return attr.prog_cnt


def link_detach(fd: int) -> None:
    """Detach a link's program now, pins or not (BPF_LINK_DETACH)."""
    _bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=fd), "detach")


# -- map elements ------------------------------------------------------------------

def map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    _bpf(BPF_MAP_UPDATE_ELEM, attr, "map update")


def map_delete(fd: int, key: bytes) -> bool:
    k = ctypes.create_string_buffer(key, len(key))
    attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(k))
    rc = _libc.syscall(SYS_BPF, BPF_MAP_DELETE_ELEM, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise OSError(err, f"map delete: {os.strerror(err)}")
    return True


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = _ElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    rc = _libc.syscall(SYS_BPF, BPF_MAP_LOOKUP_ELEM, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        raise OSError(err, f"map lookup: {os.strerror(err)}")
    return v.raw


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash or LPM map (BPF_MAP_GET_NEXT_KEY from no key)."""
    keys: list[bytes] = []
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    attr = _ElemAttr(map_fd=fd, key=0, value=ctypes.addressof(nxt))
    while True:
        rc = _libc.syscall(SYS_BPF, BPF_MAP_GET_NEXT_KEY, ctypes.byref(attr), ctypes.sizeof(attr))
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return keys
            raise OSError(err, f"map keys: {os.strerror(err)}")
        keys.append(nxt.raw)
        ctypes.memmove(cur, nxt, key_size)
        attr.key = ctypes.addressof(cur)


_batch_ok: dict[int, bool] = {}


BPF_F_MMAPABLE = 1 << 10
BPF_MAP_TYPE_ARRAY = 2
_PROT_RW, _MAP_SHARED = 0x1 | 0x2, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_DONTFORK = 10
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.memmove.restype = ctypes.c_void_p
_libc.memmove.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
# a dense write compares and copies in pieces of this many bytes: a piece
# that already holds the new bytes is left alone (memcmp stops at the first
# difference, so a piece that differs costs little more than its copy)
PIECE = 64 << 10
# a write of some columns only (Mapping.write_matrix) first checks every
# this many-th row whole (0: no check; the tests check the columns alone)
SAMPLE_ROWS = 61
# ... and only where the columns are at most 1/STRIDED of the row (a strided
# copy costs ~4x a contiguous one per byte; 0: always, for the tests)
STRIDED = 4


@dataclass
class Mapping:
    """An array map's values as shared memory (BPF_F_MMAPABLE): what the
    program reads is this memory, so a write is a copy into it, and what
    it holds is known by reading it (no record of earlier writes needed).
    The kernel lays element i at ``i * stride``, the value size rounded up
    to 8 bytes (its padding stays zero). The mapping holds the map alive
    until ``close()``, whatever descriptors or pins it has."""

    address: int
    length: int         # bytes mapped
    value_size: int
    stride: int
    max_entries: int

    def close(self) -> None:
        if self.address:
            _libc.munmap(self.address, self.length)
            self.address = 0

    def laid_out(self, values: bytes) -> bytes:
        """Values of keys 0..n-1 (``value_size`` each, back to back) as they
        lie in the map's memory (each padded to ``stride``)."""
        size, stride = self.value_size, self.stride
        if size == stride:
            return values
        np = sys.modules.get("numpy")   # where imported already: ~20x faster
        if size == 4 and np is None:
            return array("Q", array("I", values)).tobytes()
        if np is None:
            import numpy as np
        if size == 4:
            return np.frombuffer(values, np.uint32).astype(np.uint64).tobytes()
        rows = np.zeros((len(values) // size, stride), np.uint8)
        rows[:, :size] = np.frombuffer(values, np.uint8).reshape(-1, size)
        return rows.tobytes()

    def write_dense(self, values: bytes, first: int = 0) -> int:
        """Keys first..first+n-1 set to ``values``; the others keep what
        they hold. Returns how many elements lay in pieces that differed
        (copied)."""
        np = sys.modules.get("numpy")
        if self.value_size == 4 and np is not None:
            return self._write_u32(np, values, first)
        blob = self.laid_out(values)
        if first * self.stride + len(blob) > self.stride * self.max_entries:
            raise OSError(errno.E2BIG, "map write: more values than the map has elements")
        if not isinstance(blob, bytes):
            blob = bytes(blob)   # (the image's values are bytes: no copy then)
        return self._write_span(_address(blob), len(blob), first)

    def _write_span(self, src: int, total: int, first: int) -> int:
        """``total`` bytes at address ``src`` (laid out as the map's memory)
        into keys from ``first``: only the pieces that differ copied."""
        dst = self.address + first * self.stride
        cmp, move = _libc.memcmp, _libc.memmove
        copied = 0
        start = -1   # the first piece of the run of differing pieces at hand
        for at in range(0, total, PIECE):
            if cmp(dst + at, src + at, min(PIECE, total - at)):
                if start < 0:
                    start = at
            elif start >= 0:
                move(dst + start, src + start, at - start)
                copied += at - start
                start = -1
        if start >= 0:
            # one copy per run: a long one (every row of an address table
            # changes with an update) goes by non-temporal stores, ~1.5x
            # faster than piece by piece
            move(dst + start, src + start, total - start)
            copied += total - start
        return -(-copied // self.stride)

    def write_matrix(self, matrix, columns: "tuple[tuple[int, int], ...] | None" = None
                     ) -> int:
        """Keys 0..n-1 set to the rows of a C-contiguous uint64 ``matrix``
        (no bytes copy of it first). With ``columns`` (word ranges), the map
        is known to hold the rows but for those words: only they are
        copied (strided; an -A changes a word or two per row), after a
        sample of whole rows was found to agree. Returns how many rows
        lay in pieces that differed (all of them for a column copy).""" 
        import numpy as np

        n, width = matrix.shape
        if width * 8 != self.value_size or self.stride != self.value_size:
            raise OSError(errno.EINVAL, "map write: values of another size than the map's")
        if n > self.max_entries:
            raise OSError(errno.E2BIG, "map write: more values than the map has elements")
        if not matrix.flags.c_contiguous or matrix.dtype != np.uint64:
            matrix = np.ascontiguousarray(matrix, dtype=np.uint64)
        # a strided copy costs ~4x a contiguous one per byte (and a memcmp
        # of unchanged pieces less still): many columns go the whole way
        if columns is None or STRIDED * sum(hi - lo for lo, hi in columns) > width:
            return self._write_span(matrix.ctypes.data, n * self.value_size, 0)
        held = np.ctypeslib.as_array(
            (ctypes.c_uint64 * (n * width)).from_address(self.address)).reshape(n, width)
        # a sample of whole rows must agree but for those columns, else the
        # map is not what the caller thinks (written another way): in full
        if SAMPLE_ROWS:
            sample_new, sample_held = matrix[::SAMPLE_ROWS].copy(), held[::SAMPLE_ROWS].copy()
            for lo, hi in columns:
                sample_new[:, lo:hi] = sample_held[:, lo:hi]
            if not np.array_equal(sample_new, sample_held):
                return self._write_span(matrix.ctypes.data, n * self.value_size, 0)
        for lo, hi in columns:
            if lo < hi:
                # (copied, not compared first: a compare costs as much)
                np.copyto(held[:, lo:hi], matrix[:, lo:hi])
        return n

    def _write_u32(self, np, values: bytes, first: int) -> int:
        """u32 values into their 8-byte slots by one strided numpy copy (a
        65,536-slot table: no widened 512 KiB copy of the image first)."""
        new = np.frombuffer(values, np.uint32)
        if first + len(new) > self.max_entries:
            raise OSError(errno.E2BIG, "map write: more values than the map has elements")
        slots = np.ctypeslib.as_array(
            (ctypes.c_uint32 * (2 * self.max_entries)).from_address(self.address))
        held = slots[2 * first:2 * (first + len(new)):2]
        differ = int(np.count_nonzero(held != new))
        if differ:
            np.copyto(held, new)
        return differ

    def write_items(self, items) -> int:
        """(u32 key, value) pairs, or an image.Packed of any keys: each run
        of consecutive keys is written as one block (sport_map's intervals,
        then its two slots at the end). Returns how many elements were
        in pieces that differed."""
        if hasattr(items, "joined"):
            keys, values = items.joined()
            size = self.value_size
            if len(values) != len(keys) * size // 4:
                raise OSError(errno.EINVAL, "map write: values of another size than the map's")
            ks = array("I", keys)
            written, start = 0, 0
            for i in range(1, len(ks) + 1):
                if i == len(ks) or ks[i] != ks[i - 1] + 1:
                    written += self.write_dense(values[start * size:i * size], ks[start])
                    start = i
            return written
        written = 0
        for key, value in items:
            k = int.from_bytes(key, "little")
            if k >= self.max_entries or len(value) != self.value_size:
                raise OSError(errno.E2BIG if k >= self.max_entries else errno.EINVAL,
                              "map write: key or value out of the map's bounds")
            written += self.write_dense(bytes(value), k)
        return written

    def read(self, key: int) -> bytes:
        """The value at ``key`` (what a lookup would return)."""
        return ctypes.string_at(self.address + key * self.stride, self.value_size)


def map_mmap(fd: int, info: "MapInfo | None" = None) -> Mapping | None:
    """A shared mapping of an array map created BPF_F_MMAPABLE (None for
    any other map). It stays valid after ``fd`` is closed."""
    info = info or map_info(fd)
    if info.type != BPF_MAP_TYPE_ARRAY or not info.flags & BPF_F_MMAPABLE:
        return None
    stride = (info.value_size + 7) & ~7
    length = -(-stride * info.max_entries // mmap.PAGESIZE) * mmap.PAGESIZE
    address = _libc.mmap(None, length, _PROT_RW, _MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"map mmap: {os.strerror(err)}")
    # not into forked children (the server's prestore child): the kernel
    # would copy every page table entry of the mapping at fork
    _libc.madvise(address, length, _MADV_DONTFORK)
    return Mapping(address, length, info.value_size, stride, info.max_entries)


def write_mappable(fd: int, values: bytes) -> bool:
    """Write an array map's values from index 0 through a shared mapping
    (one copy, where a batch update costs a syscall's work per element);
    False when the map was not created BPF_F_MMAPABLE."""
    m = map_mmap(fd)
    if m is None:
        return False
    try:
        m.write_dense(values)
    finally:
        m.close()
    return True


def _address(blob: bytes) -> int:
    """The address of a bytes object's own buffer (no copy: the kernel only
    reads it during the call, while the caller holds the object)."""
    return ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0


def map_update_packed(fd: int, key_size: int, value_size: int, keys: bytes,
                      values: bytes) -> bool:
    """One BPF_MAP_UPDATE_BATCH of keys and values laid out back to back;
    False when the map type has no batch update (LPM tries), so that the
    caller writes element by element."""
    count = len(keys) // key_size
    if not count:
        return True
    if len(values) != count * value_size:
        raise ValueError("map update: keys and values differ in count")
    mtype = _info(fd)[0]
    if not _batch_ok.get(mtype, True):
        return False
    attr = _BatchAttr(keys=_address(keys), values=_address(values), count=count, map_fd=fd)
    rc = _libc.syscall(SYS_BPF, BPF_MAP_UPDATE_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc >= 0:
        return True
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):  # 524: ENOTSUPP
        raise OSError(err, f"map update: {os.strerror(err)}")
    _batch_ok[mtype] = False
    return False


def map_update_many(fd: int, items: list[tuple[bytes, bytes]]) -> None:
    """Write many elements: one BPF_MAP_UPDATE_BATCH where the map type
    has it (arrays, hashes), element by element otherwise (LPM tries)."""
    if not items:
        return
    # image.Packed of an array from index 0: one copy into a mappable map
    if hasattr(items, "joined") and getattr(items, "dense", False) \
            and write_mappable(fd, items.joined()[1]):
        return
    key_size, value_size = len(items[0][0]), len(items[0][1])
    # items laid out already (image.Packed) or pairs
    key_blob, value_blob = (items.joined() if hasattr(items, "joined") else
                            (b"".join(k for k, _ in items), b"".join(v for _, v in items)))
    if map_update_packed(fd, key_size, value_size, key_blob, value_blob):
        return
    # no batches for this map type; a batch that failed part way wrote
    # some elements: all are rewritten
    for key, value in items:
        map_update(fd, key, value)


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count



@lru_cache(maxsize=4)
def _slot_keys(nslots: int) -> bytes:
    return array("I", range(nslots)).tobytes()


def read_counters(map_fd: int, nslots: int) -> list[tuple[int, int]]:
    """(packets, bytes) of slots 0..nslots-1 of a per-CPU counter array,
    summed over CPUs."""
    flat = read_counters_flat(map_fd, nslots)
    it = iter(flat)
    return list(zip(it, it))


def read_counters_flat(map_fd: int, nslots: int) -> "counts.Flat":
    """Slots 0..nslots-1 of a per-CPU counter array summed over CPUs, as
    counts.Flat: one BPF_MAP_LOOKUP_BATCH (arrays have it)."""
    from . import counts

    if nslots <= 0:
        return counts.zeros(0)
    ncpu = possible_cpus()
    keys = bytearray(4 * nslots)
    values = bytearray(16 * ncpu * nslots)
    out_batch = ctypes.c_uint32()
    key_buf = (ctypes.c_char * len(keys)).from_buffer(keys)
    value_buf = (ctypes.c_char * len(values)).from_buffer(values)
    attr = _BatchAttr(in_batch=0, out_batch=ctypes.addressof(out_batch),
                      keys=ctypes.addressof(key_buf), values=ctypes.addressof(value_buf),
                      count=nslots, map_fd=map_fd)
    rc = _libc.syscall(SYS_BPF, BPF_MAP_LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
    del key_buf, value_buf   # (the bytearrays cannot be read while exported)
    if rc < 0 and ctypes.get_errno() != errno.ENOENT:  # ENOENT: the map ended first
        err = ctypes.get_errno()
        raise OSError(err, f"read counters: {os.strerror(err)}")
    if attr.count != nslots:
        raise OSError(errno.EIO, f"read counters: {attr.count} of {nslots} slots")
    return counts.summed(values, nslots, ncpu)


def write_counters_flat(map_fd: int, flat: "counts.Flat", sparse: bool = False) -> None:
    """Slots 0..len(flat)/2-1 set to ``flat``'s values (CPU 0's share, the
    others zero): one batch update. ``sparse``: the map holds zeros (every
    CPU's share), only the slots with a count are written."""
    from . import counts

    nslots = len(flat) // 2
    keys = _slot_keys(nslots)
    if sparse:
        slots = counts.nonzero_slots(flat)
        flat, nslots, keys = counts.select(flat, slots), len(slots), array("I", slots).tobytes()
    if not nslots:
        return
    ncpu = possible_cpus()
    blob = counts.per_cpu(flat, ncpu)
    if not map_update_packed(map_fd, 4, 16 * ncpu, keys, blob):
        size = 16 * ncpu
        map_update_many(map_fd, [(keys[4 * i:4 * i + 4], blob[i * size:(i + 1) * size])
                                 for i in range(nslots)])


def zero_counters(map_fd: int) -> None:
    """Every slot of a per-CPU counter array zeroed, on every CPU."""
    from . import counts

    write_counters_flat(map_fd, counts.zeros(_info(map_fd)[4]))
