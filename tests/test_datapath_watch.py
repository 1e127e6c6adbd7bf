"""The interface watcher (bpf_iptables/datapath/watch.py): interfaces that
appear after the rules were loaded get the programs and the rules that name
them, vanished ones leave the record, and the watcher lives exactly as long
as the attachment and its namespace.

This process becomes a child subreaper for the module, so the watchers
(daemons, orphaned at start) are reparented to it and their exit can be
observed and reaped here; pid 1 of the test machine does not reap.

The commands and watchers of this module take a lock file of their own
($XTABLES_LOCKFILE): the lock is shared by every namespace, and how long
other users of the machine hold it is not what these tests measure."""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.netns import REPO, namespace
from tests.test_datapath_traffic import (Pair, datapath_command, ensure_bpffs, sh, topology,
                                         udp)

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
PINS = Path("/run/bpf-iptables/bpffs")
NEW_CLIENT_IP, NEW_SERVER_IP = "10.98.0.1", "10.98.0.2"

started: list[tuple[int, int]] = []   # (pid, start time) of every watcher seen


@pytest.fixture(scope="module", autouse=True)
def reaper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ensure_bpffs()
    old_lock = os.environ.get("XTABLES_LOCKFILE")
    os.environ["XTABLES_LOCKFILE"] = str(tmp_path_factory.mktemp("lock") / "xtables.lock")
    assert _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if old_lock is None:
            del os.environ["XTABLES_LOCKFILE"]
        else:
            os.environ["XTABLES_LOCKFILE"] = old_lock
        for pid, start in started:   # whatever outcome: no watcher outlives the tests
            if _start_time(pid) == start:
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        while True:   # orphans reparented to us (watchers, their resync children)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _start_time(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else int(fields[19])


def _wait_gone(pid: int, timeout: float) -> int | None:
    """Wait for ``pid`` (our child by reparenting) to exit and reap it: its
    wait status, or None if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:   # not ours (cannot happen here) or reaped
            return 0 if _start_time(pid) is None else None
        if done:
            return status
        time.sleep(0.05)
    return None


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


class Watched:
    """One namespace's state directory, read from outside."""

    def __init__(self, run: Callable[[list[str]], subprocess.CompletedProcess]):
        self.run = run
        self.dir = Path(run([sys.executable, "-c",
                             "from bpf_iptables import state; print(state.namespace_dir())"]
                            ).stdout.strip())

    def datapath(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(datapath_command(*args))

    def record(self) -> dict | None:
        try:
            return json.loads((self.dir / "datapath.json").read_text())
        except FileNotFoundError:
            return None

    def pid(self) -> int | None:
        try:
            pid, start = map(int, (self.dir / "watch.pid").read_text().split())
        except FileNotFoundError:
            return None
        if (pid, start) not in started:
            started.append((pid, start))
        return pid if _start_time(pid) == start else None

    def watchers(self, kind: bytes = b"daemon") -> list[int]:
        """Every process running the watcher of this namespace (or its resync)."""
        found = []
        for p in os.listdir("/proc"):
            try:
                argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"bpf_iptables.datapath.watch" in argv and kind in argv \
                    and str(self.dir).encode() in argv and _start_time(int(p)) is not None:
                found.append(int(p))
        return found


def resyncs(w: Watched) -> list[int]:
    return w.watchers(b"resync")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}


def in_ns(name: str) -> Callable[[list[str]], subprocess.CompletedProcess]:
    return lambda argv: subprocess.run(["ip", "netns", "exec", name, *argv], env=env(),
                                       capture_output=True, text=True, timeout=60)


def xdp_id(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev],
                         capture_output=True, text=True).stdout
    links = json.loads(out or "[]")
    return int(((links[0].get("xdp") or {}).get("prog") or {}).get("id", 0)) if links else 0


def drops(t: Pair) -> int:
    out = t.server.bpf_iptables("-L", "INPUT", "-v", "-x", "-n").stdout
    (line,) = [ln for ln in out.splitlines() if " s1 " in ln]
    return int(line.split()[0])


def root_id(record: dict) -> int:
    """The XDP root program every interface carries (live.py's roots)."""
    return record["roots"]["xdp_root"]


def test_new_interface_covered_vanished_forgotten_watcher_follows_attach():
    with topology("dpw") as t:
        s = t.server
        w = Watched(in_ns(s.name))
        r = w.datapath("attach")
        assert r.returncode == 0, r.stderr
        pid = w.pid()
        assert pid is not None and f"interface watcher pid {pid}" in r.stdout
        # a second attach keeps the one watcher
        assert w.datapath("attach").returncode == 0
        assert w.pid() == pid and w.watchers() == [pid]

        # a rule naming an interface that does not exist yet
        assert s.bpf_iptables("-A", "INPUT", "-i", "s1", "-p", "udp", "-j", "DROP").returncode == 0
        sh("ip", "link", "add", "c1", "netns", t.client.name, "type", "veth", "peer", "name",
           "s1", "netns", s.name)
        for ns, dev, addr in ((t.client, "c1", NEW_CLIENT_IP), (s, "s1", NEW_SERVER_IP)):
            sh("ip", "-n", ns.name, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns.name, "link", "set", dev, "up")
        wait_for("s1 attached", lambda: "s1" in (w.record() or {}).get("interfaces", {})
                 and xdp_id(s.name, "s1") == root_id(w.record()) != 0)
        assert xdp_id(s.name, "s0") == root_id(w.record())
        r = w.datapath("status")
        assert r.returncode == 0 and "s1 ifindex" in r.stdout, r.stdout
        # the rule now drops what arrives on s1, and only that
        assert drops(t) == 0
        assert udp(t, 5301, 3, far=NEW_SERVER_IP) == 0
        assert drops(t) == 3
        assert udp(t, 5301, 2) == 2 and drops(t) == 3

        # renamed: still filtered, under its new name, and `-i s1' no longer matches it
        sh("ip", "-n", s.name, "link", "set", "s1", "down")
        sh("ip", "-n", s.name, "link", "set", "s1", "name", "s1x")
        sh("ip", "-n", s.name, "link", "set", "s1x", "up")
        wait_for("s1x recorded", lambda: set(w.record()["interfaces"]) == {"lo", "s0", "s1x"})
        assert xdp_id(s.name, "s1x") == root_id(w.record())
        assert udp(t, 5301, 2, far=NEW_SERVER_IP) == 2 and drops(t) == 3

        # the interface goes: the record forgets it
        sh("ip", "-n", s.name, "link", "del", "s1x")
        wait_for("s1x forgotten", lambda: "s1x" not in w.record()["interfaces"])
        r = w.datapath("status")
        assert r.returncode == 0 and "s1x" not in r.stdout, r.stdout
        assert udp(t, 5301, 2) == 2

        # a watcher that died: status says so; the next attach restarts it
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid, 5) is not None
        r = w.datapath("status")
        assert r.returncode == 1 and "interface watcher not running" in r.stdout, r.stdout
        assert w.datapath("attach").returncode == 0
        pid = w.pid()
        assert pid is not None and w.watchers() == [pid]
        assert w.datapath("status").returncode == 0

        # detach stops it
        r = w.datapath("detach")
        assert (r.returncode, r.stdout) == (0, "detached\n"), r.stderr
        assert _wait_gone(pid, 5) is not None and w.watchers() == []
        assert not (w.dir / "watch.pid").exists()
        assert w.datapath("status").stdout == "not attached\n"


@pytest.mark.parametrize("lock_held", [False, True])
def test_watcher_exits_when_the_named_namespace_is_deleted(lock_held: bool):
    """Also while a resync waits for the lock (held here): the deleted
    namespace is not kept alive by the watcher nor by its resync."""
    with namespace("dpwd") as ns:
        sh("ip", "-n", ns.name, "link", "set", "lo", "up")
        w = Watched(in_ns(ns.name))
        assert w.datapath("attach").returncode == 0
        pid = w.pid()
        assert pid is not None
        pins = PINS / w.dir.name
        assert pins.is_dir()
        lock = os.open(os.environ["XTABLES_LOCKFILE"], os.O_RDONLY)
        try:
            if lock_held:
                fcntl.flock(lock, fcntl.LOCK_EX)
                sh("ip", "-n", ns.name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
                wait_for("a resync waiting", lambda: len(resyncs(w)) == 1)
            sh("ip", "netns", "del", ns.name)
            status = _wait_gone(pid, 5 + 3 * lock_held)
            assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            assert resyncs(w) == []
        finally:
            os.close(lock)
        if lock_held:
            assert "pins left for the next attach" in (w.dir / "watch.log").read_text()
            shutil.rmtree(pins)
        else:
            # it detached on its way out: no pins keep the programs alive
            assert not pins.exists() and not (w.dir / "datapath.json").exists()


def test_watcher_exits_when_nothing_else_holds_an_unnamed_namespace(tmp_path):
    """``unshare -n``: no name to watch; the namespace dies with its last
    process, which the watcher must not keep alive."""
    out = tmp_path / "dir"
    script = (f"ip link set lo up && {sys.executable} -c 'from bpf_iptables import state; "
              f"print(state.namespace_dir())' > {out} && "
              f"{' '.join(datapath_command('attach'))}")
    r = subprocess.run(["unshare", "-n", "sh", "-c", script], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    directory = Path(out.read_text().strip())
    pid, start = map(int, (directory / "watch.pid").read_text().split())
    started.append((pid, start))
    status = _wait_gone(pid, 8)
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not (PINS / directory.name).exists()
