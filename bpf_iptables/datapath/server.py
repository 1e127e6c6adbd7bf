"""The command server of an attached namespace: runs bpf-iptables,
bpf-iptables-restore and bpf-iptables-save commands in a process that
stays, so that one update does not redo everything.

Why: a command in a fresh process pays for starting Python and importing
the front end and data path, unpickling the stored rule set and compiling
every classifier from nothing; at 10k rules that is about a second for a
one-rule change. A process that already holds the rule set (and, through
the compiler's and image's module-level caches, what the last update
built) pays only for the change.

Design: the interface watcher (watch.py) starts this process in the
namespace and restarts it when it dies; it dies with the watcher (parent
death signal), so ``detach`` and the namespace's deletion end it too. It
listens on an abstract unix socket (cli/client.py: abstract names belong
to the network namespace, so no other namespace can reach it; only root
peers are served, checked with SO_PEERCRED). Requests are served one at
a time; each runs the CLI's own ``run()`` with the client's stdin,
stdout, stderr (descriptors passed over the socket, put on 0/1/2),
working directory, umask and forwarded environment, so it behaves as the
command would in-process, and takes the xtables lock as it would (``-w``
included: a client the server cannot serve within half a second runs the
command itself rather than queue behind a command waiting for the lock).

Warm state: the stored rule set stays in memory (``CachedStore``) while
the stored generation is the one it holds; a command that loaded it and
did not store it may have changed it (a refused rule), so it is dropped
then. Everything else the CLIs and the data path keep at module level
stays warm by itself.

Requests that carry the test-only hooks that kill or pause an update
(``live.DIE_AT``, ``live.PAUSE_AT``) are refused: they are about the
command's process. See cli/client.py for what a client does when the
server dies during its command."""
from __future__ import annotations

import array
import ctypes
import fcntl
import gc
import io
import operator
import os
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Iterator

from ..cli import client
from .. import state
from .sameness import first_difference

MODULE = "bpf_iptables.datapath.server"
PR_SET_PDEATHSIG = 1
IDLE_GC = 2.0        # seconds without a request before a garbage collection
IDLE_CHECK = 1.0     # seconds between looks at the stored rule set while idle (check_stored)
PROFILE_ENV = "BPF_IPTABLES_SERVER_PROFILE"   # diagnostics: cProfile a request into this file
# tests only, in a request's environment: the server dies (as a crash
# would) when the request begins, or once the command returned
DIE_AT = "BPF_IPTABLES_SERVER_DIE_AT"
LOG_ENV = "BPF_IPTABLES_SERVER_LOG"           # (in the server's environment) log every request
# read by the code at call time: a request may set them as it likes; any
# other BPF_IPTABLES_ variable (e.g. BPF_IPTABLES_BPF_DIR, read at import)
# must be what the server started with, or the request is refused
PER_CALL_ENV = ("BPF_IPTABLES_DATAPATH", "BPF_IPTABLES_RUN_DIR", "BPF_IPTABLES_SHARED_DIR",
                "BPF_IPTABLES_SERVER_DIE_AT", "BPF_IPTABLES_SERVER_PROFILE")
REFUSED_ENV = ("BPF_IPTABLES_DATAPATH_DIE_AT", "BPF_IPTABLES_DATAPATH_PAUSE_AT",
               "BPF_IPTABLES_SERVER")


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    os.write(SAVED[2] if SAVED else 2,
             f"{stamp} server[{os.getpid()}] {message}\n".encode())


SAVED: list[int] = []   # the server's own 0, 1, 2 (watch.log), while a request has them


# -- the stored rule set, kept in memory -------------------------------------------------

@dataclass
class Cache:
    key: tuple | None = None
    ruleset: object = None
    lent: bool = False      # handed to the current request and not stored since
    tables: tuple = ()      # the rule set's tables when it was lent
    # when lent: every chain as (table, chain, policy, its rules list copied)
    chains: list = field(default_factory=list)
    # the request is a bpf-iptables -A, -I or -D: its change may be stored
    # as a journal record (CachedStore.journal_record)
    append_ok: bool = False
    prestore: "Prestore | None" = None   # a snapshot being written (CachedStore.prestore)

    def abort_prestore(self) -> None:
        if self.prestore is not None:
            self.prestore.abort()
            self.prestore = None

    def drop(self) -> None:
        self.key, self.ruleset, self.lent = None, None, False

    def returned(self, readonly: bool) -> None:
        """End of a request: a rule set lent and not stored may have been
        changed (a refused rule), unless the command only reads it (its
        counters are laid on again by every load) and made no table."""
        if self.lent and not (readonly and tuple(self.ruleset.tables) == self.tables):
            self.drop()
        self.lent = False


READ_ONLY = ("CMD_LIST", "CMD_LIST_RULES", "CMD_CHECK")


def classify(req: "Request") -> tuple[bool, str]:
    """Whether the command cannot change the rule set (bpf-iptables-save,
    bpf-iptables -L, -S, -C without -Z), and "append" for bpf-iptables -A,
    -I and -D (changes a journal record can hold)."""
    if req.prog == "save":
        return True, ""
    if req.prog != "iptables":
        return False, ""
    from ..cmdline import parse as P

    try:
        parsed = P.CommandParser(["bpf-iptables", *req.argv], help_printer=lambda m: "").parse()
    except BaseException:
        return False, ""
    if parsed.command in (P.CMD_APPEND, P.CMD_INSERT, P.CMD_DELETE, P.CMD_DELETE_NUM):
        return False, "append"
    return parsed.command in {getattr(P, name) for name in READ_ONLY}, ""


def _store_key(directory: Path) -> tuple | None:
    """What identifies the stored rule set: the generation and its files'
    identities (another process's save writes new files)."""
    try:
        gen = (directory / "current").read_text().strip()
        snap = os.stat(directory / f"snapshot-{gen}")
    except (OSError, ValueError):
        return None
    try:
        journal = os.stat(directory / f"journal-{gen}")
        jkey = (journal.st_ino, journal.st_size, journal.st_mtime_ns)
    except OSError:
        jkey = None
    return gen, snap.st_ino, snap.st_mtime_ns, jkey


def _journal_size(directory: Path) -> int | None:
    """The size of the stored generation's journal (0 without one); None
    without a stored generation."""
    try:
        gen = (directory / "current").read_text().strip()
    except OSError:
        return None
    try:
        return os.stat(directory / f"journal-{gen}").st_size
    except OSError:
        return 0


@dataclass
class Prestore:
    """A child process writing the new rule set's snapshot into ``tmp``
    (an ordinary state.Store there, seeded with the current generation)."""

    pid: int
    tmp: Path
    ruleset: object
    current: str | None     # ``current`` when it began

    def wait(self) -> bool:
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status) == 0

    def abort(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        shutil.rmtree(self.tmp, ignore_errors=True)


def _read_current(directory: Path) -> str | None:
    try:
        return (directory / "current").read_text()
    except OSError:
        return None


class CachedStore(state.Store):
    """A state.Store whose load() hands out the rule set in memory when
    the stored one is still that rule set."""

    def __init__(self, directory: Path, cache: Cache):
        super().__init__(directory)
        self.cache = cache
        # (rule set, its journal_record()): prestore() asks, then save()
        # for the same rule set, which the data path's update in between
        # does not change (each answer compares 10k rules, ~0.2 ms)
        self._journal_memo: tuple | None = None

    def load(self):
        key = _store_key(self.directory)
        c = self.cache
        if key is None or key != c.key or c.lent:
            c.drop()
            ruleset = super().load()
            c.key, c.ruleset = key, ruleset
        c.lent, c.tables = True, tuple(c.ruleset.tables)
        c.chains = [(t.name, ch.name, ch.policy, list(ch.rules))
                    for t in c.ruleset.tables.values() for ch in t.chains.values()]
        return c.ruleset

    def counters_unused(self) -> bool:
        """Whether the request neither shows nor uses rule counters (-A,
        -I, -D): live.AttachedStore.load may then leave the rules' counters
        as this process last laid them (live.laid_base)."""
        return self.cache.append_ok

    def journal_record(self, ruleset) -> tuple | None:
        """When ``ruleset`` is the stored rule set lent to this request
        with one change to one chain and nothing else changed (same tables,
        chains, policies, the same rule objects around the change): the
        journal record that stores it (state.Store._record's tuples:
        ``(table, chain, rules)`` appended, ``("insert", table, chain,
        (index, rules))``, ``("delete_num", table, chain, index)``). Not
        for rules that jump to a user chain (the stored chain index, which
        says which hooks reach a chain, must stay true)."""
        memo = self._journal_memo
        if memo is not None and memo[0] is ruleset:
            return memo[1]
        record = self._journal_record(ruleset)
        self._journal_memo = (ruleset, record)
        return record

    def _journal_record(self, ruleset) -> tuple | None:
        c = self.cache
        if not (c.append_ok and c.lent and ruleset is c.ruleset
                and tuple(ruleset.tables) == c.tables):
            return None
        now = [(t.name, ch.name, ch.policy, ch.rules)
               for t in ruleset.tables.values() for ch in t.chains.values()]
        if [x[:3] for x in now] != [x[:3] for x in c.chains]:
            return None
        found = None
        for (table, chain, _, rules), (_, _, _, before) in zip(now, c.chains):
            if len(rules) == len(before):
                # (a -A, -I or -D never touches another chain; a rule
                # replaced in place would be a -R)
                if rules and (rules[0] is not before[0] or rules[-1] is not before[-1]):
                    return None
                continue
            if found is not None:
                return None
            found = _one_change(table, chain, before, rules)
            if found is None:
                return None
            chains = ruleset.tables[table].chains
            if any(_jumps_to_user_chain(rule, chains) for rule in found[1]):
                return None
        return found[0] if found is not None else None

    def prestore(self, ruleset) -> None:
        """Called by live.AttachedStore.save with the rule set it is about
        to put into the data path (which does not change it): a child
        process pickles and writes its snapshot meanwhile, on the other
        CPU, into a directory of its own; save() moves the files in and
        switches ``current`` (the commit point, as in state.Store.save)
        once the data path switched. Without a child (an append, or fork
        failed), save() stores as usual."""
        c = self.cache
        c.abort_prestore()
        if self.journal_record(ruleset) is not None:
            return
        tmp = self.directory / f".prestore-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        current = _read_current(self.directory)
        try:
            tmp.mkdir(mode=0o700)
            if current is not None:
                (tmp / "current").write_text(current)
            pid = os.fork()
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if pid == 0:   # the child: no lock, no client socket, no output
            status = 1
            try:
                os.closerange(3, 1 << 16)
                state.Store(tmp).save(ruleset)
                status = 0
            finally:
                os._exit(status)
        c.prestore = Prestore(pid, tmp, ruleset, current)

    def _commit_prestored(self, ruleset) -> bool:
        pre, self.cache.prestore = self.cache.prestore, None
        if pre is None:
            return False
        try:
            if pre.ruleset is not ruleset or _read_current(self.directory) != pre.current \
                    or not pre.wait():
                return False
            names = sorted(os.listdir(pre.tmp))
            if "current" not in names:
                return False
            for name in names:
                if name != "current" and not name.endswith(".tmp"):
                    os.replace(pre.tmp / name, self.directory / name)
            os.replace(pre.tmp / "current", self.directory / "current")   # stored
            if pre.current is not None:
                old = int(pre.current)
                for kind in ("snapshot", "index", "journal"):
                    self._file(kind, old).unlink(missing_ok=True)
            return True
        finally:
            pre.abort()

    def save(self, ruleset) -> None:
        """An append, insert or delete (``journal_record()``) is stored as
        a journal record, as an unattached -A is: no snapshot of the whole
        rule set (its pickle, ~0.1 s at 10k rules, and the fork of this
        process that makes it off the client's time). The snapshot's
        counters may then be older than the data path's; an attached
        namespace's commands take the data path's (live.AttachedStore.load),
        and detach stores them in a new snapshot. Anything else is the
        snapshot prestore() wrote, or an ordinary save."""
        c = self.cache
        record = self.journal_record(ruleset)
        self._journal_memo = None
        c.drop()
        journal_size = _journal_size(self.directory)
        if record is not None and journal_size is not None \
                and journal_size < self.JOURNAL_LIMIT:
            c.abort_prestore()
            self._record(record)
        elif not self._commit_prestored(ruleset):
            super().save(ruleset)
        key = _store_key(self.directory)
        if key is not None:
            c.key, c.ruleset = key, ruleset


def _one_change(table: str, chain: str, before: list, rules: list
                ) -> tuple[tuple, list] | None:
    """The journal record for ``before`` -> ``rules`` when that is rules
    appended or inserted at one place, or one rule deleted (rule objects
    compared by identity, in C: 10k rules in well under a millisecond),
    and the rules added or deleted."""
    n, m = len(before), len(rules)
    head = first_difference(rules, before, min(n, m))
    if m > n:
        k = m - n
        if not all(map(operator.is_, rules[head + k:], before[head:])):
            return None
        new = rules[head:head + k]
        if head == n:
            return (table, chain, new), new
        return ("insert", table, chain, (head, new)), new
    if m == n - 1 and all(map(operator.is_, rules[head:], before[head + 1:])):
        return ("delete_num", table, chain, head), [before[head]]
    return None


def _jumps_to_user_chain(rule, chains) -> bool:
    target = rule.target
    return target.is_standard and target.name in chains and not chains[target.name].builtin


# -- one request --------------------------------------------------------------------------

@dataclass
class Request:
    prog: str
    request_id: str
    umask: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def decode(data: bytes) -> Request:
    words = data.split(b"\0")
    prog, rid, umask, n = words[0].decode(), words[1].decode(), int(words[2]), int(words[3])
    argv = [os.fsdecode(w) for w in words[4:4 + n]]
    env = {}
    for w in words[4 + n:]:
        k, _, v = os.fsdecode(w).partition("=")
        env[k] = v
    return Request(prog, rid, umask, argv, env)


def fixed_env(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("BPF_IPTABLES_")
            and k not in PER_CALL_ENV and k != LOG_ENV}


def _runner(prog: str):
    if prog == "iptables":
        from ..cli.iptables import run
        _install_validated()
    elif prog == "restore":
        from ..cli.restore import run
    elif prog == "save":
        from ..cli.save import run
    else:
        raise ValueError(prog)
    return run


class Server:
    def __init__(self, directory: Path):
        self.directory = directory
        self.cache = Cache()
        self.request: Request | None = None
        self.busy = False
        self.stop_after = False
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(client.ENV_PREFIXES)}
        self.name = client.socket_name()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.name)   # EADDRINUSE: one runs already
        self.sock.listen(16)
        self.served = 0
        self.log_requests = bool(os.environ.get(LOG_ENV))
        self.fixed_env = fixed_env(os.environ)
        self.later: list = []   # warm-up steps left for idle time (warm_later)
        self.last_env: dict[str, str] = {}   # the last request's environment
        self.mirroring: Mirroring | None = None
        self.held_lock: int | None = None   # the xtables lock, until settle()
        self.held_path: Path | None = None  # its file (state.lock_path() then)
        # the grace thread's wake-up (live.grace_start): readable once it ended
        self.grace_r, self.grace_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._primed: tuple | None = None   # (store key, record serial, compiled): prime_compile
        self._prime_waits = 0
        self._primed_key: tuple | None = None   # the stored rule set last primed

    # the xtables lock, as the CLIs take it, noting which request holds it
    @contextmanager
    def locked(self, wait: int) -> Iterator[state.Store]:
        """state.locked, except that the lock outlives the command when its
        update left a carry to read (live.Unsettled): held (``held_lock``)
        until that carry is read, after the grace period that follows the
        switch (after_switch, loop). A request served while that grace
        period runs takes the held lock over (the same lock file: no
        moment without it, so no other command comes in between) and leaves
        the carry to its own reads (live.settle waits for the grace period
        first); its update compiles and builds its images meanwhile."""
        lock_file = state.lock_path()
        fd = -1
        if self.held_lock is not None:
            live = sys.modules.get("bpf_iptables.datapath.live")
            if live is not None and live.grace_pending() and self.held_path == lock_file:
                fd, self.held_lock = self.held_lock, None
            else:
                self.settle()   # (a command taking the lock twice: not on itself)
        try:
            if fd < 0:
                fd = os.open(lock_file, os.O_CREAT | os.O_RDONLY, 0o600)
                state.acquire(fd, wait, lock_file)
            store = state.Store(state.namespace_dir())
            req = self.request
            if req is not None:
                from .attachment import write_atomic   # (no flush behind other I/O)
                write_atomic(store.directory / client.MARK_FILE,
                             f"{req.request_id} {client.stored(store.directory)}\n".encode())
            if store.directory != self.directory:
                yield store   # not our namespace's state (cannot happen: same env)
            else:
                yield CachedStore(store.directory, self.cache)
        finally:
            live = sys.modules.get("bpf_iptables.datapath.live")
            if live is not None:
                live.DEFER_CARRY = True   # (a command before _import_commands imported it)
                if live.unsettled() and self.held_lock is None and fd >= 0:
                    self.held_lock, self.held_path, fd = fd, lock_file, -1
            if fd >= 0:
                os.close(fd)

    def serve_one(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(creds[4:8], sys.byteorder) != 0:
            return   # the client runs it itself (and fails as it would)
        try:
            conn.sendall(b"R")
        except OSError:
            return   # the client gave up waiting: it runs the command itself
        conn.settimeout(5.0)
        try:
            data, ancdata, flags, _ = conn.recvmsg(client.MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
        except OSError:
            return
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        try:
            if not data or len(fds) != 4:
                return   # closed: the client runs it itself
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                conn.sendall(b"F")   # cut short: never run a shortened argv
                return
            req = decode(data)
            if req.prog not in client.PROGS or any(k in req.env for k in REFUSED_ENV) \
                    or fixed_env(req.env) != self.fixed_env:
                conn.sendall(b"F")
                return
            status = self.run(req, list(fds))
            try:
                conn.sendall(b"E%d" % status)
            except OSError:
                pass   # the client is gone; the command was done
        finally:
            for fd in fds:
                os.close(fd)

    def run(self, req: Request, fds: list[int]) -> int:
        """The CLI's run() with the client's descriptors, directory, umask, environment."""
        if req.env.get(DIE_AT) == "begin":
            os._exit(137)
        readonly, command = classify(req)   # before the client's descriptors: it prints nothing
        self.cache.append_ok = command == "append"
        self.request, self.busy = req, True
        old_umask = os.umask(req.umask)
        os.environ.clear()
        os.environ.update(self.base_env)
        os.environ.update(req.env)
        self.last_env = dict(os.environ)
        for i in range(3):
            os.dup2(fds[i], i)
        os.fchdir(fds[3])
        streams = (sys.stdin, sys.stdout, sys.stderr)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8",
                                     errors="surrogateescape")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                      errors="surrogateescape", line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        status = 1
        steps = sys.modules.get("bpf_iptables.datapath.live")
        if steps:
            steps.STEPS.clear()
        began, cpu = time.perf_counter(), time.process_time()
        profile = req.env.get(PROFILE_ENV)
        try:
            if profile:
                import cProfile

                prof = cProfile.Profile()
                try:
                    status = prof.runcall(_runner(req.prog), req.argv)
                finally:
                    prof.dump_stats(profile)
            else:
                status = _runner(req.prog)(req.argv)
            if req.env.get(DIE_AT) == "done":
                os._exit(137)
        except SystemExit as stop:
            code = stop.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                sys.stderr.write(f"{code}\n")
        except BaseException:   # what would have been a traceback in-process
            traceback.print_exc()
            status = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except OSError:
                    status = 120 if status == 0 else status   # as Python's exit does
            sys.stdin, sys.stdout, sys.stderr = streams
            for i in range(3):
                os.dup2(SAVED[i], i)
            os.chdir("/")
            os.umask(old_umask)
            os.environ.clear()
            os.environ.update(self.base_env)
            self.cache.abort_prestore()   # the update failed before storing
            self.cache.returned(readonly)
            self.cache.append_ok = False
            self.request, self.busy = None, False
            self.served += 1
            if self.log_requests:
                # names ending in "#" are counts, the others seconds
                detail = " ".join(f"{k} {v:.0f}" if k.endswith("#") else f"{k} {v * 1000:.1f}"
                                  for k, v in steps.STEPS.items()) if steps else ""
                _log(f"{req.prog} {' '.join(req.argv)[:60]}: status {status} in "
                     f"{(time.perf_counter() - began) * 1000:.1f} ms, cpu "
                     f"{(time.process_time() - cpu) * 1000:.1f} ms (update ms: {detail})")
        return status

    def loop(self) -> int:
        collected = True
        while not self.stop_after:
            if self.held_lock is not None and self.grace_wait():
                continue   # (the grace period ended: settled, lock let go)
            if self.later and not _pending(self.sock):
                self.warm_later()
                continue
            self.sock.settimeout(IDLE_CHECK if collected else IDLE_GC)
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                if not collected:
                    gc.collect()   # off the requests' path
                    collected = True
                self.check_stored()
                continue
            with conn:
                try:
                    self.serve_one(conn)
                except Exception:
                    _log("request failed: " + traceback.format_exc())
            collected = False
            self.after_switch()
        return 0

    def after_switch(self) -> None:
        """After an update switched generations, start waiting for the RCU
        grace period (~10-30 ms) in a thread (live.grace_start), rather
        than in the next update (live.quiesce): the loop settles the carry
        and lets go of the lock when it ends (grace_wait), or the next
        request takes both over and overlaps it with its compile and
        images. When the update loaded new programs, the other generation
        gets the same ones while idle (``mirror``)."""
        live = sys.modules.get("bpf_iptables.datapath.live")
        if live is None:
            self.settle()
            return
        if "flip+carry" not in live.STEPS:
            if self.held_lock is not None and not live.grace_pending():
                self.settle()   # (a carry left with no grace under way: read now)
            return   # (else the loop settles once the grace period ends)
        live.STEPS.clear()
        self._primed_key = self.cache.key   # (what it compiled and imaged: no priming)
        try:
            self._drain()   # (a wake-up left by an earlier thread: not this one's)
            live.grace_start(self.grace_done)
        except Exception:
            _log("grace period: " + traceback.format_exc())
            self.settle()
        if live.G.LOADED:
            # the lock the request took (state.lock_path() in its environment)
            lock = Path(self.last_env.get("XTABLES_LOCKFILE") or state.XT_LOCK_NAME)
            self.later.append(lambda: self.mirror_start(lock))

    def grace_done(self) -> None:
        """Called by the grace thread when it ends: wakes the loop."""
        try:
            os.write(self.grace_w, b"g")
        except OSError:
            pass   # (the pipe is full: the loop is awake already)

    def grace_wait(self) -> bool:
        """While the grace period after the last switch runs and the lock
        is held for its carry: wait for it to end or for a client, which
        is then served (True: settled, nothing else to do now)."""
        live = sys.modules.get("bpf_iptables.datapath.live")
        if live is None or not live.grace_pending():
            return False
        while live.grace_running():
            ready = select.select([self.sock, self.grace_r], [], [], IDLE_CHECK)[0]
            if self.sock in ready:
                return False   # a client: it takes the lock and the carry over
            if self.grace_r in ready:
                # done() is the thread's last step: what is left of it is
                # its exit, which is_alive() may not show yet (waiting on
                # for a wake-up that already came held the lock, which
                # other xtables users wait for, up to IDLE_CHECK); settle
                # joins the thread in any case
                break
        self._drain()
        if _pending(self.sock):
            return False
        self.settle(zero=True)
        return True

    def _drain(self) -> None:
        try:
            os.read(self.grace_r, 64)
        except BlockingIOError:
            pass

    def settle(self, zero: bool = False) -> None:
        """The last update's carry (live.settle), after the grace period
        (the old generation counts no more), under the lock that update
        held (``held_lock``), which is then let go. ``zero``: after a grace
        period (after_switch), the old generation's counters are zeroed
        for the next update."""
        live = sys.modules.get("bpf_iptables.datapath.live")
        fd, self.held_lock, self.held_path = self.held_lock, None, None
        try:
            if live is not None:
                live.settle(zero)   # (waits for a grace period under way)
        except Exception:
            _log("settle: " + traceback.format_exc())
        finally:
            if fd is not None:
                os.close(fd)

    # -- the other generation, while idle ------------------------------------------------

    def mirror_start(self, lock: Path) -> bool:
        """Load (from the object cache, not pinned) the programs the last
        update loaded, for the other generation (generation.mirror_plan),
        as spares (generation.SPARE): the kernel verifies them in a thread
        while requests are served, and an update that needs such a program
        (the next one, which prepares that generation) takes its spare
        rather than loading one. Without the lock: nothing shared changes
        here."""
        from . import attachment as A, generation as G

        self.mirror_drop()
        att = A.read(self.directory)
        if att is None:
            G.LOADED.clear()
            return False
        plan = G.mirror_plan(self.directory, att)
        if not plan:
            return False
        for hook, shape in plan.items():
            G.SPARE[(hook, G.is_tc(att.mode, hook))] = \
                G.mirror_load(self.directory, hook, shape, att.mode)
        self.mirroring = Mirroring(att.serial, att.active, lock, time.perf_counter())
        self.later.append(self.mirror_finish)
        return False

    def mirror_finish(self) -> bool:
        """Once the spares are verified and no update took them: under the
        lock (only if free now: a command is never delayed by this), and
        only if no update happened since mirror_start, pin them as the
        inactive generation's programs and record them; the next update is
        then map-only (~0.3-0.9 s at 10k rules off the first update after
        a restore). True: not yet (asked again shortly)."""
        from . import attachment as A, generation as G

        m = self.mirroring
        if m is None or not G.SPARE:
            return self.mirror_drop()   # taken by an update meanwhile
        if any(G.verifying(p) for p in G.SPARE.values()):
            return time.perf_counter() - m.began < MIRROR_GIVE_UP or self.mirror_drop()
        fd = os.open(m.lock, os.O_CREAT | os.O_RDONLY, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return time.perf_counter() - m.began < MIRROR_GIVE_UP or self.mirror_drop()
            att = A.read(self.directory)
            if att is None or att.serial != m.serial or att.active != m.active \
                    or att.pending is not None:
                return self.mirror_drop()   # an update came first
            done = []
            for (hook, _), prog in list(G.SPARE.items()):
                try:
                    if G.mirror_pin(self.directory, att, hook, prog):
                        done.append(hook)
                except OSError as exc:   # the kernel refused it: the next update loads one
                    _log(f"mirror {hook}: {exc}")
                    break
            if done:
                A.write(self.directory, att)
                if self.log_requests:
                    _log(f"loaded {', '.join(done)} into the inactive generation in "
                         f"{(time.perf_counter() - m.began) * 1000:.1f} ms")
            return self.mirror_drop()
        finally:
            os.close(fd)   # (releases the lock)

    def mirror_drop(self) -> bool:
        """Close the spares (the pins hold those mirror_finish pinned)."""
        from . import generation as G

        self.mirroring = None
        for prog in G.SPARE.values():
            try:
                prog.close()
            except OSError:
                pass
        G.SPARE.clear()
        return False

    def warm_later(self) -> None:
        """One step of the work left for idle time (``later``): each takes
        a fraction of a second (a client waits at most client.READY_WAIT
        for the server's attention); a step that answers True is asked
        again after 10 ms without a client."""
        step = self.later.pop(0)
        try:
            again = step()
        except Exception:
            _log(f"idle step: {traceback.format_exc()}")
            again = False
        if again:
            self.later.append(step)
            select.select([self.sock], [], [], 0.01)

    def warm(self) -> None:
        """Import what commands use and load the stored rule set before the
        first request needs them: steps left for idle time (``later``), so
        that a command sent at once (a restore right after attach) is
        served rather than run in-process by a client tired of waiting.
        Without the lock: a rule set stored meanwhile only makes the cache
        miss."""
        self.later = [_import_commands, self.load_stored, _import_update_path,
                      _after_attach_grace, self.prime_compile]

    def load_stored(self) -> None:
        try:
            CachedStore(self.directory, self.cache).load()
            self.cache.lent = False
        except Exception:
            self.cache.drop()

    # -- the first update's work, done while idle ---------------------------------------
    #
    # An update patches the last compile and image of each hook (compiler
    # _Flat, image matrix_rows): a server that has served no update yet
    # (just started by an attach, or restarted by the watcher), or whose
    # stored rule set another process wrote (`attach --mode` stores it
    # again; a command a busy server left to its client), would compile
    # and build every image from nothing in its next update: ~0.25-0.3 s
    # at 10k rules instead of ~20 ms. The steps below do that work for the
    # stored rule set beforehand, as an update would, writing nothing: the
    # module-level caches then hold what the next update patches. A rule
    # set stored meanwhile only makes the caches miss (the update then
    # builds everything, as before); a failure only leaves them cold.

    def check_stored(self) -> None:
        """While idle: a rule set stored by another process (an attach in
        another mode, a command a busy server left to its client) is
        primed for the next update too."""
        if not self.later and not self.cache.lent \
                and _store_key(self.directory) not in (self._primed_key, None):
            self.later = [self.prime_compile]

    def prime_compile(self) -> bool:
        """Compile (and check, ValidatedRules) the stored rule set. Waits
        (True: asked again shortly) while the lock is held: the attach that
        started this server may store the rule set again before letting go."""
        from . import attachment as A, live
        from .compiler import interfaces_here

        self._primed = None
        if not _lock_free(state.lock_path()):
            self._prime_waits += 1
            if self._prime_waits < PRIME_WAITS:
                return True
        self._prime_waits = 0
        if self._primed_key is not None and self._primed_key == _store_key(self.directory):
            return False   # (an update served since compiled and imaged it)
        c = self.cache
        if c.key is None or c.key != _store_key(self.directory):
            self.load_stored()
        self._primed_key = c.key   # (tried once per stored rule set, even if it fails)
        att = A.read(self.directory)
        if c.ruleset is None or c.lent or att is None or att.pending is not None:
            return False
        began = time.perf_counter()
        table = c.ruleset.table("filter")
        from ..cli import iptables
        iptables.validate_table(table)   # ValidatedRules: remembers every rule checked
        self._primed = (c.key, att.serial, live.compile_all(table, interfaces_here(), att.mode))
        if self.log_requests:
            _log(f"primed the compile in {(time.perf_counter() - began) * 1000:.1f} ms")
        self.later.append(self.prime_image)   # (after a mirror_finish queued before)
        return False

    def prime_image(self) -> bool:
        """The images of the primed compile for the programs the next update
        writes: the inactive generation's, as generation.prepare picks them
        when they cover the compile; where that generation has none yet
        (after an attach) the active one's, the shape prepare would load
        again for the same rule set (generation.roomy). Once a mirroring
        under way is over (it may give the inactive generation programs)."""
        from . import attachment as A, generation as G

        if self.mirroring is not None:
            return True   # (mirror_finish gives up after MIRROR_GIVE_UP)
        primed, self._primed = self._primed, None
        att = A.read(self.directory)
        if primed is None or att is None or att.pending is not None \
                or primed[:2] != (self.cache.key, att.serial) or self.cache.lent:
            return False
        began = time.perf_counter()
        other = 1 - att.active
        G.images(att, other if att.slots[other].get("hooks") else att.active, primed[2])
        if self.log_requests:
            _log(f"primed the images in {(time.perf_counter() - began) * 1000:.1f} ms")
        return False


PRIME_WAITS = 1000   # x 10 ms: a lock held longer than that, the first update builds all


def _lock_free(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)   # (releases it)


def _import_commands() -> None:
    from ..cli import iptables, restore, save  # noqa: F401
    from . import live

    live.DEFER_CARRY = True   # an update's carry read once its client has the answer

    _install_validated()


def _install_validated() -> None:
    from ..cli import iptables

    if not isinstance(iptables.validate_table, ValidatedRules):
        iptables.validate_table = ValidatedRules()   # looked up at call time by apply()


MIRROR_GIVE_UP = 10.0   # seconds: programs not pinned by then are dropped


@dataclass
class Mirroring:
    """Spares loaded for the inactive generation (Server.mirror_start)."""

    serial: int                 # the record's when they were planned
    active: int
    lock: Path
    began: float


def _pending(sock: socket.socket) -> bool:
    """Whether a client is waiting to be accepted."""
    return bool(select.select([sock], [], [], 0)[0])


def _import_update_path() -> None:
    """What the first update imports (~0.1 s: numpy alone ~60 ms, first
    needed by program.map_names and image.map_image)."""
    import numpy  # noqa: F401

    from . import compiler, generation, image, objcache, program, shadow  # noqa: F401


def _after_attach_grace() -> None:
    """An RCU grace period after the attach's switch (which was made by
    another process): the first update need not wait for one
    (live.quiesce, 5-20 ms when the switch was recent)."""
    from . import live

    live.grace_period()


@dataclass
class _Checked:
    """One chain as ValidatedRules last checked it."""

    rules: list            # its rules then (held: their ids stay theirs)
    reach: frozenset[str]  # the hooks that reached it


class ValidatedRules:
    """validate.validate_table for the commands the server runs: a rule
    object checked before for the same hooks is not checked again (~12 ms
    of an -A or -I at 10k rules went to checking 10k unchanged rules).
    Sound because a rule is never changed in place once parsed (commands
    replace rule objects: -R, -E), its checks depend only on the rule and
    the hooks that reach its chain (jumps into built-in chains: names no
    user chain can have), and the memo holds the rules it names, so their
    ids stay theirs. Only the last table's rules are remembered.

    Per chain: a chain whose rules are the same objects as last time
    (compared in C) is skipped whole; in a changed one only the rules not
    there before are checked (one rule added, removed or replaced found by
    compiler.single_edit, ~0.2 ms at 10k rules, also after a -D the memo did
    not see (_added_removed); otherwise by set operations on ids, ~2-6
    ms). The
    hooks reaching each chain (validate.chain_hooks, a walk over every
    rule) are computed again only when the chains changed or a rule added
    or removed jumps to a user chain: nothing else changes them."""

    def __init__(self) -> None:
        self.seen: dict[str, _Checked] = {}
        self.hooks: dict[str, frozenset[str]] | None = None
        self.names: tuple[str, ...] = ()

    def __call__(self, table) -> None:
        from ..validate import chain_hooks, validate_rule

        names = tuple(table.chains)
        same_hooks = self.hooks is not None and names == self.names
        changes: dict[str, tuple[list, list]] = {}   # chain -> (rules, new)
        for chain in table.chains.values():
            rules = chain.rules
            memo = self.seen.get(chain.name)
            if memo is not None and len(rules) == len(memo.rules) \
                    and all(map(operator.is_, rules, memo.rules)):
                continue
            found = _added_removed(memo.rules, rules) if memo is not None else None
            if memo is None:
                new, gone = list(rules), []
            elif found is not None:
                new, gone = found
            else:
                ids, was = set(map(id, rules)), set(map(id, memo.rules))
                fresh, old = ids - was, was - ids
                new = list(compress(rules, map(fresh.__contains__, map(id, rules))))
                gone = list(compress(memo.rules, map(old.__contains__, map(id, memo.rules))))
            changes[chain.name] = (rules, new)
            if same_hooks and any(_jumps_to_user_chain(r, table.chains) for r in new + gone):
                same_hooks = False
        hooks = self.hooks if same_hooks else chain_hooks(table)
        assert hooks is not None
        seen: dict[str, _Checked] = {}
        for chain in table.chains.values():   # TableOpError: nothing remembered
            reach = hooks[chain.name]
            memo = self.seen.get(chain.name)
            change = changes.get(chain.name)
            if change is None:
                check = [] if memo.reach == reach else chain.rules
                seen[chain.name] = memo if memo.reach == reach else \
                    _Checked(memo.rules, reach)
            else:
                rules, new = change
                check = new if memo is not None and memo.reach == reach else rules
                seen[chain.name] = _Checked(list(rules), reach)
            for rule in check:
                validate_rule(rule, reach, table)
        self.seen, self.hooks, self.names = seen, hooks, names


def _added_removed(before: list, rules: list) -> tuple[list, list] | None:
    """(rules added, rules removed), by identity, when ``rules`` is
    ``before`` with one rule added, removed or replaced, possibly after one
    rule removed first: -D is not validated (cli.iptables: ONLY_REMOVE),
    so after -I 1, -D 1 the memo holds the rules of the -I when the next
    -A comes. None: more changed. (Each rule of ``rules`` not in the
    first list is in the second: a superset of what is new.)"""
    from .compiler import single_edit

    def parts(edit: tuple[str, int], old: list, now: list) -> tuple[list, list]:
        kind, k = edit
        return ([now[k]] if kind in ("insert", "replace") else [],
                [old[k]] if kind in ("delete", "replace") else [])

    edit = single_edit(before, rules)
    if edit is not None:
        return parts(edit, before, rules)
    # the removed rule is where the lists first differ, from the front or
    # from the back (the other edit lies beyond it)
    n = min(len(before), len(rules))
    front = first_difference(before, rules, n)
    back = len(before) - 1 - first_difference(reversed(before), reversed(rules), n)
    for h in {front, back}:
        if 0 <= h < len(before):
            fewer = before[:h] + before[h + 1:]
            edit = single_edit(fewer, rules)
            if edit is not None:
                new, gone = parts(edit, fewer, rules)
                return new, gone + [before[h]]
    return None


def _on_term(server: Server):
    def handler(signum, frame):
        # the watcher is gone (parent death) or we are told to stop: never
        # in the middle of a command (the data path's update is not
        # interrupted by us), else at once
        if server.busy:
            server.stop_after = True
        else:
            raise SystemExit(0)
    return handler


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "serve":
        sys.stderr.write(f"usage: python -m {MODULE} serve DIR\n")
        return 2
    directory = Path(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    parent = os.getppid()
    if parent == 1 or directory != state.run_dir() / f"netns-{state.netns_cookie()}":
        return 1   # the watcher is already gone, or the wrong namespace
    gc.disable()   # as the CLIs do; collected when idle instead
    from . import shadow
    shadow.enabled = True   # this process writes the maps again: differences only
    SAVED.extend(os.dup(i) for i in range(3))
    try:
        server = Server(directory)
    except OSError as exc:
        _log(f"not serving: {exc}")
        return 1
    signal.signal(signal.SIGTERM, _on_term(server))
    state.locked = server.locked   # the CLIs look it up at call time
    server.warm()
    _log(f"serving {directory}")
    return server.loop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
