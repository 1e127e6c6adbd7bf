"""Whether this machine can run the eBPF data path, found before any compile.

``check()`` looks, cheaply, for everything ``attach`` needs and raises
``NoEbpfSupport`` (exit status 1) naming each cause that is missing and its
fix, instead of letting bcc, the kernel or mount fail later with a
traceback or an opaque message:

- bcc: the ``bcc`` module (Debian's python3-bpfcc) importable by this
  Python, with its libbcc. A venv made without --system-site-packages does
  not see Debian's bcc even when it is installed.
- kernel headers: bcc compiles every program against the running kernel's
  headers, found where bcc looks for them (``$BCC_KERNEL_SOURCE``, else
  /lib/modules/$(uname -r)/source or build, else the kernel's own
  /sys/kernel/kheaders.tar.xz).
- the bpf() system call: one trivial XDP program is loaded (two
  instructions, no bcc) and closed. ENOSYS: a kernel without BPF; EPERM:
  not root (loading XDP needs CAP_BPF and CAP_NET_ADMIN), or a sandbox
  (seccomp, container) that forbids bpf().
- the bpf filesystem at the pin root (see attachment.py): the kernel must
  have it, and it must be mountable. Where ``attach`` would mount it (in
  the host's mount namespace), it is mounted here, so that a refusal is
  reported with its cause; from inside ``ip netns exec`` the existing
  BpffsMissing message (with the command to run) is left to
  ``attachment.ensure_bpffs()``.

Causes are all reported at once (a fresh machine often lacks several).
"""
from __future__ import annotations

import ctypes
import errno
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import OTHER_PROBLEM, XtablesError
from . import attachment as A

SYS_BPF = 321                     # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_XDP = 6
XDP_PASS = 2
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
SETUP = "scripts/setup.sh sets up a Debian 12 machine for it"


class NoEbpfSupport(XtablesError):
    """What this machine lacks to run the data path (exit status 1)."""

    def __init__(self, causes: list[str]):
        lines = ["no eBPF support for the data path:"] + [f"  - {c}" for c in causes]
        super().__init__("\n".join(lines + [f"  ({SETUP})"]), OTHER_PROBLEM)
        self.causes = causes


# -- bcc ------------------------------------------------------------------------------

def bcc_problem() -> str | None:
    try:
        # found, not imported: programs loaded from the object cache
        # (objcache.py) need no bcc, and importing it (libbcc) costs ~0.1 s
        if importlib.util.find_spec("bcc") is None:
            raise ImportError("No module named 'bcc'")
        return None
    except (ImportError, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if DEBIAN_BCC.is_dir() and sys.flags.no_site:
        return (f"bcc is installed ({DEBIAN_BCC}) but this Python was started with -S "
                f"(no site packages), so it cannot import it ({reason}): run it without -S")
    if DEBIAN_BCC.is_dir():
        venv = sys.prefix != sys.base_prefix
        return (f"bcc is installed ({DEBIAN_BCC}) but this Python ({sys.executable}) does not "
                f"see it ({reason})"
                + (": its venv was made without system site packages; recreate it with "
                   "`python3 -m venv --system-site-packages`, or run /usr/bin/python3"
                   if venv and not _venv_sees_system() else
                   ": run bpf-iptables with Debian's /usr/bin/python3 or a venv made with "
                   "--system-site-packages"))
    return (f"bcc (the BPF Compiler Collection for Python) is not importable by "
            f"{sys.executable} ({reason}): install it with `apt-get install python3-bpfcc`")


def _venv_sees_system() -> bool:
    try:
        cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return False
    return any(line.replace(" ", "").lower() == "include-system-site-packages=true"
               for line in cfg.splitlines())


# -- kernel headers ----------------------------------------------------------------------

def headers_dir() -> Path:
    """Where bcc looks for the running kernel's headers (its loader's order)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return Path(env)
    kdir = Path("/lib/modules") / os.uname().release
    if (kdir / "build").is_dir() and (kdir / "source").is_dir():
        return kdir / "source"
    return kdir / os.environ.get("BCC_KERNEL_MODULES_SUFFIX", "build")


def headers_problem() -> str | None:
    where = headers_dir()
    # bcc's own test: a leftover build directory without headers does not count
    if (where / "include" / "linux" / "kconfig.h").is_file():
        return None
    release = os.uname().release
    if Path("/sys/kernel/kheaders.tar.xz").is_file() or _kheaders_module(release):
        return None   # CONFIG_IKHEADERS: bcc unpacks the kernel's own headers (modprobe-ing them)
    install = (f"install the kernel headers (`apt-get install linux-headers-{release}`, or "
               f"linux-headers-amd64 and link /lib/modules/{release}/build to "
               f"/usr/src/linux-headers-*-amd64)")
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return (f"$BCC_KERNEL_SOURCE={where} has no include/linux/kconfig.h (bcc compiles "
                f"against the kernel headers there): point it at the headers, or unset it and "
                f"{install}")
    return f"no kernel headers at {where} (bcc compiles against them): {install}"


def _kheaders_module(release: str) -> bool:
    try:
        return "/kheaders.ko" in (Path("/lib/modules") / release / "modules.dep").read_text()
    except OSError:
        return False


# -- the bpf() system call -------------------------------------------------------------

class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 80)]


def bpf_errno() -> int:
    """Load `r0 = XDP_PASS; exit' as an XDP program: 0, or the errno."""
    insns = (ctypes.c_uint64 * 2)(
        0xB7 | (XDP_PASS << 32),   # BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm XDP_PASS
        0x95)                      # BPF_JMP | BPF_EXIT
    license = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_XDP, insn_cnt=2,
                         insns=ctypes.addressof(insns), license=ctypes.addressof(license))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def bpf_problem() -> str | None:
    err = bpf_errno()
    if err == 0:
        return None
    if err == errno.ENOSYS:
        return ("the kernel has no bpf() system call (ENOSYS: built without CONFIG_BPF_SYSCALL, "
                "or a sandbox hides it): run on a kernel with BPF and XDP, e.g. Debian 12's")
    if err == errno.EPERM:
        who = ("not root" if os.geteuid() != 0 else
               "refused although root: a container or seccomp policy forbids bpf(), or "
               "kernel lockdown")
        return (f"the kernel refused bpf() (EPERM, {who}): loading XDP programs needs root "
                "(CAP_BPF and CAP_NET_ADMIN); run bpf-iptables-datapath as root, outside "
                "sandboxes that forbid bpf()")
    if err == errno.EINVAL:
        return "the kernel cannot load XDP programs (EINVAL): it needs XDP support (4.8 or later)"
    return f"the kernel refused to load an XDP program ({errno.errorcode.get(err, err)}: " \
           f"{os.strerror(err)})"


# -- bpffs ---------------------------------------------------------------------------------

def kernel_has_bpffs() -> bool:
    try:
        return any(line.split()[-1] == "bpf" for line in open("/proc/filesystems"))
    except OSError:
        return False


def bpffs_problem() -> str | None:
    root = A.pin_root()
    if A.is_bpffs(root):
        return None
    if not kernel_has_bpffs():
        return ("the kernel has no bpf filesystem (not in /proc/filesystems): the data path "
                "pins its programs there; run on a kernel with CONFIG_BPF_SYSCALL")
    if A.inside_ip_netns_exec():
        return None   # attachment.ensure_bpffs() says how to mount it from the host
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"cannot create the pin directory {root}: {exc.strerror}"
    r = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True, text=True)
    if r.returncode:
        return (f"cannot mount the bpf filesystem at {root} "
                f"({(r.stderr or r.stdout).strip() or f'mount exit status {r.returncode}'}): "
                f"mount it as root in the host's mount namespace "
                f"(mkdir -p {root} && mount -t bpf bpf {root})")
    return None


def problems() -> list[str]:
    found = [p for p in (bcc_problem(), headers_problem()) if p]
    kernel = bpf_problem()
    if kernel:
        found.append(kernel)   # without bpf() there is no point mounting anything
    elif p := bpffs_problem():
        found.append(p)
    return found


def check() -> None:
    """Raise NoEbpfSupport (exit 1) naming what is missing and how to fix it."""
    found = problems()
    if found:
        raise NoEbpfSupport(found)
