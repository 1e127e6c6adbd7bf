"""bpf-iptables: the iptables command."""
from __future__ import annotations

import errno
import gc
import sys

from ..cmdline import parse as P
from ..commands import Outcome, execute
from ..errors import NotSupported, TableOpError, XtablesError, VERSION_PROBLEM
from ..model import BUILTIN_CHAINS
from ..validate import validate_table
from .. import state
from .common import PROGRAM_VERSION, report, try_help
from .help import help_text

PROG = "bpf-iptables"
KNOWN_TABLES = ("filter", "nat", "mangle", "raw", "security")


def check_table(name: str) -> None:
    if name in BUILTIN_CHAINS:
        return
    if name in KNOWN_TABLES:
        raise NotSupported(f"table `{name}'")
    raise XtablesError(f"can't initialize iptables table `{name}': "
                       "Table does not exist (do you need to insmod?)", VERSION_PROBLEM)


def run(argv: list[str]) -> int:
    try:
        parsed = P.CommandParser([PROG, *argv], help_printer=lambda m: help_text(PROG, m)).parse()
    except P.HelpRequested as h:
        sys.stdout.write(h.text)
        return 0
    except P.VersionRequested as v:
        sys.stdout.write(f"Not {PROGRAM_VERSION} ;-)\n" if v.invert else f"{PROG} v{PROGRAM_VERSION}\n")
        return 0
    except P.TryHelpExit as t:
        try_help(PROG)
        return t.status
    except XtablesError as exc:
        return report(PROG, exc)
    try:
        check_table(parsed.table)
        with state.locked(parsed.wait) as store:
            ruleset = store.load()
            table = ruleset.table(parsed.table)
            outcome = Outcome()
            try:
                execute(parsed, table, outcome)
                if outcome.changed:
                    validate_table(table)
            except TableOpError as exc:
                sys.stdout.write("".join(outcome.stdout))
                return table_error(exc)
            except XtablesError as exc:
                sys.stdout.write("".join(outcome.stdout))
                return report(PROG, exc)
            sys.stdout.write("".join(outcome.stdout))
            if outcome.changed:
                store.save(ruleset)
    except state.LockBusy as busy:
        sys.stderr.write(busy.message())
        return 4
    except XtablesError as exc:
        return report(PROG, exc)
    return 0


def table_error(exc: TableOpError) -> int:
    """iptables_main()'s report of a failed libiptc call."""
    msg = str(exc)
    if exc.err == errno.EINVAL:
        sys.stderr.write(f"{PROG}: {msg}. Run `dmesg' for more information.\n")
    else:
        sys.stderr.write(f"{PROG}: {msg}.\n")
    return 4 if exc.err == errno.EAGAIN else 1


def main() -> None:
    # One short-lived process per command creates no garbage cycles worth
    # collecting, but unpickling a large rule set would trigger many
    # collections: without them loading 10k rules takes half the time.
    gc.disable()
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
