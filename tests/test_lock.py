"""The xtables lock: serialised concurrent invocations and ``-w``.

Each test points both tools at its own lock file (XTABLES_LOCKFILE, which
iptables honours too), so holding the lock here never blocks anything else
on the machine, and real iptables-legacy shows the expected behaviour
side by side with ours."""
from __future__ import annotations

import fcntl
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.compare import normalize
from tests.support.netns import REPO, Namespace, bpf_command, namespace

TOOLS = {"iptables": ["iptables-legacy"], "bpf-iptables": bpf_command("iptables")}


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "xtables.lock"


def popen(ns: Namespace, tool: str, lock_file: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LC_ALL="C", PYTHONPATH=str(REPO), XTABLES_LOCKFILE=str(lock_file))
    return subprocess.Popen(["ip", "netns", "exec", ns.name, *TOOLS[tool], *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@contextmanager
def held(lock_file: Path) -> Iterator[None]:
    """Hold the lock as another application would."""
    fd = os.open(lock_file, os.O_CREAT | os.O_RDONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_parallel_appends_all_land(tool: str, lock_file: Path) -> None:
    with namespace("bpfl") as ns:
        procs = [popen(ns, tool, lock_file, "-A", "INPUT", "-s", f"10.0.0.{i}", "-j", "ACCEPT")
                 for i in range(1, 21)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert (proc.returncode, out, err) == (0, "", "")
        listing = popen(ns, tool, lock_file, "-S", "INPUT")
        out, _ = listing.communicate(timeout=60)
    rules = [line for line in out.splitlines() if line.startswith("-A INPUT")]
    assert sorted(rules) == sorted(f"-A INPUT -s 10.0.0.{i}/32 -j ACCEPT" for i in range(1, 21))


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_wait_n_gives_up(tool: str, lock_file: Path) -> None:
    with namespace("bpfl") as ns, held(lock_file):
        start = time.monotonic()
        proc = popen(ns, tool, lock_file, "-w", "1", "-A", "INPUT", "-j", "ACCEPT")
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    assert proc.returncode == 4
    assert out == ""
    assert normalize(err) == (f"Can't lock {lock_file}: Resource temporarily unavailable\n"
                              "Another app is currently holding the xtables lock. "
                              "Stopped waiting after 1s.\n")
    assert 0.9 <= elapsed < 5


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("wait", [[], ["-w"], ["-w", "0"], ["--wait"]], ids=repr)
def test_waits_until_released(tool: str, wait: list[str], lock_file: Path) -> None:
    """No -w, bare -w and -w 0 all wait for as long as it takes (1.8.9)."""
    with namespace("bpfl") as ns:
        with held(lock_file):
            proc = popen(ns, tool, lock_file, *wait, "-A", "INPUT", "-j", "DROP")
            time.sleep(1.5)
            assert proc.poll() is None, proc.communicate()
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err) == (0, "", "")
        check = popen(ns, tool, lock_file, "-S", "INPUT")
        listed, _ = check.communicate(timeout=60)
    assert listed == "-P INPUT ACCEPT\n-A INPUT -j DROP\n"


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_parse_errors_do_not_wait(tool: str, lock_file: Path) -> None:
    """The command line is checked before the lock is taken."""
    with namespace("bpfl") as ns, held(lock_file):
        proc = popen(ns, tool, lock_file, "-A", "INPUT", "--bogus")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert 'unknown option "--bogus"' in err


def test_wait_n_for_a_lock_released_in_time(lock_file: Path) -> None:
    with namespace("bpfl") as ns:
        with held(lock_file):
            proc = popen(ns, "bpf-iptables", lock_file, "-w", "10", "-N", "late")
            time.sleep(1)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, "", "")

