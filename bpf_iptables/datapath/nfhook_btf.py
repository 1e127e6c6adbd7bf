"""Struct offsets and kernel function ids from the running kernel's BTF.

A netfilter-hook program reads kernel structures (``sk_buff``,
``nf_hook_state``, ``nf_conn``) that no uapi header describes, and the
kernel headers bcc finds on this machine belong to another release: the
offsets have to come from the kernel itself. ``/sys/kernel/btf/vmlinux``
describes every type of the running kernel; this module parses it (the
format of Documentation/bpf/btf.rst: header, type section, string
section) and answers two questions: where a member lies
(``offset_of("sk_buff", "mark")``, looking through anonymous unions and
structs as C does) and which BTF id a kernel function has (a kfunc call
names its callee by that id). Parsing is ~0.3 s, once per process."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

# kinds (uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19
# bytes after the 12-byte common header: fixed, and per vlen item
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0),
          ENUM64: (0, 12)}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


@dataclass
class Member:
    name: str
    type: int
    bit_offset: int
    bit_size: int = 0     # a bitfield's width (0: not a bitfield)


@dataclass
class Type:
    kind: int
    name: str
    size_or_type: int       # size (int, struct, union, enum) or the referred type
    members: list[Member] = field(default_factory=list)
    array: tuple[int, int] = (0, 0)   # (element type, count)


class BTF:
    def __init__(self, data: bytes):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != MAGIC:
            raise ValueError("not BTF")
        strings = data[hdr_len + str_off:hdr_len + str_off + str_len]

        def name(off: int) -> str:
            return strings[off:strings.index(b"\0", off)].decode()

        self.types: list[Type] = [Type(0, "void", 0)]   # id 0 is void
        self.by_name: dict[tuple[int, str], int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += 12
            t = Type(kind, name(name_off) if name_off else "", size_or_type)
            if kind in (STRUCT, UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    # kind_flag: the offset's top 8 bits are a bitfield's size
                    t.members.append(Member(name(m_name) if m_name else "", m_type,
                                            m_off & 0xFFFFFF if kflag else m_off,
                                            m_off >> 24 if kflag else 0))
            elif kind == ARRAY:
                elem, _index, count = struct.unpack_from("<III", data, pos)
                t.array = (elem, count)
            fixed, per = _EXTRA.get(kind, (0, 0))
            pos += fixed + per * vlen
            if t.name:
                self.by_name.setdefault((kind, t.name), len(self.types))
            self.types.append(t)

    def id_of(self, kind: int, name: str) -> int:
        try:
            return self.by_name[(kind, name)]
        except KeyError:
            raise LookupError(f"BTF has no {name!r} of kind {kind}") from None

    def resolve(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type itself."""
        while self.types[tid].kind in _MODIFIERS:
            tid = self.types[tid].size_or_type
        return tid

    def size_of(self, tid: int) -> int:
        t = self.types[self.resolve(tid)]
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return t.array[1] * self.size_of(t.array[0])
        return t.size_or_type

    def _find(self, tid: int, member: str) -> tuple[int, int, int] | None:
        """(bit offset, type, bitfield width) of ``member`` in struct/union
        ``tid``, looking into anonymous members."""
        for m in self.types[self.resolve(tid)].members:
            if m.name == member:
                return m.bit_offset, m.type, m.bit_size
            if not m.name and self.types[self.resolve(m.type)].kind in (STRUCT, UNION):
                inner = self._find(m.type, member)
                if inner is not None:
                    return m.bit_offset + inner[0], inner[1], inner[2]
        return None

    def _walk(self, struct_name: str, path: str) -> tuple[int, int, int]:
        """(bit offset, type, bitfield width) of ``path`` ("a.b",
        "tuplehash[1].tuple") in ``struct <struct_name>``."""
        tid, bits, width = self.id_of(STRUCT, struct_name), 0, 0
        for part in path.split("."):
            part, _, index = part.partition("[")
            found = self._find(tid, part)
            if found is None:
                raise LookupError(f"struct {struct_name} has no {path!r}")
            bits, tid, width = bits + found[0], found[1], found[2]
            if index:
                arr = self.types[self.resolve(tid)]
                tid = arr.array[0]
                bits += 8 * int(index.rstrip("]")) * self.size_of(tid)
        return bits, tid, width

    def member(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, size) of a member that is not a bitfield."""
        bits, tid, width = self._walk(struct_name, path)
        if width or bits % 8:
            raise LookupError(f"{struct_name}.{path} is a bitfield")
        return bits // 8, self.size_of(tid)

    def bitfield(self, struct_name: str, path: str) -> tuple[int, int, int]:
        """(byte offset, shift, width) of a bitfield (``sk_buff.pkt_type``):
        the value is ``(byte at offset >> shift) & ((1 << width) - 1)`` for
        a field within one byte (little-endian bit numbering, as BTF's
        offsets are on x86)."""
        bits, _tid, width = self._walk(struct_name, path)
        if not width:
            raise LookupError(f"{struct_name}.{path} is not a bitfield")
        if bits // 8 != (bits + width - 1) // 8:
            raise LookupError(f"{struct_name}.{path} spans two bytes")
        return bits // 8, bits % 8, width

    def offset_of(self, struct_name: str, path: str) -> int:
        return self.member(struct_name, path)[0]

    def func_id(self, name: str) -> int:
        """The BTF id of kernel function ``name`` (a kfunc call's imm)."""
        return self.id_of(FUNC, name)


@lru_cache(maxsize=1)
def vmlinux() -> BTF:
    return BTF(VMLINUX.read_bytes())
