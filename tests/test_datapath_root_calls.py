"""The root programs' tail calls have a constant key at every call site.

The x86 JIT turns a tail call whose key is one constant on every path to
it into a direct jump (patched when the prog array slot changes); a key
computed at run time makes it an indirect jump, a retpoline on kernels
that mitigate Spectre v2 that way (this machine: a packet through the XDP
root cost ~20 ns more, bench/results/datapath.md). clang merges call sites
that differ only in the key into one whose key is a phi unless something
keeps them apart (bpf/root.c, xdp_call): this test reads the bytecode clang
made for every root and fails when a site's key is not a constant, or when
a slot has no call site of its own."""
from __future__ import annotations

import struct

import pytest

from bpf_iptables.datapath.program import BPF_DIR

BPF_FUNC_TAIL_CALL = 12
CALL, MOV64_IMM = 0x85, 0xB7
JUMP_CLASSES = (0x05, 0x06)      # BPF_JMP, BPF_JMP32
R3 = 3

# root -> the prog array slots it must tail-call (generation * 3 + hook:
# 0 INPUT, 1 FORWARD, 2 OUTPUT)
ROOTS = {
    "root.c": {"xdp_root": {0, 1, 3, 4}, "tc_ingress_root": {0, 1, 3, 4},
               "tc_egress_root": {2, 5}, "tc_loop_root": {0, 3}},
    "nfroot.c": {"nf_root_input": {0, 3}, "nf_root_forward": {1, 4},
                 "nf_root_output": {2, 5}},
}


def instructions(code: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, off, imm) of each 8-byte instruction (the second
    half of a 16-byte immediate load comes out as an opcode-0 one)."""
    out = []
    for k in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, k)
        out.append((op, regs & 0xF, regs >> 4, off, imm))
    return out


def jump_targets(insns: list[tuple[int, int, int, int, int]]) -> set[int]:
    targets = set()
    for k, (op, _dst, _src, off, _imm) in enumerate(insns):
        if op & 0x07 in JUMP_CLASSES and op not in (CALL, 0x95):
            targets.add(k + 1 + off)
    return targets


def tail_call_keys(code: bytes) -> list[int | None]:
    """Per tail call site, its key when the instruction setting r3 is a
    constant move in the same basic block, else None."""
    insns = instructions(code)
    targets = jump_targets(insns)
    keys: list[int | None] = []
    for k, (op, _dst, _src, _off, imm) in enumerate(insns):
        if op != CALL or imm != BPF_FUNC_TAIL_CALL:
            continue
        key = None
        for j in range(k - 1, -1, -1):
            pop, pdst, *_rest, pimm = insns[j]
            if pdst == R3 and pop != 0:
                key = pimm if pop == MOV64_IMM else None
                break
            if j in targets or pop & 0x07 in JUMP_CLASSES:
                break    # r3 comes from another block: not known here
        keys.append(key)
    return keys


@pytest.fixture(scope="module")
def compiled():
    from bcc import BPF

    modules = {name: BPF(src_file=str(BPF_DIR / name).encode(), cflags=[f"-I{BPF_DIR}"])
               for name in ROOTS}
    yield modules
    for bpf in modules.values():
        bpf.cleanup()


@pytest.mark.parametrize("source,function", [(s, f) for s, fs in ROOTS.items() for f in fs])
def test_every_tail_call_of_a_root_has_a_constant_key(compiled, source, function):
    keys = tail_call_keys(compiled[source].dump_func(function.encode()))
    assert keys, f"{function}: no tail call found"
    assert None not in keys, f"{function}: a tail call with a computed key: {keys}"
    assert set(keys) == ROOTS[source][function]


def test_the_reader_sees_a_computed_key():
    """The check itself: a key moved from another register is not a constant."""
    mov_r3_r7 = struct.pack("<BBhi", 0xBF, R3 | (7 << 4), 0, 0)
    call = struct.pack("<BBhi", CALL, 0, 0, BPF_FUNC_TAIL_CALL)
    const = struct.pack("<BBhi", MOV64_IMM, R3, 0, 4)
    assert tail_call_keys(mov_r3_r7 + call) == [None]
    assert tail_call_keys(const + call) == [4]
