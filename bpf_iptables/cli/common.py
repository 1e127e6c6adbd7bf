"""Message formatting shared by the command-line programs."""
from __future__ import annotations

import gc
import sys

from .. import VERSION
from ..errors import PARAMETER_PROBLEM, VERSION_PROBLEM, XtablesError

PROGRAM_VERSION = f"{VERSION} (bpf)"


def report(prog: str, exc: XtablesError, line: int = -1) -> int:
    """xtables_exit_error(): prefix, message, hints; returns the exit status."""
    sys.stderr.write(f"{prog} v{PROGRAM_VERSION}: {exc.message}\n")
    if exc.status == PARAMETER_PROBLEM:
        try_help(prog, line)
    elif exc.status == VERSION_PROBLEM:
        sys.stderr.write("Perhaps iptables or your kernel needs to be upgraded.\n")
    return exc.status


def try_help(prog: str, line: int = -1) -> None:
    if line != -1:
        sys.stderr.write(f"Error occurred at line: {line}\n")
    sys.stderr.write(f"Try `{prog} -h' or '{prog} --help' for more information.\n")


def short_lived() -> None:
    """Settings for a process that runs one command and exits.

    It makes no garbage cycles worth collecting, but building or unpickling
    10k rules would trigger hundreds of collections, each walking every
    object made so far: without them a 10k restore or load takes a third
    less time (and unpickling a fifth of it)."""
    gc.disable()
