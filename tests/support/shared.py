"""Where the shared test data lives: ``shared/`` beside the repository.

CI clones the repository somewhere new and puts a copy of ``shared/`` beside
the clone, so nothing may assume an absolute path. A missing directory is an
error at collection time, never an empty parametrisation."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    env = os.environ.get("BPF_IPTABLES_SHARED_DIR")
    path = Path(env) if env else REPO.parent / "shared"
    if not path.is_dir():
        raise RuntimeError(f"shared/ not found at {path} (set BPF_IPTABLES_SHARED_DIR)")
    return path


def iptables_tests_dir() -> Path:
    """iptables' .t files (the compat suite's $BPF_IPTABLES_TESTS_DIR wins)."""
    env = os.environ.get("BPF_IPTABLES_TESTS_DIR")
    path = Path(env) if env else shared_dir() / "iptables-tests"
    if not path.is_dir():
        raise RuntimeError(f"iptables' .t files not found at {path}")
    return path


def rulesets() -> list[Path]:
    """The ClassBench rule sets, sorted; never empty."""
    found = sorted((shared_dir() / "rulesets").glob("*.rules"))
    if not found:
        raise RuntimeError(f"no *.rules in {shared_dir() / 'rulesets'}")
    return found


def ruleset(name: str) -> Path:
    path = shared_dir() / "rulesets" / name
    if not path.is_file():
        raise RuntimeError(f"rule set {path} not found")
    return path
