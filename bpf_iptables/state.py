"""Where a network namespace's rule set lives between invocations.

Each CLI call is a short process; the rule set (and, with the data path,
its pinned programs and maps) outlives it. State is keyed by the netns
cookie, which unlike the namespace inode is never reused before reboot, and
kept under /run, which is visible however the namespace was entered
(``ip netns exec`` remounts /sys but not /run).

Concurrent invocations serialise on iptables' own flock, with iptables
1.8.9's ``-w`` semantics: wait N seconds with -w N, otherwise (bare -w, no
-w, -w 0) wait for as long as it takes."""
from __future__ import annotations

import errno
import fcntl
import os
import pickle
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RESOURCE_PROBLEM
from .model import RuleSet

SO_NETNS_COOKIE = 71
FORMAT_VERSION = 1


def run_dir() -> Path:
    return Path(os.environ.get("BPF_IPTABLES_RUN_DIR", "/run/bpf-iptables"))


def netns_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, sys.byteorder)


def namespace_dir() -> Path:
    """This namespace's state directory, created on first use.

    A new directory is made under a temporary name with its namespace id
    inside, then renamed, so the garbage collector never sees one without
    its id. First use is also when the state of deleted namespaces is
    removed: that keeps the cost off every other invocation."""
    path = run_dir() / f"netns-{netns_cookie()}"
    if path.is_dir():
        return path
    from . import state_gc

    run_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = run_dir() / f".new-{os.getpid()}"
    tmp.mkdir(mode=0o700, exist_ok=True)
    (tmp / state_gc.ID_FILE).write_text(state_gc.current_netns_id() + "\n")
    try:
        os.rename(tmp, path)
    except OSError:  # another invocation in this namespace made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    state_gc.collect(run_dir(), keep=path)
    return path


XT_LOCK_NAME = "/run/xtables.lock"


def lock_path() -> Path:
    """iptables' lock file: $XTABLES_LOCKFILE, else /run/xtables.lock.

    Sharing iptables' file (rather than one per namespace) serialises us
    with iptables itself, as a drop-in replacement should; it also keeps
    the "Can't lock FILE" message identical."""
    return Path(os.environ.get("XTABLES_LOCKFILE") or XT_LOCK_NAME)


class LockBusy(Exception):
    """-w N ran out (iptables 1.8.9 waits forever unless given a positive N)."""

    def __init__(self, wait: int, lock_file: Path):
        self.wait = wait
        self.lock_file = lock_file

    def message(self) -> str:
        return (f"Can't lock {self.lock_file}: Resource temporarily unavailable\n"
                "Another app is currently holding the xtables lock. "
                f"Stopped waiting after {self.wait}s.\n")


@contextmanager
def locked(wait: int) -> Iterator["Store"]:
    """Hold the xtables lock, then open the namespace's state.

    As in xtables_lock(): a positive ``wait`` bounds the wait in seconds;
    0 (no -w), -1 (bare -w) and negative values wait for as long as it takes."""
    lock_file = lock_path()
    fd = os.open(lock_file, os.O_CREAT | os.O_RDONLY, 0o600)
    try:
        _acquire(fd, wait, lock_file)
        yield Store(namespace_dir())
    finally:
        os.close(fd)


def _acquire(fd: int, wait: int, lock_file: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if wait <= 0:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return

    # PEP 475 retries interrupted calls whose handler returns, so raise
    # from the handler to stop waiting.
    def give_up(*_: object) -> None:
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(wait)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except TimeoutError:
        raise LockBusy(wait, lock_file) from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Store:
    """The persisted rule set of one namespace (call under the lock)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "ruleset.pickle"

    def load(self) -> RuleSet:
        try:
            with open(self.path, "rb") as fh:
                version, ruleset = pickle.load(fh)
        except FileNotFoundError:
            return RuleSet()
        if version != FORMAT_VERSION:
            raise RuntimeError(f"state format {version} in {self.path} is not {FORMAT_VERSION}")
        return ruleset

    def save(self, ruleset: RuleSet) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump((FORMAT_VERSION, ruleset), fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


__all__ = ["locked", "lock_path", "LockBusy", "Store", "RESOURCE_PROBLEM", "netns_cookie"]
