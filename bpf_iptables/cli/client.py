"""The CLIs' side of the namespace's command server (datapath/server.py).

A command in an attached namespace is handed to the server, which holds
the rule set, compiled classifiers and map images in memory and runs the
very same ``run()`` in-process; this process only forwards and waits. It
must decide cheaply: only the standard library's _socket (the C module:
``socket`` adds enum and selectors, ~5 ms), os, sys and array are
imported here (never the model, bcc, numpy or lark), and a namespace
without a server costs one refused ``connect()``.

Protocol (one command per connection, on the abstract unix socket of the
namespace, which no other network namespace can reach):

1. the server, once it is free to serve this connection, sends ``R``; a
   client that hears nothing within ``READY_WAIT`` (the server is busy
   or hung) closes and runs the command itself, and the server, finding
   the connection closed, never runs it;
2. the client sends one message: the program, argv, the forwarded
   environment, umask and a request id, with its stdin, stdout, stderr
   and working directory as descriptors (SCM_RIGHTS): the command reads
   and writes them directly, so output is byte for byte what it would be
   in-process;
3. the server answers ``E<status>`` or ``F`` (refused: run it yourself;
   nothing was done).

If the connection ends after step 2 without an answer (the server died),
the command may have been applied, and must not be applied twice: the
server notes ``<request id> <stored generation>`` in the namespace's
state directory each time the command takes the xtables lock. Under the
lock the client compares: not noted, or the stored rule set unchanged
since the note (a dying update left at most a ``pending`` record, which
the rerun resolves before running) -> run it here; changed -> it was
applied: say so on stderr and exit 0.

The installed commands are this module's C twin (client.c, the same
protocol and constants, cross-checked by tests/test_cli_client_c.py): it
forwards without starting Python, and execs the Python CLI (``python -P
-m bpf_iptables.cli.entry PROG ARGS``) for everything but an E answer,
telling forward() by CLIENT_ENV what it already tried."""
from __future__ import annotations

import _socket
import array
import os
import sys

SOCKET_NAME = b"\0bpf-iptables"
READY_WAIT = 0.5     # seconds: a busy or hung server is not waited for longer
# the largest message the server reads (its recvmsg buffer): a longer one
# (an argv of over 64 KiB) is run in-process, never sent cut short
MAX_MESSAGE = 1 << 16
MARK_FILE = "server.request"
# what a command's behaviour depends on besides argv (iptables reads
# XTABLES_LOCKFILE; ours read BPF_IPTABLES_*; messages follow the locale)
ENV_PREFIXES = ("BPF_IPTABLES_", "XTABLES_", "LC_", "LANG")
PROGS = ("iptables", "restore", "save")
# The installed commands are client.c, which execs the Python CLI whenever
# the server did not answer E<status>, with this set (popped by forward(),
# so that no process the command starts inherits it): LOCAL when nothing
# was done, or the request id the server ended with
CLIENT_ENV = "BPF_IPTABLES_CLIENT"
LOCAL = "local"
ENTRY_MODULE = "bpf_iptables.cli.entry"   # what client.c runs: python -P -m ENTRY_MODULE prog args
SERVER_ENV, SERVER_OFF = "BPF_IPTABLES_SERVER", "off"   # off: every command runs in-process

_tried = False   # main() of a CLI run by -m forwards once, not twice


def socket_name(env: dict[str, str] | os._Environ = os.environ) -> bytes:
    """One server per network namespace and state directory (tests point
    BPF_IPTABLES_RUN_DIR elsewhere)."""
    run = env.get("BPF_IPTABLES_RUN_DIR")
    return SOCKET_NAME if not run else SOCKET_NAME + b":" + os.fsencode(run)


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def encode(prog: str, argv: list[str], request_id: str) -> bytes:
    """NUL-separated fields: prog, id, umask, n argv words, the words, then
    KEY=VALUE pairs (os.fsencode: argv round-trips undecodable bytes)."""
    umask = os.umask(0)
    os.umask(umask)
    words = [prog.encode(), request_id.encode(), b"%d" % umask, b"%d" % len(argv)]
    words += [os.fsencode(a) for a in argv]
    words += [os.fsencode(f"{k}={v}") for k, v in forwarded_env().items()]
    return b"\0".join(words)


def _connect() -> _socket.socket | None:
    try:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    except OSError:
        return None
    try:
        s.settimeout(READY_WAIT)
        s.connect(socket_name())
        # only root's server is trusted with a root command (anyone in the
        # namespace could bind the name first)
        uid = int.from_bytes(s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)[4:8],
                             sys.byteorder)
        if uid != 0 or s.recv(1) != b"R":
            s.close()
            return None
        return s
    except OSError:   # no server (ECONNREFUSED, ENOENT), busy or hung (timeout)
        s.close()
        return None


def forward(prog: str, argv: list[str] | None = None) -> None:
    """Run the command in the namespace's server and exit with its status;
    return (having done nothing) when the command must run here."""
    global _tried
    if _tried:
        return
    _tried = True
    handed = os.environ.pop(CLIENT_ENV, None)
    if handed is not None:   # from client.c, which asked the server already
        if handed != LOCAL:
            _after_death(prog, handed, _tell())   # (client.c rewound a file on stdin)
        return
    if os.environ.get(SERVER_ENV) == SERVER_OFF:
        return
    argv = sys.argv[1:] if argv is None else argv
    request_id = f"{os.getpid()}.{os.urandom(6).hex()}"
    message = encode(prog, argv, request_id)
    if len(message) > MAX_MESSAGE:
        return   # the server would read it cut short
    s = _connect()
    if s is None:
        return
    stdin_at = _tell()   # the server reads our stdin
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fds = array.array("i", [0, 1, 2, cwd])
        s.settimeout(None)   # from here on the command may wait for the lock (-w)
        try:
            s.sendmsg([message],
                      [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds.tobytes())])
        except OSError:   # not sent (e.g. a closed stdout: EBADF): nothing was done
            return
        try:
            answer = s.recv(16)
        except OSError:
            answer = b""
    finally:
        os.close(cwd)
        s.close()
    if answer.startswith(b"E"):
        _exit(int(answer[1:]))
    if answer == b"F":
        return
    _after_death(prog, request_id, stdin_at)


def _tell() -> int | None:
    try:
        return os.lseek(0, 0, os.SEEK_CUR)
    except OSError:
        return None   # a pipe or a terminal


def _after_death(prog: str, request_id: str, stdin_at: int | None) -> None:
    """The server ended after our request was sent: return to run the
    command here when that is safe, else exit."""
    if _not_applied(request_id):
        if stdin_at is not None:
            os.lseek(0, stdin_at, os.SEEK_SET)
        elif prog == "restore":
            # it may have read part of a pipe that cannot be read again
            sys.stderr.write("bpf-iptables-restore: the bpf-iptables server ended before "
                             "applying the input; nothing was changed\n")
            sys.exit(1)
        return
    sys.stderr.write(f"warning: the bpf-iptables server ended after applying the command "
                     f"(request {request_id}); its output may be incomplete\n")
    sys.exit(0)


def _exit(status: int) -> None:
    """Exit now with the server's status. Without the interpreter's
    shutdown (module teardown, the final collection: ~2-3 ms of a served
    command's ~20): this process ran nothing but the forwarding, and what
    it may have buffered is flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status & 0xFF)


def _not_applied(request_id: str) -> bool:
    """After the server died with our request: whether running it here is
    safe (module doc). Rare: may import the state module."""
    from .. import state

    with state.locked(-1) as store:
        try:
            noted, was = (store.directory / MARK_FILE).read_text().split(" ", 1)
        except (OSError, ValueError):
            return True
        return noted != request_id or was.strip() == stored(store.directory)


def stored(directory) -> str:
    """What changes whenever a rule set is stored: the generation
    (``current``) and its journal's size (the server stores an append as a
    journal record)."""
    try:
        gen = (directory / "current").read_text().strip()
    except OSError:
        return "0 0"
    try:
        size = os.stat(directory / f"journal-{gen}").st_size
    except OSError:
        size = 0
    return f"{gen} {size}"
