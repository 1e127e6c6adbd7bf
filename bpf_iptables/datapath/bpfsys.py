"""The few bpf(2) commands a later process needs, through ctypes.

Reading counters of an attached program (``-L -v``, ``-S -v``, save -c)
must not import bcc (its import alone costs more than a listing): pinned
objects are opened with BPF_OBJ_GET and per-CPU values read with
BPF_MAP_LOOKUP_ELEM directly."""
from __future__ import annotations

import ctypes
import os
from functools import lru_cache

SYS_BPF = 321  # x86_64
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM = 1, 2
BPF_OBJ_PIN, BPF_OBJ_GET = 6, 7
BPF_OBJ_GET_INFO_BY_FD = 15

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


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    rc = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr, f"pin {path}")


def obj_get(path: str) -> int:
    """A new file descriptor for the object pinned at ``path``."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=ctypes.addressof(name))
    return _bpf(BPF_OBJ_GET, attr, f"open {path}")


def obj_id(fd: int) -> int:
    """The id of a program or map (both info structs start with type, id)."""
    info = (ctypes.c_uint32 * 64)()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "object info")
    return info[1]


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


# struct counter { u64 packets; u64 bytes; } per CPU
_COUNTER = ctypes.c_uint64 * 2


def read_counters(map_fd: int, nslots: int) -> list[tuple[int, int]]:
    """(packets, bytes) of every slot of a per-CPU counter array, summed over CPUs."""
    ncpu = possible_cpus()
    value = (_COUNTER * ncpu)()
    key = ctypes.c_uint32()
    attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    out = []
    for slot in range(nslots):
        key.value = slot
        _bpf(BPF_MAP_LOOKUP_ELEM, attr, "read counters")
        out.append((sum(v[0] for v in value), sum(v[1] for v in value)))
    return out


def write_counters(map_fd: int, values: dict[int, tuple[int, int]]) -> None:
    """Set slots to (packets, bytes), held in CPU 0's share, the others zero."""
    ncpu = possible_cpus()
    key = ctypes.c_uint32()
    for slot, (packets, nbytes) in values.items():
        value = (_COUNTER * ncpu)()
        value[0][0], value[0][1] = packets, nbytes
        key.value = slot
        attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(key),
                         value=ctypes.addressof(value))
        _bpf(BPF_MAP_UPDATE_ELEM, attr, "write counters")
