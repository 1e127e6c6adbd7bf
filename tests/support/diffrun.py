"""Differential runs: one command sequence against iptables-legacy and
bpf-iptables, each in its own namespace, every result compared.

Builds on ``pair.py``; adds the few normalisations the command line needs
beyond the message prefix (the program name in ``-h``'s usage lines and
``! -V``'s version), runs both tools concurrently to halve the wall time,
and collects every mismatch of a sequence instead of stopping at the first,
so one failing test shows the whole picture."""
from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

from .netns import bpf_command
from .pair import REAL_TOOLS, Outcome, Pair

# Compared after every sequence: the whole state, as rules and as a listing.
FINAL_CHECKS = ("-S", "-L -v -x -n --line-numbers")

# Our CLI is a fresh Python process per command; let it cache bytecode
# (outside the work tree) even where the environment disables that.
FAST_PYTHON = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": "/tmp/bpf-iptables-pycache"}

_EXTRA = [
    (re.compile(r"\bbpf-iptables\b"), "iptables"),
    (re.compile(r"^Not [0-9.]+ \((legacy|bpf)\) ;-\)$", re.M), "Not X ;-)"),
]


def normalize_more(outcome: Outcome) -> Outcome:
    def fix(text: str) -> str:
        for pattern, repl in _EXTRA:
            text = pattern.sub(repl, text)
        return text

    return Outcome(fix(outcome.stdout), fix(outcome.stderr), outcome.returncode)


@dataclass
class Mismatch:
    command: str
    real: Outcome
    ours: Outcome

    def __str__(self) -> str:
        return (f"$ iptables {self.command}\n=== iptables-legacy\n{self.real}\n"
                f"=== bpf-iptables\n{self.ours}\n")


class DiffRunner:
    """Runs commands on both sides of a ``Pair`` at the same time."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self._pool = ThreadPoolExecutor(max_workers=2)

    def close(self) -> None:
        self._pool.shutdown()

    def both(self, args: list[str], tool: str = "iptables",
             input: str | None = None) -> tuple[Outcome, Outcome]:
        real = self._pool.submit(self.pair.real.run, [REAL_TOOLS[tool], *args], input=input)
        ours = self._pool.submit(self.pair.ours.run, bpf_command(tool, *args), input=input,
                                 env=FAST_PYTHON)
        return (normalize_more(Outcome.of(real.result())),
                normalize_more(Outcome.of(ours.result())))

    def compare(self, command: str | list[str]) -> Mismatch | None:
        args = shlex.split(command) if isinstance(command, str) else list(command)
        real, ours = self.both(args)
        if real == ours:
            return None
        return Mismatch(shlex.join(args), real, ours)

    def sequence(self, commands: Iterable[str | list[str]],
                 final: Iterable[str] = FINAL_CHECKS) -> list[Mismatch]:
        """Every command, then the final state checks; all mismatches."""
        found = []
        for command in [*commands, *final]:
            mismatch = self.compare(command)
            if mismatch is not None:
                found.append(mismatch)
        return found

    def reset(self) -> list[Mismatch]:
        """Back to an empty table with ACCEPT policies and zero counters."""
        return self.sequence(["-F", "-X", "-P INPUT ACCEPT", "-P FORWARD ACCEPT",
                              "-P OUTPUT ACCEPT", "-Z"], final=())


    def restore_reset(self, chains: Iterable[str] = ()) -> list[Mismatch]:
        """The same reset as ``reset()`` plus empty user ``chains``, in one
        iptables-restore call per side (each process start costs)."""
        dump = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        dump += "".join(f":{c} - [0:0]\n" for c in chains) + "COMMIT\n"
        real, ours = self.both([], tool="iptables-restore", input=dump)
        if real == ours and real.returncode == 0:
            return []
        return [Mismatch("(iptables-restore reset)", real, ours)]


def report(mismatches: list[Mismatch]) -> str:
    return "\n".join(str(m) for m in mismatches)
