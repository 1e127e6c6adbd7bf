"""The two implementations under test, as command lines.

Our CLIs run with the interpreter running the benchmark (the project's
venv), exactly as the installed ``bpf-iptables*`` scripts would."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tool:
    name: str
    command: tuple[str, ...]   # the iptables command
    restore: tuple[str, ...]   # the iptables-restore command
    python: bool               # a Python program (can be profiled with cProfile)


LEGACY = Tool("iptables-legacy", ("iptables-legacy",), ("iptables-legacy-restore",), python=False)
BPF = Tool("bpf-iptables", (sys.executable, "-m", "bpf_iptables.cli.iptables"),
           (sys.executable, "-m", "bpf_iptables.cli.restore"), python=True)
