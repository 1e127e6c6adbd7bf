"""Private network namespaces for benchmark runs, and timing commands in them.

Commands enter the namespace with ``nsenter --net`` rather than ``ip netns
exec``: it skips the extra mount namespace, so less launcher time is added to
both tools (the launcher's own cost is measured and reported separately)."""
from __future__ import annotations

import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence


class CommandFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Namespace:
    name: str

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}", *command]

    def run(self, command: Sequence[str], stdin_path: str | None = None,
            env: dict[str, str] | None = None) -> float:
        """Run command in the namespace; return its wall-clock seconds.

        Output is discarded (and not counted): only success and time matter."""
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            start = time.perf_counter()
            proc = subprocess.run(self.argv(command), stdin=stdin, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env)
            elapsed = time.perf_counter() - start
        finally:
            if stdin_path:
                stdin.close()
        if proc.returncode != 0:
            raise CommandFailed(f"{' '.join(command)} failed in {self.name} "
                                f"(exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
        return elapsed


@contextmanager
def namespace(prefix: str = "bpft-bench") -> Iterator[Namespace]:
    """A fresh namespace, deleted afterwards even when the body fails."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
