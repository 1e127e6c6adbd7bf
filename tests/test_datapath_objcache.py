"""The object cache (bpf_iptables/datapath/objcache.py): a classifier or root
module compiled once is loaded later by raw bpf(2), without bcc or clang.

Each test points BPF_IPTABLES_OBJCACHE_DIR at a directory of its own, so a
first load is a miss (bcc compiles) and the next one a hit."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from bpf_iptables.datapath import objcache, program
from bpf_iptables.datapath.compiler import Shape, compile_chain
from bpf_iptables.datapath.generation import quantised, roomy
from bpf_iptables.datapath.harness import XDP_TO_VERDICT, normalise, table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.datapath.program import LoadedProgram, cflags
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from tests.support.netns import REPO, bpf_command
from tests.test_datapath_traffic import datapath_command, ensure_bpffs, ping, topology

SHAPE = Shape(nwords=2, steps=48, ncounters=16,
              fields=frozenset({"src", "proto", "sport", "dport"}), src_max=8,
              src_bsize=32, src_probes=2, proto_max=4, sport_bsize=8, dport_bsize=8)
RULES = ["-A INPUT -s 10.1.0.0/16 -p tcp --dport 22 -j ACCEPT",
         "-A INPUT -s 10.1.2.0/24 -j DROP",
         "-A INPUT -p udp --sport 53 -j ACCEPT",
         "-A INPUT -p tcp --dport 1000:2000 -j DROP",
         "-A INPUT -p icmp",
         "-P INPUT DROP"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "objects"
    monkeypatch.setenv("BPF_IPTABLES_OBJCACHE_DIR", str(d))
    return d


def entry_path(shape: Shape) -> Path:
    k = program.object_key(shape)
    path = objcache.path_of(k)
    assert path is not None
    return path


def packets() -> list[Packet]:
    out = []
    for src in ("10.1.2.3", "10.1.9.9", "10.2.0.1"):
        for proto, sport, dport in ((6, 40000, 22), (6, 40000, 1500), (6, 40000, 80),
                                    (17, 53, 9999), (17, 54, 53), (1, 0, 0)):
            p = Packet(src=ip_to_int(src), dst=ip_to_int("10.9.9.9"), proto=proto,
                       sport=sport, dport=dport, in_iface="lo", hook="INPUT")
            p.length = max(p.length, header_length(p))
            normalise(p)
            out.append(p)
    return out


def outcome(prog: LoadedProgram, lines: list[str]) -> tuple[list[str], dict, tuple]:
    """Verdicts of the packets, then every rule's and the policy's counters;
    the verdicts must be the reference's."""
    table = table_from_lines(lines)
    prog.install(compile_chain(table, "INPUT", {"lo": 1}, prog.shape))
    verdicts = []
    for p in packets():
        got = XDP_TO_VERDICT.get(run_frame(prog.fd, frame(p), ifindex=1).verdict)
        assert got == evaluate(table, p).verdict, p
        verdicts.append(got)
    policy = prog.policy_counters()
    return verdicts, prog.rule_counters(), (policy.packets, policy.bytes)


def test_a_cached_program_filters_and_counts_as_the_bcc_loaded_one(cache):
    compiled = LoadedProgram(SHAPE)       # a miss: bcc compiles, the entry is written
    cached = LoadedProgram(SHAPE)
    try:
        assert not compiled.cache_hit and cached.cache_hit
        assert entry_path(SHAPE).is_file()
        assert cached.shape == compiled.shape
        want = outcome(compiled, RULES)
        assert want[2][0] > 0 and any(c.packets for c in want[1].values())
        assert outcome(cached, RULES) == want
    finally:
        compiled.close()
        cached.close()


HIT = """
import sys
from bpf_iptables.datapath.compiler import Shape
from bpf_iptables.datapath.program import LoadedProgram, Roots
p = LoadedProgram(eval(sys.argv[1]))
r = Roots(["xdp_root", "tc_egress_root"])
print(p.cache_hit, r.cache_hit, 'bcc' in sys.modules)
"""


def test_a_hit_needs_neither_bcc_nor_clang(cache):
    env = {"BPF_IPTABLES_OBJCACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    import subprocess

    runs = [subprocess.run([sys.executable, "-c", HIT, repr(SHAPE)], capture_output=True,
                           text=True, env=env, timeout=120) for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["False", "False", "True"],
                                                ["True", "True", "False"]], runs[1].stderr
    assert len(list(cache.glob("*.obj"))) == 2


def damage_body(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))


def redigest(path: Path, edit) -> None:
    """Rewrite an entry's body with ``edit`` and a matching digest (so only
    the content checks can catch it)."""
    data = path.read_bytes()
    body = json.loads(data[len(objcache.MAGIC):].partition(b"\n")[2])
    edit(body)
    raw = json.dumps(body, sort_keys=True).encode()
    path.write_bytes(objcache.MAGIC + hashlib.sha256(raw).hexdigest().encode() + b"\n" + raw)


def unverifiable(body: dict) -> None:
    """Checks out (digest, relocations), but the verifier refuses it."""
    f = body["funcs"][program.FUNCTION]
    insns = bytearray(base64.b64decode(f["insns"]))
    insns[0:8] = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit with r0 unset
    f["insns"] = base64.b64encode(bytes(insns)).decode()


def test_a_damaged_entry_is_rejected_and_rebuilt(cache):
    LoadedProgram(SHAPE).close()
    path = entry_path(SHAPE)
    good = path.read_bytes()
    k = path.stem
    assert objcache.lookup(k) is not None

    damage_body(path)                                    # a flipped bit
    assert objcache.lookup(k) is None
    path.write_bytes(good[:len(good) // 2])              # truncated
    assert objcache.lookup(k) is None
    path.write_bytes(good)
    other = path.with_name("0" * 64 + ".obj")            # filed under another key
    shutil.copy(path, other)
    assert objcache.lookup("0" * 64) is None

    def misplaced(body):                                 # a relocation off its ld_imm64
        body["funcs"][program.FUNCTION]["relocs"][0][0] += 1
    redigest(path, misplaced)
    assert objcache.lookup(k) is None

    damage_body(path)
    rebuilt = LoadedProgram(SHAPE)                       # compiles again, rewrites the entry
    try:
        assert not rebuilt.cache_hit
        assert path.read_bytes() == good
        assert outcome(rebuilt, RULES)[0].count("DROP") > 0
    finally:
        rebuilt.close()
    LoadedProgram(SHAPE).close()


def test_an_entry_the_kernel_refuses_is_compiled_again(cache):
    LoadedProgram(SHAPE).close()
    path = entry_path(SHAPE)
    good = path.read_bytes()

    redigest(path, unverifiable)
    prog = LoadedProgram(SHAPE)
    try:
        assert not prog.cache_hit and path.read_bytes() == good
    finally:
        prog.close()


def test_the_key_names_sources_headers_and_flags(tmp_path):
    src = tmp_path / "bpf"
    shutil.copytree(program.BPF_DIR, src)
    funcs = {program.FUNCTION: program.XDP}
    base = objcache.key(src / "filter.c", cflags(SHAPE), funcs)
    assert objcache.key(src / "filter.c", cflags(SHAPE), funcs) == base
    assert objcache.key(src / "filter.c", cflags(SHAPE, tc=True), funcs) != base
    assert objcache.key(src / "filter.c", cflags(SHAPE), {program.FUNCTION: program.SCHED_CLS}) != base
    header = src / "lib" / "bitvector.h"
    header.write_text(header.read_text() + "\n/* edited */\n")
    assert objcache.key(src / "filter.c", cflags(SHAPE), funcs) != base


def test_similar_rule_sets_ask_for_the_same_shape():
    lines = [f"-A INPUT -s 10.{i // 200}.{i % 200}.0/24 -p tcp --dport {1000 + i} -j DROP"
             for i in range(600)]
    shapes = [roomy(compile_chain(table_from_lines(ls), "INPUT", {"lo": 1}))
              for ls in (lines, lines[:-1], lines + ["-A INPUT -s 10.255.1.1 -p tcp -j ACCEPT"])]
    assert cflags(shapes[1]) == cflags(shapes[0]) == cflags(shapes[2])
    assert [quantised(n) for n in (1, 8, 9, 17, 100, 10522)] == [1, 8, 10, 20, 112, 12288]
    assert all(n <= quantised(n) <= n * 5 // 4 + 1 for n in range(1, 5000))


WARM = """
import sys
from bpf_iptables.cli import iptables
rc = iptables.run(sys.argv[1:])
print(rc, 'bcc' in sys.modules)
"""


def test_a_namespace_attaches_and_updates_from_the_cache_without_bcc(tmp_path):
    """The same rule set in a namespace a second time: the roots and the
    classifier come from the cache (no bcc in the process) and filter."""
    ensure_bpffs()
    env = {"BPF_IPTABLES_OBJCACHE_DIR": str(tmp_path / "objects"), "BPF_IPTABLES_DATAPATH": "on"}
    rule = ["-A", "INPUT", "-p", "icmp", "-j", "DROP"]
    with topology("dpoc") as t:
        s = t.server
        assert ping(t, 1) == 1
        first = s.run([sys.executable, "-c", WARM, *rule], env=env)   # compiles: the cache fills
        assert first.stdout.split()[-2:] == ["0", "True"], first.stderr
        # the roots and this rule set's classifier
        entry = next(p for p in (tmp_path / "objects").glob("*.obj")
                     if b'"xdp_filter"' in p.read_bytes())
        good = entry.read_bytes()
        assert ping(t, 1) == 0
        assert s.run(datapath_command("detach"), env=env).returncode == 0
        assert ping(t, 1) == 1
        assert s.run(bpf_command("iptables", "-F"), env=env).returncode == 0
        again = s.run([sys.executable, "-c", WARM, *rule], env=env)   # attaches from the cache
        assert again.stdout.split()[-2:] == ["0", "False"], again.stderr
        assert ping(t, 1) == 0
        assert s.run(bpf_command("iptables", "-D", *rule[1:]), env=env).returncode == 0
        assert ping(t, 1) == 1

        # a cached classifier the kernel refuses (verified while its maps
        # are written): compiled again, the rule still enforced
        assert s.run(datapath_command("detach"), env=env).returncode == 0
        redigest(entry, unverifiable)
        third = s.run([sys.executable, "-c", WARM, *rule], env=env)
        assert third.stdout.split()[-2:] == ["0", "True"], third.stderr
        assert ping(t, 1) == 0 and entry.read_bytes() == good


def test_the_least_recently_used_entries_go_first(tmp_path):
    import os

    for i in range(5):
        (tmp_path / f"{i}.obj").write_bytes(b"x")
        os.utime(tmp_path / f"{i}.obj", (1000 + i, 1000 + i))
    os.utime(tmp_path / "0.obj", (5000, 5000))            # just used
    objcache.evict(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.obj", "3.obj", "4.obj"]
