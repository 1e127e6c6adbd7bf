"""The two implementations under test, as command lines.

Ours are the installed commands, exactly what a user types: the venv's
``bin/bpf-iptables`` and ``bin/bpf-iptables-restore`` (scripts/setup.sh
installs the C client there, cli/client.c: a command the namespace's
server runs starts no Python; one it does not runs the Python CLI beside
it). A missing command fails the run that needs it, naming the file."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent   # the venv's bin (the bench runs with its python)


class NotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class Tool:
    name: str
    argv: tuple[str, ...]           # the iptables command
    restore_argv: tuple[str, ...]   # the iptables-restore command
    python: bool                    # ours (state to purge; cProfile of `modules`)
    modules: tuple[str, str] = ("", "")   # the Python modules of command and restore

    @property
    def command(self) -> tuple[str, ...]:
        return _present(self.argv)

    @property
    def restore(self) -> tuple[str, ...]:
        return _present(self.restore_argv)


def _present(argv: tuple[str, ...]) -> tuple[str, ...]:
    program = Path(argv[0])
    if program.is_absolute() and not os.access(program, os.X_OK):
        raise NotInstalled(f"{program} is not installed (scripts/setup.sh installs "
                           f"bpf-iptables, -save and -restore into the venv's bin)")
    return argv


LEGACY = Tool("iptables-legacy", ("iptables-legacy",), ("iptables-legacy-restore",), python=False)
BPF = Tool("bpf-iptables", (str(BIN / "bpf-iptables"),), (str(BIN / "bpf-iptables-restore"),),
           python=True, modules=("bpf_iptables.cli.iptables", "bpf_iptables.cli.restore"))
