"""Fill the object cache ahead of use (scripts/setup.sh runs it once).

    python -m bpf_iptables.datapath.warm [RULES_FILE ...]

Compiles what a first ``attach`` needs (the roots of every mode, the empty
rule set's INPUT classifier as XDP and as TC program) and, per
iptables-save file given, the classifiers a first restore of it asks for
(``generation.roomy()`` of each hook's compiled chain, with only ``lo`` as
interface: rules naming interfaces get their shape from the namespace
they are restored in). Programs are loaded and closed at once: nothing is
attached, no namespace is touched. Entries already cached cost one load."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..model import Table
from . import links
from .compiler import Shape
from .generation import is_tc, roomy
from .program import LoadedProgram, Roots

LO = {"lo": 1}


def shapes_of(table: Table) -> list[tuple[Shape, bool]]:
    """(shape, tc) of every classifier a first load of ``table`` needs in
    the default (xdpgeneric) mode."""
    from .live import compile_all

    from .generation import with_looped

    return [(roomy(c), is_tc("xdpgeneric", hook))
            for hook, c in with_looped(compile_all(table, LO), "xdpgeneric").items()]


def warm(paths: list[Path]) -> list[str]:
    done = []
    for functions in (links.root_functions("xdpgeneric"), links.root_functions("tc")):
        r = Roots(functions)
        done.append(f"roots {'+'.join(functions)}: {'cached' if r.cache_hit else 'compiled'}")
        r.close()
    wanted = [(s, tc, "empty rule set") for tc in (False, True)
              for s, _ in shapes_of(Table.empty("filter"))]
    for path in paths:
        from .harness import table_from_save

        wanted += [(s, tc, path.name) for s, tc in shapes_of(table_from_save(path.read_text()))]
    for shape, tc, what in wanted:
        start = time.monotonic()
        p = LoadedProgram(shape, tc=tc)
        p.close()
        done.append(f"{what} ({'tc' if tc else 'xdp'}): "
                    f"{'cached' if p.cache_hit else 'compiled'} in {time.monotonic() - start:.1f} s")
    return done


def main(argv: list[str]) -> int:
    for line in warm([Path(a) for a in argv]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
