"""A command paused by the data path's PAUSE_AT hook while datagrams are
sent into the window: what the counter tests use to put packets between
an update's counter read and its switch (live.PAUSE_AT)."""
from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.support.netns import REPO


def send_while_paused(argv: list[str], env: dict[str, str], step: str, client: str,
                      target: tuple[str, int], count: int = 3) -> None:
    """Run ``argv`` paused 2 s after ``step``; once it is paused, send
    ``count`` UDP datagrams to ``target`` from inside the namespace
    ``client``; then the command must succeed."""
    from tests.test_datapath_traffic import inside

    marker = f"/tmp/paused-{os.getpid()}-{time.monotonic_ns()}"
    cmd = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(REPO), **env,
                                      "BPF_IPTABLES_DATAPATH_PAUSE_AT": f"{step}:2:{marker}"})
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(marker)
        with inside(client):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tx:
            for _ in range(count):
                tx.sendto(b"x", target)
        assert cmd.wait(60) == 0
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait()
        if os.path.exists(marker):
            os.unlink(marker)
