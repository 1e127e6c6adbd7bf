"""The commands' Python entry points: pyproject's [project.scripts], and
``python -m bpf_iptables.cli.entry PROG ARGS``, which the installed C
client (cli/client.c) execs whenever the command must run in Python.

Why a module of its own: an entry point ``bpf_iptables.cli.iptables:main``
imports that module, and with it the whole front end (the command-line
parser, the extensions, the model: ~60 ms), before main() can hand the
command to the namespace's command server (cli/client.py), which makes
that work pointless. These functions forward first, importing only the
client, and import the command's module only when it runs here."""
from __future__ import annotations

import sys

from .client import forward


def iptables() -> None:
    forward("iptables")   # exits with the server's status, or returns
    from .iptables import main

    main()


def save() -> None:
    forward("save")
    from .save import main

    main()


def restore() -> None:
    forward("restore")
    from .restore import main

    main()


ENTRIES = {"iptables": iptables, "save": save, "restore": restore}   # client.PROGS


def main() -> None:
    """``-m bpf_iptables.cli.entry PROG ARGS``: the command's argv is ARGS."""
    if len(sys.argv) < 2 or sys.argv[1] not in ENTRIES:
        sys.stderr.write(f"usage: python -m bpf_iptables.cli.entry "
                         f"{{{','.join(ENTRIES)}}} ARGS...\n")
        sys.exit(2)
    entry = ENTRIES[sys.argv.pop(1)]
    entry()


if __name__ == "__main__":
    main()
