"""The two implementations under test, as command lines.

Our CLIs run with the interpreter running the benchmark (the project's
venv), exactly as the installed ``bpf-iptables*`` scripts would."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tool:
    name: str
    command: tuple[str, ...]   # the iptables command
    restore: tuple[str, ...] | None  # iptables-restore, None while it does not exist
    python: bool               # a Python program (can be profiled with cProfile)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


LEGACY = Tool("iptables-legacy", ("iptables-legacy",), ("iptables-legacy-restore",), python=False)


def bpf_tool() -> Tool:
    restore_module = "bpf_iptables.cli.restore"
    restore = ((sys.executable, "-m", restore_module) if _module_exists(restore_module) else None)
    return Tool("bpf-iptables", (sys.executable, "-m", "bpf_iptables.cli.iptables"), restore,
                python=True)


# What loads a rule set into bpf-iptables' state when bpf-iptables-restore is
# missing: bench.seed (for the -A measurement only; never timed as a restore).
SEED = (sys.executable, "-m", "bench.seed")
