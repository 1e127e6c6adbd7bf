"""bpf-iptables-save: the iptables-save command (1.8.9, legacy)."""
from __future__ import annotations

if __name__ == "__main__":   # an attached namespace's server runs it (see cli/client.py)
    from .client import forward
    forward("save")

import os
import sys

from ..cli.iptables import KNOWN_TABLES
from ..model import BUILTIN_CHAINS, RuleSet
from ..render.save import save_table
from ..restore_getopt import GetoptError, LongOpt, PermutingGetopt
from .. import state
from ..datapath import attachment as datapath_hook
from .common import PROGRAM_VERSION, short_lived

PROG = "bpf-iptables-save"
OPTSTRING = "bcdt:M:f:V"
LONGOPTS = (
    LongOpt("counters", 0, "c"), LongOpt("dump", 0, "d"), LongOpt("table", 1, "t"),
    LongOpt("modprobe", 1, "M"), LongOpt("file", 1, "f"), LongOpt("version", 0, "V"),
)
# The order /proc/net/ip_tables_names lists tables in: registration order.
TABLE_ORDER = ("filter",)


class _Exit(Exception):
    def __init__(self, status: int):
        self.status = status


def dump(ruleset: RuleSet, table: str | None, counters: bool) -> str:
    """do_output(): one table, or every table the namespace has."""
    if table is None:
        return "".join(save_table(ruleset.tables[name], counters)
                       for name in TABLE_ORDER if name in ruleset.tables)
    if table not in BUILTIN_CHAINS:
        if table in KNOWN_TABLES:
            sys.stderr.write(f"{PROG} v{PROGRAM_VERSION}: table `{table}' is not supported "
                             "by bpf-iptables\n")
            raise _Exit(2)
        sys.stderr.write(f"{PROG} v{PROGRAM_VERSION}: Cannot initialize: "
                         "Table does not exist (do you need to insmod?)\n")
        raise _Exit(1)
    # iptc_init() brings a table into being in the namespace, so an empty
    # filter table is shown (and from then on listed) as with iptables.
    return save_table(ruleset.table(table), counters)


def output(table: str | None, counters: bool) -> None:
    with state.locked(-1) as store:
        store = datapath_hook.wrap(store)  # counters of an attached data path
        ruleset = store.load()
        known = set(ruleset.tables)
        text = dump(ruleset, table, counters)
        if set(ruleset.tables) != known:
            store.save(ruleset)
    sys.stdout.write(text)


def run(argv: list[str]) -> int:
    g = PermutingGetopt(PROG, argv, OPTSTRING, LONGOPTS)
    table: str | None = None
    counters = False
    try:
        for c, optarg in g.options():
            if c == "b":
                sys.stderr.write("-b/--binary option is not implemented\n")
            elif c == "c":
                counters = True
            elif c == "t":
                table = optarg
            elif c == "M":
                pass  # no kernel modules to load
            elif c == "f":
                redirect_stdout(optarg or "")
            elif c == "d":
                output(table, counters)
                return 0
            elif c == "V":
                sys.stdout.write(f"{PROG} v{PROGRAM_VERSION}\n")
                return 0
    except GetoptError as exc:
        sys.stderr.write(exc.message + "\n")
        sys.stderr.write(f"Look at manual page `{PROG}.8' for more information.\n")
        return 1
    except _Exit as stop:
        return stop.status
    if g.nonoptions:
        sys.stderr.write("Unknown arguments found on commandline\n")
        return 1
    try:
        output(table, counters)
    except _Exit as stop:
        return stop.status
    return 0


def redirect_stdout(path: str) -> None:
    """-f FILE: stdout goes to FILE from here on (iptables dup2()s it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as exc:
        sys.stderr.write(f"Failed to open file, error: {os.strerror(exc.errno or 0)}\n")
        raise _Exit(1) from None
    sys.stdout.flush()
    os.dup2(fd, sys.stdout.fileno())
    os.close(fd)


def main() -> None:
    from .client import forward

    forward("save")   # returns when the command runs here
    short_lived()
    status = run(sys.argv[1:])
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
