"""bpf-iptables-restore: the iptables-restore command (1.8.9, legacy)."""
from __future__ import annotations

if __name__ == "__main__":   # an attached namespace's server runs it (see cli/client.py)
    from .client import forward
    forward("restore")

import os
import sys

from ..cmdline.parse import _scanf_int, _scanf_uint
from ..errors import XtablesError
from ..restore import Output, RestoreOptions, Restorer
from ..restore_getopt import GetoptError, LongOpt, OPTIONAL_ARGUMENT, PermutingGetopt
from ..restore_input import read_statements
from .. import state
from .common import PROGRAM_VERSION, short_lived
from .help import help_text

PROG = "bpf-iptables-restore"

OPTSTRING = "bcvVthnwWM:T:"
LONGOPTS = (
    LongOpt("counters", 0, "c"), LongOpt("verbose", 0, "v"), LongOpt("version", 0, "V"),
    LongOpt("test", 0, "t"), LongOpt("help", 0, "h"), LongOpt("noflush", 0, "n"),
    LongOpt("modprobe", 1, "M"), LongOpt("table", 1, "T"),
    LongOpt("wait", OPTIONAL_ARGUMENT, "w"), LongOpt("wait-interval", OPTIONAL_ARGUMENT, "W"),
)

USAGE = (f"Usage: {PROG} [-c] [-v] [-V] [-t] [-h] [-n] [-w secs] [-W usecs] [-T table] "
         "[-M command] [file]\n"
         "\t   [ --counters ]\n"
         "\t   [ --verbose ]\n"
         "\t   [ --version]\n"
         "\t   [ --test ]\n"
         "\t   [ --help ]\n"
         "\t   [ --noflush ]\n"
         "\t   [ --wait=<seconds>\n"
         "\t   [ --table=<TABLE> ]\n"
         "\t   [ --modprobe=<command> ]\n")


class _Exit(Exception):
    def __init__(self, status: int):
        self.status = status


def parse_options(argv: list[str], out: Output) -> tuple[RestoreOptions, list[str]]:
    opts = RestoreOptions()
    g = PermutingGetopt(PROG, argv, OPTSTRING, LONGOPTS)
    interval_set = False
    try:
        for c, optarg in g.options():
            if c == "b":
                out.err("-b/--binary option is not implemented\n")
            elif c == "c":
                opts.counters = True
            elif c == "v":
                opts.verbose += 1
            elif c == "V":
                out.out(f"{PROG} v{PROGRAM_VERSION}\n")
                raise _Exit(0)
            elif c == "t":
                opts.test = True
            elif c == "h":
                out.err(USAGE)
                raise _Exit(0)
            elif c == "n":
                opts.noflush = True
            elif c == "w":
                opts.wait = wait_time(g, optarg, out)
            elif c == "W":
                wait_interval(g, optarg, out)
                interval_set = True
            elif c == "M":
                pass  # no kernel modules to load: the tables live in eBPF
            elif c == "T":
                opts.table = optarg
    except GetoptError as exc:
        out.err(exc.message + "\n")
        out.err(f"Try `{PROG} -h' for more information.\n")
        raise _Exit(1) from None
    if len(g.nonoptions) > 1:
        out.err("Unknown arguments found on commandline\n")
        raise _Exit(1)
    if interval_set and not opts.wait:
        out.err("Option --wait-interval requires option --wait\n")
        raise _Exit(1)
    return opts, g.nonoptions


def wait_time(g: PermutingGetopt, optarg: str | None, out: Output) -> int:
    """parse_wait_time(): -w takes the next word if it is no option."""
    text = optarg if optarg is not None else (g.take() if g.has_arg() else None)
    if text is None:
        return -1
    value = _scanf_int(text)
    if value is None:
        raise _Exit(out.xtables_error(XtablesError("wait seconds not numeric"), 0).status)
    return value


def wait_interval(g: PermutingGetopt, optarg: str | None, out: Output) -> None:
    if optarg is not None:
        text = optarg
    elif g.has_arg():
        text = g.take()
    else:
        raise _Exit(out.xtables_error(XtablesError("wait interval value required"), 0).status)
    value = _scanf_uint(text)
    if value is None:
        raise _Exit(out.xtables_error(XtablesError("wait interval not numeric"), 0).status)
    if value > 999999:
        raise _Exit(out.xtables_error(
            XtablesError(f"too long usec wait {value} > 999999 usec"), 0).status)
    out.err("Ignoring deprecated --wait-interval option.\n")


def run(argv: list[str]) -> int:
    out = Output(PROG, PROGRAM_VERSION)
    try:
        opts, files = parse_options(argv, out)
        if files:
            try:
                with open(files[0], "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                out.err(f"Can't open {files[0]}: {os.strerror(exc.errno or 0)}\n")
                return 1
        else:
            data = sys.stdin.buffer.read()
    except _Exit as stop:
        return stop.status
    restorer = Restorer(opts, out, state.locked, help_printer=lambda m: help_text(PROG, m))
    try:
        return restorer.run(read_statements(data))
    except state.LockBusy as busy:
        out.err(busy.message())
        return 4


def main() -> None:
    from .client import forward

    forward("restore")   # returns when the command runs here
    short_lived()
    status = run(sys.argv[1:])
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
