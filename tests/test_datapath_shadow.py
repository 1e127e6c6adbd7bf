"""Writes by difference (datapath/shadow.py) against real kernel maps: after
any sequence of images, a map holds exactly what writing every image in
full would have left there; a write by another process (another writer
token) makes the shadows stale; maps the program writes are written in
full every time. Maps only (BPF_MAP_CREATE): nothing is attached."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bpf_iptables.datapath import bpfsys, shadow
from bpf_iptables.datapath.image import Packed, array_keys

ARRAY, HASH = 2, 1
SIZE = 24


def read_all(fd: int, keys: list[bytes], size: int) -> dict[bytes, bytes | None]:
    return {k: bpfsys.map_lookup(fd, k, size) for k in keys}


def dense(values: list[bytes]) -> Packed:
    return Packed(4, SIZE, array_keys(len(values)), b"".join(values), dense=True)


@pytest.fixture
def writer(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(shadow, "enabled", True)
    shadow.forget()
    yield tmp_path
    shadow.forget()


def test_dense_arrays_by_difference_hold_what_full_writes_would(writer):
    rng = random.Random(7)
    fd = bpfsys.map_create(ARRAY, 4, SIZE, 64, 0, "shadow_test")
    try:
        model = [bytes(SIZE)] * 64       # what the map must hold
        rows = [bytes(SIZE)] * 64
        counts = []
        for step in range(60):
            shadow.claim(writer, 0)
            n = rng.randint(1, 64)
            rows = [r if rng.random() < 0.8 else rng.randbytes(SIZE) for r in rows]
            written, _ = shadow.write(fd, "entry_map", dense(rows[:n]), False)
            counts.append(written)
            model[:n] = rows[:n]
            keys = [i.to_bytes(4, "little") for i in range(64)]
            got = read_all(fd, keys, SIZE)
            assert [got[k] for k in keys] == model, step
        # the point: most writes after the first wrote a fraction of the rows
        assert sum(counts[1:]) < 0.6 * sum(len(range(64)) for _ in counts[1:])
    finally:
        os.close(fd)


def test_hash_maps_with_clear_delete_what_the_image_lost(writer):
    rng = random.Random(3)
    fd = bpfsys.map_create(HASH, 4, SIZE, 64, 0, "shadow_hash")
    try:
        model: dict[bytes, bytes] = {}
        for step in range(40):
            shadow.claim(writer, 1)
            keys = rng.sample(range(100), rng.randint(1, 40))
            items = [(k.to_bytes(4, "little"),
                      model.get(k.to_bytes(4, "little")) if rng.random() < 0.7
                      and k.to_bytes(4, "little") in model else rng.randbytes(SIZE))
                     for k in keys]
            shadow.write(fd, "iif_map", items, True)
            model = dict(items)
            assert set(bpfsys.map_keys(fd, 4)) == set(model), step
            assert read_all(fd, list(model), SIZE) == model, step
    finally:
        os.close(fd)


def test_another_writer_makes_the_shadows_stale(writer):
    fd = bpfsys.map_create(ARRAY, 4, SIZE, 8, 0, "shadow_stale")
    try:
        rows = [bytes([i]) * SIZE for i in range(8)]
        shadow.claim(writer, 0)
        assert shadow.write(fd, "src_map", dense(rows), False)[0] == 8
        shadow.claim(writer, 0)
        assert shadow.write(fd, "src_map", dense(rows), False)[0] == 0   # nothing differs
        # another process wrote the generation (its token in the writer file),
        # here a row behind our back
        shadow.writer_file(writer, 0).write_text("other")
        bpfsys.map_update(fd, (3).to_bytes(4, "little"), bytes(SIZE))
        assert shadow.claim(writer, 0) is False
        assert shadow.write(fd, "src_map", dense(rows), False)[0] == 8   # in full again
        assert bpfsys.map_lookup(fd, (3).to_bytes(4, "little"), SIZE) == rows[3]
    finally:
        os.close(fd)


def test_maps_the_program_writes_are_written_in_full(writer):
    fd = bpfsys.map_create(ARRAY, 4, SIZE, 4, 0, "shadow_limit")
    try:
        items = [(i.to_bytes(4, "little"), bytes([9]) * SIZE) for i in range(4)]
        for _ in range(2):
            shadow.claim(writer, 0)
            assert shadow.write(fd, "limit_map", items, False)[0] == 4
    finally:
        os.close(fd)


def test_a_process_without_shadows_writes_in_full(tmp_path, monkeypatch):
    monkeypatch.setattr(shadow, "enabled", False)
    fd = bpfsys.map_create(ARRAY, 4, SIZE, 8, 0, "shadow_off")
    try:
        rows = [bytes([i]) * SIZE for i in range(8)]
        for _ in range(2):
            shadow.claim(tmp_path, 0)
            assert shadow.write(fd, "src_map", dense(rows), False)[0] == 8
        assert shadow.writer_file(tmp_path, 0).read_text() == shadow.TOKEN
    finally:
        os.close(fd)


def test_another_writer_of_one_generation_leaves_the_others_shadows(writer):
    fds = [bpfsys.map_create(ARRAY, 4, SIZE, 8, 0, f"shadow_g{g}") for g in (0, 1)]
    try:
        rows = [bytes([i]) * SIZE for i in range(8)]
        for gen, fd in enumerate(fds):
            shadow.claim(writer, gen)
            assert shadow.write(fd, "src_map", dense(rows), False)[0] == 8
        shadow.writer_file(writer, 1).write_text("other")   # generation 1 written elsewhere
        assert shadow.claim(writer, 1) is False
        assert shadow.write(fds[1], "src_map", dense(rows), False)[0] == 8
        assert shadow.claim(writer, 0) is True
        assert shadow.write(fds[0], "src_map", dense(rows), False)[0] == 0
    finally:
        for fd in fds:
            os.close(fd)


def test_shadows_past_the_budget_are_not_kept(writer, monkeypatch):
    monkeypatch.setattr(shadow, "BUDGET", 8 * SIZE + 10)   # one 8-row map, not two
    fds = [bpfsys.map_create(ARRAY, 4, SIZE, 8, 0, f"shadow_b{i}") for i in (0, 1)]
    try:
        rows = [bytes([i]) * SIZE for i in range(8)]
        shadow.claim(writer, 0)
        for fd in fds:
            assert shadow.write(fd, "src_map", dense(rows), False)[0] == 8
        assert shadow.write(fds[0], "src_map", dense(rows), False)[0] == 0   # kept
        assert shadow.write(fds[1], "src_map", dense(rows), False)[0] == 8   # over budget
    finally:
        for fd in fds:
            os.close(fd)


def test_maps_sharing_one_image_each_hold_what_full_writes_would(writer):
    """INPUT and the looped copies' program get one image object per update
    (generation.twins): the second map's difference may be the first's,
    but only while both shadows hold the same bytes; images of varying
    length, one map now and then written alone (the shadows part)."""
    rng = random.Random(11)
    fds = [bpfsys.map_create(ARRAY, 4, SIZE, 64, 0, f"shadow_twin{i}") for i in range(2)]
    try:
        models = [[bytes(SIZE)] * 64 for _ in fds]
        rows = [rng.randbytes(SIZE) for _ in range(64)]   # no two alike
        keys = [i.to_bytes(4, "little") for i in range(64)]
        for step in range(80):
            shadow.claim(writer, 0)
            n = rng.randint(48, 64)
            rows = [r if rng.random() < 0.8 else rng.randbytes(SIZE) for r in rows]
            image = dense(rows[:n])
            alone = rng.random() < 0.3
            counts = []
            for i, fd in enumerate(fds[:1] if alone else fds):
                counts.append(shadow.write(fd, "entry_map", image, False)[0])
                models[i][:n] = rows[:n]
            for fd, model in zip(fds, models):
                got = read_all(fd, keys, SIZE)
                assert [got[k] for k in keys] == model, step
    finally:
        for fd in fds:
            os.close(fd)


def test_rows_all_sampled_different_are_written_in_full(writer):
    """When every SAMPLED-th row differs (an update's address vectors) the
    map is written in full without comparing the rest; a row that did not
    change between the sampled ones is written again, and the map holds
    the image either way."""
    rng = random.Random(5)
    n = 256
    fd = bpfsys.map_create(ARRAY, 4, SIZE, n, 0, "shadow_sampled")
    try:
        keys = [i.to_bytes(4, "little") for i in range(n)]
        rows = [rng.randbytes(SIZE) for _ in range(n)]
        shadow.claim(writer, 0)
        shadow.write(fd, "entry_map", dense(rows), False)
        # every row changes but one between samples
        rows = [r if i == shadow.SAMPLED + 1 else rng.randbytes(SIZE) for i, r in enumerate(rows)]
        shadow.claim(writer, 0)
        assert shadow.write(fd, "entry_map", dense(rows), False)[0] == n
        got = read_all(fd, keys, SIZE)
        assert [got[k] for k in keys] == rows
        # one sampled row unchanged: compared row by row, only the others written
        rows = [r if i == shadow.SAMPLED else rng.randbytes(SIZE) for i, r in enumerate(rows)]
        shadow.claim(writer, 0)
        assert shadow.write(fd, "entry_map", dense(rows), False)[0] == n - 1
        got = read_all(fd, keys, SIZE)
        assert [got[k] for k in keys] == rows
    finally:
        os.close(fd)
