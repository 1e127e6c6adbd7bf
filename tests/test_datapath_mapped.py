"""Writes through shared memory (BPF_F_MMAPABLE arrays, bpfsys.Mapping, used
by shadow.write): after any sequence of images, longer or shorter, and after
another process wrote the map behind the writer's back, the kernel's map
(read back element by element with BPF_MAP_LOOKUP_ELEM) holds what writing
every image in full would have left there. The object cache creates the
classifier's maps with bcc's flags. Maps only, nothing attached."""
from __future__ import annotations

import os
import random
import types

import numpy  # noqa: F401 - loaded, as in the command server
import pytest

from bpf_iptables.datapath import bpfsys, objcache, program, shadow
from bpf_iptables.datapath.compiler import Shape
from bpf_iptables.datapath.image import Packed, array_keys
from bpf_iptables.datapath.program import LoadedProgram

ARRAY = bpfsys.BPF_MAP_TYPE_ARRAY
MMAPABLE = bpfsys.BPF_F_MMAPABLE
N = 96


def key(i: int) -> bytes:
    return i.to_bytes(4, "little")


def read_all(fd: int, size: int) -> list[bytes | None]:
    return [bpfsys.map_lookup(fd, key(i), size) for i in range(N)]


def dense(rows: list[bytes], size: int) -> Packed:
    return Packed(4, size, array_keys(len(rows)), b"".join(rows), dense=True)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A process that writes again (the command server): mappings kept."""
    monkeypatch.setattr(shadow, "enabled", True)
    shadow.forget()
    yield tmp_path
    shadow.unmap_all()
    shadow.forget()


def foreign_write(fd: int, writes: dict[int, bytes]) -> None:
    """Another process writes elements by bpf(2) (the map through the
    inherited descriptor), as an in-process command or the watcher would."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for k, v in writes.items():
                bpfsys.map_update(fd, key(k), v)
        except BaseException:
            code = 1
        os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


# value sizes: laid back to back (24), u32 in 8-byte slots (4: by numpy's
# strided copy where numpy is loaded, as in the server, else widened), padded (12)
@pytest.mark.parametrize("size,with_numpy", [(24, True), (4, True), (4, False), (12, True)])
def test_mapped_writes_leave_the_map_equal_to_the_images(server, monkeypatch, size, with_numpy):
    if not with_numpy:   # bpfsys looks numpy up in sys.modules
        monkeypatch.setattr(bpfsys, "sys", types.SimpleNamespace(modules={}))
    rng = random.Random(size)
    fd = bpfsys.map_create(ARRAY, 4, size, N, MMAPABLE, f"mapped_{size}")
    try:
        model = [bytes(size)] * N
        rows = [rng.randbytes(size) for _ in range(N)]
        counts = []
        for step in range(40):
            shadow.claim(server, step % 2)
            # grows and shrinks: keys past a shorter image keep their values
            n = rng.choice([1, 7, N // 2, N - 3, N])
            rows = [r if rng.random() < 0.9 else rng.randbytes(size) for r in rows]
            if step % 5 == 3:
                # another process writes some elements (some to what the
                # next image holds anyway): the memory is the truth
                theirs = {rng.randrange(N): rng.randbytes(size) for _ in range(6)}
                theirs[0] = rows[0]
                foreign_write(fd, theirs)
                for k, v in theirs.items():
                    model[k] = v
            counts.append(shadow.write(fd, "src_map", dense(rows[:n], size), False)[0])
            model[:n] = rows[:n]
            assert read_all(fd, size) == model, step
        # written through the mapping, not by batches: the map keeps no shadow
        assert bpfsys.map_info(fd).id not in shadow._shadows
        assert bpfsys.map_info(fd).id in shadow._mappings
        # an image equal to what the map holds copies nothing
        shadow.claim(server, 0)
        assert shadow.write(fd, "src_map", dense(model, size), False)[0] == 0
    finally:
        os.close(fd)


def test_pairs_and_a_process_that_keeps_no_mapping(tmp_path, monkeypatch):
    """Keys given one by one (sport_map's: intervals, then the two slots
    at the end), written by a process that maps for one write only."""
    monkeypatch.setattr(shadow, "enabled", False)
    size = 16
    fd = bpfsys.map_create(ARRAY, 4, size, N, MMAPABLE, "mapped_pairs")
    try:
        model = [bytes(size)] * N
        rng = random.Random(2)
        for step in range(6):
            shadow.claim(tmp_path, 0)
            items = [(key(k), rng.randbytes(size)) for k in [*range(step + 3), N - 2, N - 1]]
            shadow.write(fd, "sport_map", items, False)
            for k, v in items:
                model[int.from_bytes(k, "little")] = v
            assert read_all(fd, size) == model
        assert not shadow._mappings
        with pytest.raises(OSError):   # a key past the map's end, as a batch refuses
            shadow.write(fd, "sport_map", [(key(N), bytes(size))], False)
        with pytest.raises(OSError):
            shadow.write(fd, "src_map", dense([bytes(size)] * (N + 1), size), False)
    finally:
        os.close(fd)


def test_settle_unmaps_the_maps_a_generation_no_longer_has(server):
    fds = [bpfsys.map_create(ARRAY, 4, 8, N, MMAPABLE, f"mapped_s{i}") for i in range(3)]
    try:
        ids = [bpfsys.map_info(fd).id for fd in fds]
        rows = [bytes([i]) * 8 for i in range(N)]
        shadow.claim(server, 0)
        for fd in fds[:2]:          # generation 0's program: maps 0 and 1
            shadow.write(fd, "dst_map", dense(rows, 8), False)
        shadow.settle(0)
        shadow.claim(server, 1)
        shadow.write(fds[2], "dst_map", dense(rows, 8), False)
        shadow.settle(1)
        # generation 0 got a new program: map 1 is gone from it
        shadow.claim(server, 0)
        shadow.write(fds[0], "dst_map", dense(rows, 8), False)
        shadow.settle(0)
        assert set(shadow._mappings) == {ids[0], ids[2]}
    finally:
        for fd in fds:
            os.close(fd)


SHAPE = Shape(nwords=2, steps=48, ncounters=16,
              fields=frozenset({"src", "dst", "proto", "sport", "dport"}), src_max=8,
              src_bsize=32, src_probes=2, dst_max=8, dst_bsize=32, dst_probes=2, proto_max=4,
              sport_bsize=8, dport_bsize=8)


def test_the_object_cache_creates_the_maps_bcc_creates(tmp_path, monkeypatch):
    monkeypatch.setenv("BPF_IPTABLES_OBJCACHE_DIR", str(tmp_path / "objects"))
    compiled = LoadedProgram(SHAPE)      # a miss: bcc
    cached = LoadedProgram(SHAPE)        # a hit: raw bpf(2)
    try:
        assert not compiled.cache_hit and cached.cache_hit
        infos = [{name: bpfsys.map_info(fd) for name, fd in p.map_fds().items()}
                 for p in (compiled, cached)]
        assert {n: (i.type, i.key_size, i.value_size, i.max_entries, i.flags)
                for n, i in infos[0].items()} == \
            {n: (i.type, i.key_size, i.value_size, i.max_entries, i.flags)
             for n, i in infos[1].items()}
        for name in ("entry_map", "src_map", "dst_map", "src_index_map", "proto_map",
                     "sport_map", "dport_slot_map"):
            assert infos[1][name].flags & MMAPABLE, name
        # hash maps and the counters stay unmappable
        assert not infos[1]["counter_map"].flags & MMAPABLE
        # another program may use these maps (the looped copies' program
        # INPUT's): each one that is the same map, never another one
        other = bpfsys.map_create(ARRAY, 4, infos[1]["src_map"].value_size, 3, MMAPABLE,
                                  "not_src_map")
        entry = objcache.lookup(program.object_key(SHAPE))
        assert entry is not None
        share = {"src_map": other, "dst_map": cached.maps["dst_map"],
                 "proto_map": cached.maps["proto_map"]}
        loaded = objcache.load(entry, share=share)
        try:
            ids = {n: bpfsys.map_info(fd).id for n, fd in loaded.maps.items()}
            assert ids["dst_map"] == infos[1]["dst_map"].id
            assert ids["proto_map"] == infos[1]["proto_map"].id
            assert ids["src_map"] not in (bpfsys.map_info(other).id, infos[1]["src_map"].id)
            assert ids["counter_map"] != infos[1]["counter_map"].id
        finally:
            loaded.close()
            os.close(other)
        # its own descriptors were duplicates: the sharer's still work
        assert bpfsys.map_info(cached.maps["dst_map"]).id == infos[1]["dst_map"].id
    finally:
        compiled.close()
        cached.close()


def test_a_forked_child_has_no_mappings_and_maps_its_own(server):
    """The server forks (its prestore child): the kernel gives the child
    none of the mappings (MADV_DONTFORK), and the child forgets them."""
    fd = bpfsys.map_create(ARRAY, 4, 8, N, MMAPABLE, "mapped_fork")
    try:
        rows = [bytes([i]) * 8 for i in range(N)]
        shadow.claim(server, 0)
        shadow.write(fd, "dst_map", dense(rows, 8), False)
        (held, _), = shadow._mappings.values()
        rows[5] = bytes(8)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with open("/proc/self/maps") as f:
                    inherited = any(line.startswith(f"{held.address:x}-") for line in f)
                if not shadow._mappings and not inherited:
                    shadow.claim(server, 0)
                    shadow.write(fd, "dst_map", dense(rows, 8), False)   # maps anew
                    code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert read_all(fd, 8) == rows
    finally:
        os.close(fd)


def test_address_rows_by_columns_across_generations_equal_full_images(server, monkeypatch):
    """The address rows handed over as the live matrix (image.Packed.matrix,
    no bytes) and written by the columns an edit changed: after each edit of
    fw1-1k, written into one of two generations' maps in turn (a map then
    holds the image of two edits before) and into a map the looped copies'
    program shares, every map holds the full image's bytes; an image kept
    past the next edit keeps its own bytes; a rule set of another kind
    (acl1-1k) in between, and edits again."""
    from dataclasses import replace

    from bpf_iptables.datapath import compiler, image
    from bpf_iptables.datapath.compiler import compile_chain
    from bpf_iptables.datapath.harness import table_from_save
    from tests.support import compile_golden as GOLD
    from tests.support.shared import ruleset
    from tests.test_datapath_derive import parsed

    calls: list = []
    real = bpfsys.Mapping.write_matrix

    def spy(self, matrix, columns=None):
        calls.append(columns)
        return real(self, matrix, columns)

    monkeypatch.setattr(bpfsys.Mapping, "write_matrix", spy)
    # no sampled rows' check (a net under wrong columns): the columns must
    # be right by themselves
    monkeypatch.setattr(bpfsys, "SAMPLE_ROWS", 0)
    monkeypatch.setattr(bpfsys, "STRIDED", 0)   # and by columns however many
    compiler.clear_caches()
    fds: dict = {}

    def maps_for(name: str, size: int) -> list[int]:
        # gen 0, gen 1, the looped copies' (with gen 1); room for any row count
        if (name, size) not in fds:
            fds[(name, size)] = [bpfsys.map_create(ARRAY, 4, size, 512, MMAPABLE, f"rows_{i}")
                                 for i in range(3)]
        return fds[(name, size)]

    def held(fd: int, n: int, size: int) -> bytes:
        m = bpfsys.map_mmap(fd)
        try:
            return ctypes_string(m.address, n * size)
        finally:
            m.close()

    step = 0
    kept_image = kept_bytes = None

    def write_and_check(table) -> None:
        nonlocal step, kept_image, kept_bytes
        c = compile_chain(table, "INPUT", GOLD.INTERFACES, trust_identity=True)
        gen = step % 2
        shadow.claim(server, gen)
        images = [m for m in image.map_image(c, c.shape) if m.name in ("src_map", "dst_map")]
        full = {m.name: image.joined(m.items)[1]
                for m in image.map_image(replace(c, serial=0, edit=None), c.shape)
                if m.name in ("src_map", "dst_map")}
        for m in images:
            size, n = m.items.value_size, len(m.items)
            targets = maps_for(m.name, size)
            for fd in [targets[gen]] + ([targets[2]] * 2 if gen else []):
                shadow.write(fd, m.name, m.items, False)
                assert held(fd, n, size) == full[m.name], (step, m.name)
        if step == 4:
            kept_image, kept_bytes = images[0], full[images[0].name]
        shadow.settle(gen)
        step += 1

    table = table_from_save(ruleset("classbench-fw1-1k.rules").read_text())
    rules = table.chains["INPUT"].rules
    # 767 rules and the policy: 12 words exactly (an -A takes a 13th, its
    # -D gives it back: the words of either count are written)
    del rules[767:]
    try:
        write_and_check(table)
        for text in ("-s 10.255.1.1 -p tcp --dport 8080 -j ACCEPT", "-p udp --sport 53 -j DROP"):
            rule = parsed("INPUT", text)
            # an insert in the 11th word then an -A: a generation holding
            # the image before both gets the columns of both
            for change in (lambda: rules.append(rule), lambda: rules.pop(),
                           lambda: rules.__setitem__(-1, rule),
                           lambda: rules.insert(len(rules) - 30, rule),
                           lambda: rules.append(rule), lambda: rules.pop(),
                           lambda: rules.pop(len(rules) - 31),
                           lambda: rules.insert(0, rule), lambda: rules.pop(0),
                           lambda: rules.append(rule), lambda: rules.pop()):
                change()
                write_and_check(table)
        # the image of step 4, kept past later edits, has its own bytes
        assert kept_image.items.matrix is None and kept_image.items.values == kept_bytes
        other = table_from_save(ruleset("classbench-acl1-1k.rules").read_text())
        write_and_check(other)
        rules = other.chains["INPUT"].rules
        rule = parsed("INPUT", "-p udp --sport 53 -j DROP")
        for change in (lambda: rules.append(rule), lambda: rules.pop(),
                       lambda: rules.insert(0, rule), lambda: rules.pop(0)):
            change()
            write_and_check(other)
        # some writes went by columns alone (-A, -D of the last rule)
        assert any(cols is not None and len(cols) for cols in calls), calls

    finally:
        for group in fds.values():
            for fd in group:
                os.close(fd)


def ctypes_string(address: int, length: int) -> bytes:
    import ctypes

    return ctypes.string_at(address, length)
