"""Run bpf-iptables' command-line programs many times, quickly, in one netns.

Each `python -m bpf_iptables.cli.iptables` costs ~100 ms, almost all of it
interpreter start-up and imports; the suite runs thousands of commands.
This server is started once per namespace (``ip netns exec NS python -m
compat_tests.forkserver``), imports the package once, and for every request
forks a child that runs the requested module exactly as ``python -m`` would
(``runpy.run_module(..., run_name="__main__")`` with ``sys.argv`` set), with
its stdin on /dev/null (or the given text) and stdout/stderr captured.  The child is a fresh
process as far as the program can tell: nothing it does reaches the server
or the next command, and state persists only where the real program keeps
it (the per-netns state directory).

Protocol: one JSON object per line on stdin, ``{"module": ..., "argv": [...],
"stdin": text or null}``;
one JSON object per line on the original stdout, ``{"rc", "stdout", "stderr"}``.
``compat_tests.executor`` is the client; ``BPF_IPTABLES_COMPAT_EXEC=subprocess``
bypasses this server when in doubt.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import runpy
import select
import signal
import sys
import traceback

# Modules whose import is worth sharing.  A module that fails to import here
# (e.g. one being edited) is simply imported again, and fails the same way,
# in the child, which is what a fresh process would do.
PRELOAD = ("bpf_iptables.cli.iptables", "bpf_iptables.cli.save")
TIMEOUT = 60.0  # seconds, as tests.support.netns gives a subprocess
ALLOWED = ("bpf_iptables.cli.iptables", "bpf_iptables.cli.save", "bpf_iptables.cli.restore")


def _child(module: str, argv: list[str], in_fd: int, out_fd: int, err_fd: int) -> None:
    """Never returns: behaves like ``python -m module argv...`` and exits."""
    code = 1
    try:
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.argv = [module, *argv]
        # Preloaded, the module itself would be found in sys.modules, which
        # runpy warns about; python -m starts without it.
        sys.modules.pop(module, None)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_status(exc.code)
        except BaseException:  # the interpreter prints it and exits 1
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_status(value: object) -> int:
    """What the interpreter makes of ``sys.exit(value)``."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    sys.stderr.write(f"{value}\n")
    return 1


def run_one(module: str, argv: list[str], stdin: str | None = None) -> dict[str, object]:
    if module not in ALLOWED:
        raise ValueError(f"module {module} is not a bpf-iptables program")
    if stdin is None:
        in_fd = os.open(os.devnull, os.O_RDONLY)
    else:
        in_fd = os.memfd_create("stdin")
        os.write(in_fd, stdin.encode("utf-8", "surrogateescape"))
        os.lseek(in_fd, 0, os.SEEK_SET)
    out_fd = os.memfd_create("stdout")
    err_fd = os.memfd_create("stderr")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(module, argv, in_fd, out_fd, err_fd)
        status = _wait(pid, TIMEOUT)
        if status is None:
            return {"rc": -signal.SIGKILL, "stdout": _read(out_fd),
                    "stderr": _read(err_fd) + f"[compat_tests: killed after {TIMEOUT}s]\n"}
        return {"rc": os.waitstatus_to_exitcode(status), "stdout": _read(out_fd),
                "stderr": _read(err_fd)}
    finally:
        os.close(in_fd)
        os.close(out_fd)
        os.close(err_fd)


def _wait(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None after killing it at the deadline
    (a command stuck on a lock must not hang the whole suite)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.waitpid(pid, 0)[1]


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def preload() -> None:
    """Import what every command needs, and every extension module: the
    environment sets PYTHONDONTWRITEBYTECODE, so each fresh process
    compiles them all again (~200 ms).  The registry itself is left
    unbuilt; the child still discovers the extensions as a fresh process
    would, it just finds the modules already imported."""
    names = list(PRELOAD)
    try:
        import bpf_iptables.extensions as ext
        names += [f"{ext.__name__}.{m.name}" for m in pkgutil.iter_modules(ext.__path__)]
    except Exception:
        pass
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def serve() -> None:
    # Keep the protocol channel off fd 1, which children inherit and replace.
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    preload()
    for request in sys.stdin:
        if not request.strip():
            continue
        msg = json.loads(request)
        reply.write(json.dumps(run_one(msg["module"], list(msg["argv"]), msg.get("stdin"))) + "\n")
        reply.flush()


if __name__ == "__main__":
    serve()
