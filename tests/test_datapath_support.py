"""No eBPF support gives a clear error, not a traceback (datapath/support.py).

Every cause is provoked for real, for one process, without touching the
root namespace: a venv without system site packages (no bcc), bcc's own
BCC_KERNEL_SOURCE pointing at an empty directory (no headers), a non-root
user (EPERM), a seccomp filter that makes bpf() fail with ENOSYS or EPERM
for root (a kernel without BPF; a sandbox), a seccomp filter that makes
mount() fail (bpffs not mountable). ``bpf-iptables-datapath attach`` runs in
a fresh namespace each time and must exit 1 with a message naming the
cause, leaving nothing attached."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bpf_iptables.datapath import support
from tests.support.netns import REPO, Namespace, namespace

RULES = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p udp -m udp --dport 53 -j ACCEPT\nCOMMIT\n"
SYS_BPF, SYS_MOUNT = 321, 165   # x86_64

# Runs argv[3:] with a seccomp filter that fails syscall argv[1] with errno
# argv[2] (kept across execve thanks to no_new_privs): what a kernel or a
# sandbox without that syscall looks like to the process.
SECCOMP = r"""
import ctypes, os, sys
nr, err, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
LD, JEQ, RET = 0x20, 0x15, 0x06
prog = (F * 6)(F(LD, 0, 0, 4), F(JEQ, 0, 3, 0xC000003E),      # arch x86_64, else allow
               F(LD, 0, 0, 0), F(JEQ, 0, 1, nr),               # the syscall number
               F(RET, 0, 0, 0x00050000 | err), F(RET, 0, 0, 0x7FFF0000))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                         # PR_SET_NO_NEW_PRIVS
fprog = P(6, prog)
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execv(argv[0], argv)
"""


@pytest.fixture(autouse=True)
def own_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own xtables lock: /run/xtables.lock is shared by every namespace,
    and these failures need not wait for other work on the machine."""
    monkeypatch.setenv("XTABLES_LOCKFILE", str(tmp_path / "xtables.lock"))


def datapath(*args: str) -> list[str]:
    return [sys.executable, "-m", "bpf_iptables.cli.datapath", *args]


def failing(nr: int, err: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-c", SECCOMP, str(nr), str(err), *argv]


@contextmanager
def loaded() -> Iterator[Namespace]:
    """A fresh namespace with a stored rule set; its state removed at the end."""
    with namespace("bpfsup") as ns:
        try:
            r = ns.run([sys.executable, "-m", "bpf_iptables.cli.restore"], input=RULES)
            assert r.returncode == 0, r.stderr
            yield ns
        finally:
            ns.run([sys.executable, "-c", "import shutil; from bpf_iptables import state; "
                    "shutil.rmtree(state.namespace_dir(), ignore_errors=True)"])


def assert_clear_failure(ns: Namespace, r, *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("bpf-iptables-datapath: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    # nothing attached, nothing recorded
    assert "xdp" not in subprocess.run(["ip", "-n", ns.name, "link"], capture_output=True,
                                       text=True, check=True).stdout
    assert ns.run(datapath("status")).stdout == "not attached\n"


def test_nothing_is_missing_here() -> None:
    assert support.problems() == []
    assert support.bpf_errno() == 0


def test_bcc_not_importable_from_a_venv_without_system_site_packages(tmp_path: Path) -> None:
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    with loaded() as ns:
        r = ns.run([python, "-m", "bpf_iptables.cli.datapath", "attach"])
        assert_clear_failure(ns, r, "no eBPF support", "does not see it",
                             "--system-site-packages")


def test_kernel_headers_missing(tmp_path: Path) -> None:
    env = {"BCC_KERNEL_SOURCE": str(tmp_path)}
    with loaded() as ns:
        r = ns.run(datapath("attach"), env=env)
        assert_clear_failure(ns, r, f"$BCC_KERNEL_SOURCE={tmp_path} has no include/linux/kconfig.h",
                             "linux-headers-")
    # the cause is real: bcc itself cannot compile there
    r = subprocess.run([sys.executable, "-c", "import bcc; bcc.BPF(text='int f(void *c) "
                        "{ return 0; }')"], capture_output=True, text=True,
                       env={**os.environ, **env})
    assert r.returncode != 0 and "Unable to find kernel headers" in r.stdout + r.stderr


def test_not_root_gets_eperm() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # the check itself, as a user: bpf() refused with EPERM
    r = subprocess.run([*nobody, sys.executable, "-c",
                        "from bpf_iptables.datapath import support; print(support.bpf_errno()); "
                        "print(support.problems())"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(REPO), **os.environ})
    assert r.returncode == 0, r.stderr
    code, found = r.stdout.splitlines()
    assert int(code) == errno.EPERM
    assert "EPERM, not root" in found
    # the command, as a user: a message, no traceback
    with loaded() as ns:
        r = ns.run([*nobody, *datapath("attach")])
        assert_clear_failure(ns, r, "you must be root")


def test_kernel_without_bpf_syscall() -> None:
    with loaded() as ns:
        r = ns.run(failing(SYS_BPF, errno.ENOSYS, datapath("attach")))
        assert_clear_failure(ns, r, "no bpf() system call (ENOSYS")


def test_bpf_forbidden_for_root_by_a_sandbox() -> None:
    with loaded() as ns:
        r = ns.run(failing(SYS_BPF, errno.EPERM, datapath("attach")))
        assert_clear_failure(ns, r, "refused bpf() (EPERM, refused although root")


def test_bpffs_not_mountable(tmp_path: Path) -> None:
    # A pin root that is not mounted, in the host's mount namespace (nsenter
    # --net keeps it: attach would mount there), with mount() refused.
    run = tmp_path / "run"
    env = {**os.environ, "BPF_IPTABLES_RUN_DIR": str(run)}
    env.setdefault("PYTHONPATH", str(REPO))
    with loaded() as ns:
        try:
            r = subprocess.run(["nsenter", f"--net=/run/netns/{ns.name}",
                                *failing(SYS_MOUNT, errno.EPERM, datapath("attach"))],
                               capture_output=True, text=True, env=env, timeout=60)
            assert_clear_failure(ns, r, f"cannot mount the bpf filesystem at {run}/bpffs",
                                 "mount -t bpf bpf")
        finally:
            if subprocess.run(["mountpoint", "-q", str(run / "bpffs")]).returncode == 0:
                subprocess.run(["umount", str(run / "bpffs")], check=True)
