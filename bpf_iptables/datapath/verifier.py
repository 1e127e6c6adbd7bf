"""What the kernel's verifier spends on a classifier: its statistics.

    python -m bpf_iptables.datapath.verifier [RULES_FILE ...]

Loads each program of the classifiers a first restore of each iptables-save
file asks for (``warm.shapes_of``: INPUT for XDP, the looped copies' INPUT
for TC) once more with ``log_level`` 4 (BPF_LOG_STATS) and prints the
kernel's summary: instructions processed, states, verification time. The
programs come from the object cache (compiled by bcc first on a miss) and
are closed at once: nothing is attached, no namespace is touched.

The scan loop once cost the verifier ~0.2-0.4 s per load at 10k rules
(the README's "Verification cost"); this is how that was found, and
tests/test_datapath_verifier.py keeps it from coming back."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import bpfsys, objcache
from .compiler import Shape
from .program import LoadedProgram, object_key

LOG_STATS = 4        # BPF_LOG_STATS: the summary only, not the walk
LOG_SIZE = 1 << 16


@dataclass(frozen=True)
class Stats:
    function: str
    insns: int          # the program's length
    processed: int      # instructions the verifier walked
    total_states: int
    peak_states: int
    usec: int           # the kernel's own verification time


def parse(function: str, insns: int, log: str) -> Stats:
    """The numbers of a BPF_LOG_STATS log ("processed N insns (limit ...)
    max_states_per_insn M total_states T peak_states P ...", "verification
    time U usec")."""
    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        if found is None:
            raise ValueError(f"no {pattern!r} in the verifier's log of {function}: {log!r}")
        return int(found.group(1))

    return Stats(function, insns, number(r"processed (\d+) insns"),
                 number(r"total_states (\d+)"), number(r"peak_states (\d+)"),
                 number(r"verification time (\d+) usec"))


def _load_with_stats(f: objcache.FuncDef, insns: bytes, license: str) -> str:
    """BPF_PROG_LOAD of ready instructions with the statistics log; the
    program is closed at once."""
    fd, log = bpfsys.prog_load_logged(f.prog_type, insns, license, f.name,
                                      log_size=LOG_SIZE, log_level=LOG_STATS)
    os.close(fd)
    return log


def stats(shape: Shape, tc: bool = False) -> list[Stats]:
    """Per program of the classifier for ``shape`` (the classifier, the
    REJECT reply builder, ...), what its verification cost."""
    LoadedProgram(shape, tc=tc).close()    # into the object cache (bcc on a miss)
    module = objcache.lookup(object_key(shape, tc))
    if module is None:
        raise RuntimeError("the object cache is off (BPF_IPTABLES_OBJCACHE_DIR=off)")
    fds = [bpfsys.map_create(d.type, d.key_size, d.value_size, d.max_entries, d.flags, d.name)
           for d in module.maps]
    try:
        return [parse(name, len(f.insns) // 8,
                      _load_with_stats(f, objcache.patched(f, fds), module.license))
                for name, f in module.funcs.items()]
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> int:
    from .harness import table_from_save
    from .warm import shapes_of

    for path in map(Path, argv):
        for shape, tc in shapes_of(table_from_save(path.read_text())):
            try:
                found = stats(shape, tc)
            except OSError as exc:
                # e.g. -m limit's spin lock needs its map's BTF, which only
                # bcc makes: such programs are never loaded from the cache
                last = getattr(exc, "verifier_log", "").strip().splitlines()[:1]
                print(f"{path.name} {'tc' if tc else 'xdp'}: {exc} {' '.join(last)}")
                continue
            for s in found:
                print(f"{path.name} {'tc' if tc else 'xdp'} {s.function}: {s.insns} insns, "
                      f"processed {s.processed}, states {s.total_states} (peak "
                      f"{s.peak_states}), {s.usec / 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
