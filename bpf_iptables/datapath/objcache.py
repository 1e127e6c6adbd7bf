"""Compiled eBPF modules kept on disk, loaded later without bcc or clang.

bcc compiles a C source (clang, ~1.5 s for the classifier), creates its
maps and patches their file descriptors into the instructions. What the
kernel needs to load the same program again is small: per map its type,
key/value size, max_entries and flags; per function its instructions and
which ``ld_imm64`` instructions refer to which map. ``capture()`` reads
that from a bcc module after a successful load; ``load()`` creates the
maps and loads the functions by raw bpf(2) (``bpfsys``), patching the new
map fds in. The verifier checks the program at every load as usual.

Entries are content-addressed: the key hashes the sources (the C file and
every header under ``lib/``), the -D flags, the functions and their
program types, the kernel (release and build: bcc compiles against its
headers), bcc's version and which loops ``lib/loop.h`` compiles (may_goto
or bounded, ``maygoto.py``), so an edit to any of them is a different key
(a miss), never a stale hit. An entry carries its key and a SHA-256 of
its body; anything that does not check out (truncated, edited, another
format, instructions that do not fit their relocations) is treated as a
miss: the caller compiles again and the entry is rewritten.

Where: ``/var/cache/bpf-iptables/objects`` (``BPF_IPTABLES_OBJCACHE_DIR``
overrides, tests use a temporary one; ``off`` disables the cache). Not
under /run: the entries stay valid across reboots (the key names the
kernel and bcc), so the first restore after a boot hits too; entries are
small (the 10k-rule classifier: ~100 KiB)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path

from . import bpfsys, maygoto

FORMAT = 1
MAGIC = b"bpf-iptables-objcache %d\n" % FORMAT
DEFAULT_DIR = Path("/var/cache/bpf-iptables/objects")
# entries kept (the least recently used go first): ~10 KiB each, and a
# machine's rule sets use a handful of shapes
MAX_ENTRIES = 256

# instruction encoding (uapi/linux/bpf.h)
LD_IMM64 = 0x18
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2
CALL = 0x85
PSEUDO_CALL = 1


class Uncacheable(Exception):
    """The module uses something the raw loader cannot reproduce (BTF ids,
    kernel functions, maps created outside the module)."""


@dataclass
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass
class FuncDef:
    name: str
    prog_type: int
    insns: bytes
    # (instruction index, map index) of every ld_imm64 naming a map
    relocs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Module:
    license: str
    maps: list[MapDef]
    funcs: dict[str, FuncDef]
    meta: dict = field(default_factory=dict)   # the caller's (e.g. the steps that verified)


# -- where and under which key ----------------------------------------------------------

def cache_dir() -> Path | None:
    env = os.environ.get("BPF_IPTABLES_OBJCACHE_DIR")
    if env == "off":
        return None
    return Path(env) if env else DEFAULT_DIR


def bcc_version() -> str:
    """bcc's version without importing bcc (its import costs ~100 ms)."""
    spec = find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    for where in spec.submodule_search_locations:
        path = Path(where) / "version.py"
        if path.is_file():
            return path.read_text().strip()
    return "unknown"


def key(source: Path, cflags: list[str], funcs: dict[str, int]) -> str:
    """The cache key of ``source`` compiled with ``cflags`` (include paths
    left out: the files they name are hashed instead) for ``funcs``
    (function name -> program type)."""
    sources = {p.relative_to(source.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in [source, *sorted(source.parent.glob("lib/*.h"))]}
    uname = os.uname()
    what = {"format": FORMAT, "sources": sources,
            "cflags": [f for f in cflags if not f.startswith("-I")],
            "funcs": sorted(funcs.items()), "kernel": [uname.release, uname.version],
            "bcc": bcc_version(),
            # which loops lib/loop.h compiles (maygoto.py): also in the
            # classifier's -D flags; here for every source that includes it
            "may_goto": maygoto.available()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# -- capture from bcc ---------------------------------------------------------------------

def _insns(raw: bytes) -> list[tuple[int, int, int]]:
    """(opcode, src_reg, imm) of each 8-byte instruction."""
    return [(raw[i], raw[i + 1] >> 4, int.from_bytes(raw[i + 4:i + 8], "little", signed=True))
            for i in range(0, len(raw), 8)]


def relocations(raw: bytes, fd_index: dict[int, int]) -> list[tuple[int, int]]:
    """Which instructions load a map (by fd, as bcc patched them), and
    which map; anything the raw loader could not reproduce is refused."""
    out = []
    for i, (op, src, imm) in enumerate(_insns(raw)):
        if op == LD_IMM64 and src in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
            if imm not in fd_index:
                raise Uncacheable(f"instruction {i} names fd {imm}, not a map of the module")
            out.append((i, fd_index[imm]))
        elif op == LD_IMM64 and src != 0:
            raise Uncacheable(f"instruction {i}: ld_imm64 kind {src}")
        elif op == CALL and src not in (0, PSEUDO_CALL):
            raise Uncacheable(f"instruction {i}: call kind {src}")
    return out


def _libbcc():
    """libbcc with the table-listing calls bcc's Python module does not declare."""
    import ctypes
    from bcc import libbcc

    lib = libbcc.lib
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_module_license.restype = ctypes.c_char_p
    lib.bpf_module_license.argtypes = [ctypes.c_void_p]
    return lib


def table_fds(bpf) -> dict[str, int]:
    """Every map bcc created for module ``bpf`` (name -> bcc's fd), used by
    the functions or not (all are pinned and written alike)."""
    lib = _libbcc()
    out = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i)
        fd = lib.bpf_table_fd(bpf.module, name)
        if fd < 0:
            raise Uncacheable(f"map {name!r} has no fd")
        out[name.decode()] = fd
    return out


def capture(bpf, funcs: dict[str, int], meta: dict | None = None) -> Module:
    """What loading ``funcs`` of the bcc module ``bpf`` took."""
    maps: list[MapDef] = []
    fd_index: dict[int, int] = {}
    for name, fd in table_fds(bpf).items():
        info = bpfsys.map_info(fd)
        fd_index[fd] = len(maps)
        maps.append(MapDef(name, info.type, info.key_size, info.value_size,
                           info.max_entries, info.flags))
    out = {}
    for name, prog_type in funcs.items():
        raw = bytes(bpf.dump_func(name.encode()))
        relocs = relocations(raw, fd_index)
        # bcc's fd numbers (patched again at every load) left out: the same
        # module gives the same entry, whichever fds this process had
        out[name] = FuncDef(name, prog_type, patched(FuncDef(name, prog_type, raw, relocs),
                                                     [0] * len(maps)), relocs)
    return Module(_libbcc().bpf_module_license(bpf.module).decode(), maps, out, dict(meta or {}))


# -- the entry on disk --------------------------------------------------------------------

def _body(k: str, m: Module) -> bytes:
    funcs = {n: {"prog_type": f.prog_type, "insns": base64.b64encode(f.insns).decode(),
                 "relocs": f.relocs} for n, f in m.funcs.items()}
    return json.dumps({"key": k, "license": m.license, "maps": [asdict(d) for d in m.maps],
                       "funcs": funcs, "meta": m.meta}, sort_keys=True).encode()


def _valid(m: Module) -> bool:
    """Every relocation points at an ld_imm64 naming a map of the module."""
    for f in m.funcs.values():
        if not f.insns or len(f.insns) % 8:
            return False
        ins = _insns(f.insns)
        for i, ix in f.relocs:
            if not (0 <= i < len(ins) - 1 and 0 <= ix < len(m.maps)
                    and ins[i][0] == LD_IMM64 and ins[i][1] in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE)):
                return False
    return True


def _parse(k: str, data: bytes) -> Module | None:
    if not data.startswith(MAGIC):
        return None
    digest, _, body = data[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        return None
    try:
        d = json.loads(body)
        if d["key"] != k:
            return None
        m = Module(d["license"], [MapDef(**x) for x in d["maps"]],
                   {n: FuncDef(n, f["prog_type"], base64.b64decode(f["insns"], validate=True),
                               [(int(i), int(x)) for i, x in f["relocs"]])
                    for n, f in d["funcs"].items()}, d["meta"])
    except (ValueError, KeyError, TypeError):
        return None
    return m if _valid(m) else None


def path_of(k: str) -> Path | None:
    d = cache_dir()
    return d / f"{k}.obj" if d is not None else None


def lookup(k: str) -> Module | None:
    """The entry of key ``k``; None when absent or when it does not check out."""
    p = path_of(k)
    if p is None:
        return None
    try:
        data = p.read_bytes()
    except OSError:
        return None
    m = _parse(k, data)
    if m is not None:
        try:
            os.utime(p)   # recently used: the last to be evicted
        except OSError:
            pass
    return m


def store(k: str, m: Module) -> None:
    """Write the entry atomically (concurrent writers of one key write the
    same bytes; a reader sees a whole file or none). A cache that cannot be
    written costs a compile next time, nothing else."""
    p = path_of(k)
    if p is None:
        return
    body = _body(k, m)
    data = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    try:
        p.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except BaseException:
            os.unlink(tmp)
            raise
        evict(p.parent)
    except OSError:
        pass


def evict(directory: Path, keep: int = MAX_ENTRIES) -> None:
    """Remove the least recently used entries beyond ``keep``."""
    entries = []
    for e in directory.glob("*.obj"):
        try:
            entries.append((e.stat().st_mtime, e))
        except OSError:
            continue
    for _, e in sorted(entries, reverse=True)[keep:]:
        try:
            e.unlink()
        except OSError:
            pass


# -- loading without bcc ------------------------------------------------------------------

@dataclass
class Loaded:
    maps: dict[str, int]     # name -> fd
    progs: dict[str, int]    # function name -> fd
    # a load in the background (load(..., background=True)): the verifier
    # runs in this thread while the caller fills the maps
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def wait(self) -> None:
        """The programs are loaded once this returns; raises what the load
        raised (OSError: the kernel refused; everything is closed then)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            self.close()
            raise error

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in [*self.progs.values(), *self.maps.values()]:
            os.close(fd)
        self.progs.clear()
        self.maps.clear()


def patched(f: FuncDef, fds: list[int]) -> bytes:
    code = bytearray(f.insns)
    for i, ix in f.relocs:
        code[8 * i + 4:8 * i + 8] = fds[ix].to_bytes(4, "little", signed=True)
    return bytes(code)


def _same_map(fd: int, d: MapDef) -> bool:
    i = bpfsys.map_info(fd)
    return (i.type, i.key_size, i.value_size, i.max_entries, i.flags) == \
        (d.type, d.key_size, d.value_size, d.max_entries, d.flags)


def load(m: Module, expected_attach_type: int = 0, background: bool = False,
         share: "dict[str, int] | None" = None) -> Loaded:
    """Create ``m``'s maps and load its functions (raises OSError; nothing
    stays open then). ``background``: return once the maps exist, the
    functions are loaded in a thread (``Loaded.wait()``): the verifier
    (~0.15 s at 10k rules) runs in the kernel without the GIL, beside the
    caller's Python writing the maps. ``share``: name -> fd of another
    program's maps to use instead of new ones, each where it is the very
    map this module defines (type, sizes, entries, flags), else a new one."""
    out = Loaded({}, {})
    try:
        fds = []
        for d in m.maps:
            theirs = (share or {}).get(d.name)
            if theirs is not None and _same_map(theirs, d):
                fd = os.dup(theirs)
            else:
                fd = bpfsys.map_create(d.type, d.key_size, d.value_size, d.max_entries,
                                       d.flags, d.name)
            out.maps[d.name] = fd
            fds.append(fd)
    except BaseException:
        out.close()
        raise

    def programs() -> None:
        try:
            for name, f in m.funcs.items():
                out.progs[name] = bpfsys.prog_load(f.prog_type, patched(f, fds), m.license,
                                                   name, expected_attach_type)
        except BaseException as exc:
            out._error = exc

    if background:
        out._thread = threading.Thread(target=programs, name="bpf-prog-load", daemon=True)
        out._thread.start()
    else:
        programs()
        out.wait()
    return out
