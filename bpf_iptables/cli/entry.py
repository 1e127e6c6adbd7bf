"""The installed commands' entry points (pyproject's [project.scripts]).

Why a module of its own: an entry point ``bpf_iptables.cli.iptables:main``
imports that module, and with it the whole front end (the command-line
parser, the extensions, the model: ~60 ms), before main() can hand the
command to the namespace's command server (cli/client.py), which makes
that work pointless. These functions forward first, importing only the
client, and import the command's module only when it runs here."""
from __future__ import annotations

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
