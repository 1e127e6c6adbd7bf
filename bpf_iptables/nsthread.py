"""Run a piece of this thread inside a named network namespace.

setns(2) with CLONE_NEWNET moves only the calling thread, and a socket stays
in the namespace it was created in: so a thread can create sockets in a test
or demo namespace and use them after it is back home. The demo traffic
script, the conntrack bench and the traffic tests all need this."""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, what: str = "setns") -> None:
    """This thread into the network namespace open as ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """This thread in namespace ``name`` (under /run/netns) for a moment."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target, f"setns {name}")
        try:
            yield
        finally:
            setns(home, "setns back")
    finally:
        os.close(home)
        os.close(target)
