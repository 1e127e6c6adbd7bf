"""The interface watcher: keeps an attached namespace's data path in step
with the interfaces that come and go.

Why: the data path is attached per interface, and ``-i NAME`` is compiled
to an ifindex. Without help, an interface created after the last update
carries no program, and a rule naming it matches nothing, until the next
rule change; an interface that vanished stays in the record.

Design: ``bpf-iptables-datapath attach`` starts one small daemon per
namespace (``start()``), inside that namespace; ``detach`` stops it
(``stop()``) before detaching. The daemon

- listens to rtnetlink link events (a raw ``NETLINK_ROUTE`` socket bound
  to ``RTMGRP_LINK``: no parsing needed, an event only means "look
  again"), and also looks every second, so a lost event (ENOBUFS) only
  delays a resync;
- after a burst of events has been quiet for 100 ms (at most 1 s after
  the first), compares the namespace's interfaces (name -> ifindex) with
  the record's; only a difference triggers a resync, so its own XDP
  attachments (which are link events too) do not loop;
- resyncs in a short child process (``resync()``): take iptables' lock,
  as every bpf-iptables command does, and re-run the data-path update
  with the unchanged stored rule set (``live.AttachedStore.save``): new
  interfaces get the programs, ``-i/-o`` names are resolved again,
  vanished interfaces are forgotten. The child pays bcc's import and
  compile (~1 s) and frees everything bcc leaves behind when it exits, so
  the daemon itself stays small and never imports bcc. A resync that
  fails (logged) is retried when the interfaces or the rule set change,
  or after a backoff (5 s doubling to 5 min). The daemon does not wait
  for the child: it keeps watching the namespace meanwhile. A renamed
  interface is handed to the update under its new name (``renamed()``);
- exits when its purpose is gone: the record was removed (detached:
  checked again under the lock, since ``attach`` re-creates it), its pid
  file names another process, or the namespace was deleted. A process in
  a namespace keeps the namespace alive, so the watcher must notice
  deletion itself: when the namespace had a name under /run/netns at
  start, it is deleted once no name there refers to it (``ip netns del``);
  a namespace without a name is deleted once nothing but the watcher holds
  it (no other process in it, no bind mount, no open descriptor of it).
  Then it kills a running resync (a process in the namespace too),
  detaches (removes the pins, which would otherwise keep the programs
  loaded; at most 3 s of waiting for the lock) and exits.

Files, in the namespace's state directory: ``watch.pid`` ("PID START",
START the process's start time in clock ticks, so a reused pid is never
taken for the watcher; ``running()`` also checks the command line and the
network namespace of the process) and ``watch.log`` (resyncs and errors,
the daemon's stdout/stderr; emptied past 1 MiB).

Rejected: doing without a daemon. At XDP a program runs only on the
interfaces it is attached to, so something outside the data path must
attach it to each new interface (there is no "every interface of the
namespace, present and future" hook); tying that to the next command (the
behaviour before the watcher) leaves a new interface unfiltered for an
unbounded time; a udev/systemd rule depends on the host's init system and
does not see interfaces created inside namespaces. Also rejected:
pyroute2's IPRoute for the events: their content is not needed, and a
plain socket keeps the daemon's imports and memory minimal.

The daemon also sweeps the namespace's conntrack table (``sweep()``):
expired entries are deleted every few seconds without traffic or
commands, as netfilter's gc worker does.

The daemon also supervises the namespace's command server (server.py),
its child: started when the daemon starts, restarted (after a backoff,
1 s doubling to 60 s, reset when it served for a minute) when it exits,
ended with the daemon (the server has the daemon's death as its SIGTERM,
so ``stop()``, a kill, or the daemon's own exit all end it). A server
that is not there only makes commands run in their own process.

It supervises the LOG target's logger (logger.py) the same way, from the
moment a LOG rule has created the namespace's ring (``<pins>/log/ring``):
the logger writes ``<state dir>/log`` and syslog.

Addresses and routes: ``-m addrtype`` is compiled from the namespace's
routes (``addrtypes.py``), so the daemon also listens to IPv4 address and
route events; after a burst of them it compares the routes with what it
saw last and, when they differ, runs a resync (``resync DIR routes``) that
re-runs the update when the stored rule set uses addrtype (and does
nothing otherwise). An address added or removed changes the verdicts
within the debounce plus the resync's update (about 0.2-1.5 s; netfilter
looks the type up per packet, so there it is immediate).

Not covered: an XDP program removed from an interface by hand is not put
back (``status`` reports it)."""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from . import attachment as A

PID_FILE = "watch.pid"
LOG_FILE = "watch.log"
MODULE = "bpf_iptables.datapath.watch"

RTMGRP_LINK = 1
# -m addrtype is compiled from the addresses and routes: their events too
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTM_NEWADDR, RTM_NEWROUTE, RTM_DELROUTE = 20, 24, 25   # RTM_DELADDR = 21
DEBOUNCE = 0.1          # quiet time that ends a burst of link events
BURST_CAP = 1.0         # resync at the latest this long after a burst started
POLL = 1.0              # look at interfaces, record and namespace this often
STOP_WAIT = 5.0         # stop(): SIGTERM, then SIGKILL after this
READY_WAIT = 20.0       # start(): how long to wait for the daemon to be up
LOG_LIMIT = 1 << 20
BACKOFF = (5.0, 300.0)
CLEANUP_LOCK_WAIT = 3   # seconds (see Daemon.cleanup)
SERVER_BACKOFF = (1.0, 60.0)
SERVER_STEADY = 60.0    # a server that ran this long restarts at once when it dies
FD_RESCAN = 10.0        # seconds (see Daemon.namespace_deleted)
# conntrack sweeps (Daemon.sweep): netfilter's gc worker rescans its table
# every 1 to 60 s by the entries' timeouts; here every 5 s, stretched so a
# sweep of a large table costs at most 2% of a core
SWEEP_EVERY = 5.0
SWEEP_SHARE = 0.02

# resync() outcomes, also the child's exit status
RESYNCED, CURRENT, FAILED, DETACHED = 0, 10, 1, 11


class WatcherError(Exception):
    pass


# -- is it running? ------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state is [0], starttime [19]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):   # a zombie is a dead watcher
        return None
    return int(fields[19])


def _netns(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def running(directory: Path) -> int | None:
    """The pid of this namespace's watcher, or None. The pid file is
    trusted only if that pid is alive, started when the file says, runs
    this module for this directory and is in this network namespace."""
    try:
        pid_text, start_text = (directory / PID_FILE).read_text().split()
        pid, start = int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None
    if _start_time(pid) != start:
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        same_ns = _netns(f"/proc/{pid}/ns/net") == _netns("/proc/self/ns/net")
    except OSError:
        return None
    if MODULE.encode() not in argv or str(directory).encode() not in argv or not same_ns:
        return None
    return pid


def start(directory: Path) -> int:
    """Start the watcher of this namespace unless it runs; its pid.
    Called under the lock (so two attaches never start two watchers)."""
    pid = running(directory)
    if pid is not None:
        return pid
    (directory / PID_FILE).unlink(missing_ok=True)
    log = directory / LOG_FILE
    env = dict(os.environ)
    # the daemon runs from / and must import this very package
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    r, w = os.pipe()
    try:
        with open(log, "ab") as out:
            # close_fds (the default) matters: the xtables lock's descriptor
            # must not be inherited, or the daemon would hold the lock
            child = subprocess.Popen(
                [sys.executable, "-m", MODULE, "daemon", str(directory), str(w)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/", env=env,
                pass_fds=(w,), start_new_session=True)
        os.close(w)
        w = -1
        child.wait()   # the intermediate process exits at once (double fork)
        ready = b""
        deadline = time.monotonic() + READY_WAIT
        while not ready.endswith(b"\n") and time.monotonic() < deadline:
            if not select.select([r], [], [], deadline - time.monotonic())[0]:
                break
            chunk = os.read(r, 64)
            if not chunk:
                break
            ready += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    pid = running(directory)
    if not ready.startswith(b"ready") or pid is None:
        raise WatcherError(f"the interface watcher did not start (see {log})")
    return pid


def _gone(pid: int, start: int) -> bool:
    return _start_time(pid) != start


def stop(directory: Path) -> int | None:
    """Stop this namespace's watcher (SIGTERM, SIGKILL after 5 s); its pid.
    Called under the lock: the watcher is then idle or waiting for the
    lock, never in the middle of an update, so SIGTERM's default action
    (end the process) is safe."""
    pid = running(directory)
    if pid is not None:
        start = _start_time(pid)
        assert start is not None
        for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, STOP_WAIT)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while not _gone(pid, start) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _gone(pid, start):
                break
    (directory / PID_FILE).unlink(missing_ok=True)
    return pid


# -- the resync (a child process of the daemon) ----------------------------------------

def covers(att: A.Attachment, here: dict[str, int]) -> bool:
    """Whether the record lists exactly the namespace's interfaces."""
    return {name: v[0] for name, v in att.interfaces.items()} == here


def interfaces() -> dict[str, int]:
    """The interfaces that carry the roots: all but bridge ports, so a port
    enslaved or released after the last update differs too (bridges.py)."""
    from .bridges import attachable

    return attachable()


def renamed(att: A.Attachment, here: dict[str, int]) -> A.Attachment:
    """The record with renamed interfaces under their new names.

    The update keeps a recorded interface when its name still has its
    ifindex, and attaches to the others without replacing a program
    (so as never to replace someone else's). A renamed interface carries
    our program under a name the record does not know: attaching to it
    would fail (EBUSY), and with it every update. Given under its new
    name, it is switched like any other. (udev, container runtimes and
    `ip link set NAME name NEW' rename interfaces right after creating them.)"""
    by_index = {index: name for name, index in here.items()}
    ifaces = {}
    for name, (index, flags) in att.interfaces.items():
        now = by_index.get(index)
        if now is not None:
            ifaces[now] = [index, flags]
    if ifaces == att.interfaces:
        return att
    import dataclasses

    return dataclasses.replace(att, interfaces=ifaces)


def resync(routes: bool = False) -> int:
    """Under the lock: re-run the data-path update with the stored rule set
    if the record no longer matches the interfaces, or (``routes``) if the
    rule set uses -m addrtype. RESYNCED, CURRENT, DETACHED; raises what
    the update raises."""
    from .. import state

    with state.locked(0) as store:
        att = A.read(store.directory)
        if att is None:
            return DETACHED
        from . import live

        if covers(att, interfaces()):
            from .compiler import uses_addrtype

            if not routes or not uses_addrtype(store.load().table("filter")):
                return CURRENT   # a command updated it meanwhile, or no addrtype
        # renamed among all interfaces: a port just enslaved must stay in
        # the record, for the update to take its roots off
        every = {name: index for index, name in socket.if_nameindex()}
        attached = live.AttachedStore(store, renamed(att, every))
        from . import bridges

        # load() through the attached store: the data path's counters are
        # carried into the new programs (the stored ones may be older)
        ruleset = attached.load()
        if bridges.refused_here(ruleset.table("filter")):
            # a command would be refused; a resync must still cover the
            # interfaces (a new bridge's INPUT), so it goes on, and says so
            _log("warning: FORWARD rules beside a bridge with br_netfilter on: frames "
                 "bridged between ports are not filtered (bridges.py)")
            bridges.REFUSE_BR_NETFILTER = False
        attached.save(ruleset)
        return RESYNCED


def _route_event(data: bytes) -> bool:
    """Whether a batch of rtnetlink messages holds an address or route event."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if RTM_NEWADDR <= kind <= RTM_DELROUTE:
            return True
        if length < 16:
            break
        off += (length + 3) & ~3
    return False


def _routes() -> tuple | None:
    """What -m addrtype depends on (None: could not be read)."""
    from . import addrtypes

    try:
        return addrtypes.digest()
    except OSError:
        return None


def _resync_main(routes: bool = False) -> int:
    from ..errors import XtablesError

    try:
        return resync(routes)
    except XtablesError as exc:
        _log(f"resync failed: {exc.message}")
        return FAILED


# -- the daemon -------------------------------------------------------------------------

def _log(message: str) -> None:
    try:
        if os.fstat(2).st_size > LOG_LIMIT:
            os.ftruncate(2, 0)   # O_APPEND: later writes start at the new end
    except OSError:
        pass
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stderr.write(f"{stamp} watch[{os.getpid()}] {message}\n")
    sys.stderr.flush()


def _names_of(ns: tuple[int, int]) -> list[str]:
    """Names under /run/netns that refer to the namespace ``ns``."""
    names = []
    try:
        entries = os.listdir("/run/netns")
    except OSError:
        return names
    for name in entries:
        try:
            if _netns(f"/run/netns/{name}") == ns:
                names.append(name)
        except OSError:
            continue
    return names


def _held_by_process_or_mount(ns: tuple[int, int], skip: set[int]) -> bool:
    """Whether a process (other than ``skip``) is in the namespace, or a
    bind mount of it is visible here."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in skip:
            continue
        try:
            if _netns(f"/proc/{pid}/ns/net") == ns and _start_time(int(pid)) is not None:
                return True
        except OSError:
            continue
    try:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split()[3] == f"net:[{ns[1]}]" for line in fh)
    except OSError:
        return False


def _held_by_descriptor(ns: tuple[int, int], skip: set[int]) -> bool:
    """Whether a process (other than ``skip``) has the namespace open."""
    link = f"net:[{ns[1]}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in skip:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return True
            except OSError:
                continue
    return False


class Daemon:
    def __init__(self, directory: Path):
        self.directory = directory
        self.ns = _netns("/proc/self/ns/net")
        self.named = bool(_names_of(self.ns))
        self.start = _start_time(os.getpid())
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        self.sock.setblocking(False)
        self._record_key: tuple | None = None
        self._record: A.Attachment | None = None
        self.failed: tuple | None = None   # (generation, interfaces) of a failed resync
        self.child: subprocess.Popen | None = None   # the resync running
        self.child_key: tuple = ()
        self.child_began = 0.0
        self.fd_held_until = 0.0
        self.retry_at = 0.0
        self.backoff = BACKOFF[0]
        self.server: subprocess.Popen | None = None   # the command server (server.py)
        self.server_began = 0.0
        self.server_at = 0.0
        self.server_backoff = SERVER_BACKOFF[0]
        self.logger: subprocess.Popen | None = None   # LOG's logger (logger.py)
        self.logger_at = 0.0
        self.sweep_at = 0.0
        self.routes_dirty = False   # an address or route event since the last look
        self.routes_seen = _routes()

    def write_pid(self) -> None:
        tmp = self.directory / (PID_FILE + ".tmp")
        tmp.write_text(f"{os.getpid()} {self.start}\n")
        os.replace(tmp, self.directory / PID_FILE)

    def _drain(self) -> None:
        """Read a burst of link events until 100 ms pass without one."""
        first = time.monotonic()
        while True:
            try:
                while data := self.sock.recv(1 << 16):
                    self.routes_dirty |= _route_event(data)
            except BlockingIOError:
                pass
            except OSError as exc:   # ENOBUFS: events were lost; we look anyway
                if exc.errno != errno.ENOBUFS:
                    raise
                self.routes_dirty = True
                continue
            wait = min(DEBOUNCE, first + BURST_CAP - time.monotonic())
            if wait <= 0 or not select.select([self.sock], [], [], wait)[0]:
                return

    def record(self) -> A.Attachment | None:
        """The record, parsed again only when the file changed."""
        try:
            st = os.stat(self.directory / A.RECORD)
        except FileNotFoundError:
            self._record_key = self._record = None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._record_key:
            self._record, self._record_key = A.read(self.directory), key
        return self._record

    def ours(self) -> bool:
        try:
            return (self.directory / PID_FILE).read_text().split() == \
                [str(os.getpid()), str(self.start)]
        except OSError:
            return False

    def namespace_deleted(self) -> bool:
        """Named at start: no name refers to it any more. Unnamed: nothing
        but this process (and its resync) holds it. Reading every
        process's descriptors costs more (~20 ms with 170 processes), so
        a descriptor found is trusted for FD_RESCAN seconds."""
        if self.named:
            return not _names_of(self.ns)
        skip = ({os.getpid()} | ({self.child.pid} if self.child else set())
                | ({self.server.pid} if self.server else set())
                | ({self.logger.pid} if self.logger else set()))
        if _held_by_process_or_mount(self.ns, skip):
            return False
        if time.monotonic() < self.fd_held_until:
            return False
        if _held_by_descriptor(self.ns, skip):
            self.fd_held_until = time.monotonic() + FD_RESCAN
            return False
        return True

    def detached(self) -> bool:
        """The record is gone, also under the lock (``attach`` of an
        attached namespace removes and writes it again under the lock).
        A lock held elsewhere only defers the answer to the next round."""
        if self.record() is not None:
            return False
        from .. import state

        try:
            with state.locked(1):
                return self.record() is None
        except state.LockBusy:
            return False

    def cleanup(self) -> None:
        """The namespace is deleted: remove the pins (they would keep the
        programs alive) and the record, as ``detach`` does. The lock is
        waited for 3 s at most (it is shared by every namespace): without
        it the pins stay until the next ``attach`` anywhere collects them
        (once the state directory of the dead namespace is collected)."""
        from .. import state

        try:
            with state.locked(CLEANUP_LOCK_WAIT) as store:
                if A.read(store.directory) is not None:
                    from . import live

                    live.detach(store)
                if self.ours():
                    (self.directory / PID_FILE).unlink(missing_ok=True)
        except state.LockBusy:
            _log("the lock is busy: pins left for the next attach to collect")

    def check(self) -> None:
        """Start a resync if the record does not list the interfaces."""
        att = self.record()
        if att is None:
            return
        here = interfaces()
        if covers(att, here):
            self.failed, self.backoff = None, BACKOFF[0]
            self.check_routes()
            return
        key = (att.generation, tuple(sorted(here.items())))
        if key == self.failed and time.monotonic() < self.retry_at:
            return
        # a child, not waited for: the daemon keeps watching the namespace
        # while it waits for the lock and compiles
        self.child = subprocess.Popen([sys.executable, "-m", MODULE, "resync", str(self.directory)],
                                      stdin=subprocess.DEVNULL)
        self.child_key, self.child_began = key, time.monotonic()

    def check_routes(self) -> None:
        """After address or route events: a resync (which recompiles
        -m addrtype, if the rule set has it) when the routes changed."""
        if not self.routes_dirty:
            return
        self.routes_dirty = False
        now = _routes()
        if now == self.routes_seen:
            return
        self.routes_seen = now
        self.child = subprocess.Popen([sys.executable, "-m", MODULE, "resync",
                                       str(self.directory), "routes"], stdin=subprocess.DEVNULL)
        self.child_key, self.child_began = ("routes", ()), time.monotonic()

    def supervise(self) -> None:
        """(Re)start the command server when it is not running."""
        if self.server is not None:
            if self.server.poll() is None:
                return
            took = time.monotonic() - self.server_began
            _log(f"command server exited (status {self.server.returncode}) after {took:.1f} s")
            self.server = None
            if took > SERVER_STEADY:
                self.server_backoff = SERVER_BACKOFF[0]
            self.server_at = time.monotonic() + self.server_backoff
            self.server_backoff = min(self.server_backoff * 2, SERVER_BACKOFF[1])
        if time.monotonic() < self.server_at:
            return
        from . import server

        self.server = subprocess.Popen([sys.executable, "-m", server.MODULE, "serve",
                                        str(self.directory)], stdin=subprocess.DEVNULL)
        self.server_began = time.monotonic()

    def supervise_logger(self) -> None:
        """Run the logger while the namespace's LOG ring exists (restarted
        SERVER_BACKOFF[0] after it exits)."""
        if self.logger is not None:
            if self.logger.poll() is None:
                return
            _log(f"logger exited (status {self.logger.returncode})")
            self.logger = None
            self.logger_at = time.monotonic() + SERVER_BACKOFF[0]
        ring = A.ns_pins(self.directory) / "log" / "ring"
        if time.monotonic() < self.logger_at or not ring.exists():
            return
        from . import logger

        self.logger = subprocess.Popen([sys.executable, "-m", logger.MODULE, "run",
                                        str(ring.parent), str(self.directory / "log")],
                                       stdin=subprocess.DEVNULL)

    def end_server(self) -> None:
        for proc in (self.server, self.logger):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.server = self.logger = None

    def reap(self) -> None:
        if self.child is None or self.child.poll() is None:
            return
        rc, key, took = self.child.returncode, self.child_key, time.monotonic() - self.child_began
        self.child = None
        if key[0] == "routes":
            if rc == RESYNCED:
                _log(f"resynced in {took:.2f} s: addresses or routes changed")
            elif rc not in (CURRENT, DETACHED):
                _log(f"resync after a route change failed (status {rc})")
                self.routes_seen = None   # the next event tries again
            return
        if rc in (RESYNCED, CURRENT, DETACHED):
            if rc == RESYNCED:
                _log(f"resynced in {took:.2f} s: interfaces {' '.join(n for n, _ in key[1])}")
            self.failed, self.backoff = None, BACKOFF[0]
            return
        if key != self.failed:
            self.backoff = BACKOFF[0]
        self.failed, self.retry_at = key, time.monotonic() + self.backoff
        _log(f"resync failed (status {rc}); next try on a change or in {self.backoff:.0f} s")
        self.backoff = min(self.backoff * 2, BACKOFF[1])

    def sweep(self) -> None:
        """Delete the namespace's expired conntrack entries (the data path
        deletes one only when a packet finds it): an idle table empties
        itself as netfilter's does. Counted (``-S``: swept). Then
        hashlimit's expired buckets."""
        if time.monotonic() < self.sweep_at:
            return
        began = time.monotonic()
        d = A.ns_pins(self.directory) / "conntrack"
        try:
            if (d / "table").exists():
                from ..conntrack import table as cttable   # bpf(2) by ctypes, no bcc

                cttable.gc(d, sweeper=True)
        except OSError as exc:   # the maps went away with a detach: next time
            _log(f"conntrack sweep: {exc}")
        try:
            # -m hashlimit's expired buckets (the kernel's htable_gc)
            from . import hashlimit_tables   # bpf(2) by ctypes, no bcc

            hashlimit_tables.sweep(A.ns_pins(self.directory))
        except OSError as exc:
            _log(f"hashlimit sweep: {exc}")
        took = time.monotonic() - began
        self.sweep_at = time.monotonic() + max(SWEEP_EVERY, took / SWEEP_SHARE)

    def run(self) -> int:
        _log(f"watching {self.directory} (netns {'named' if self.named else 'unnamed'})")
        try:
            return self._run()
        finally:
            self.end_server()

    def _run(self) -> int:
        while True:
            self.supervise()
            self.supervise_logger()
            self.sweep()
            if select.select([self.sock], [], [], POLL)[0]:
                self._drain()
            self.reap()
            if self.namespace_deleted():
                _log("namespace deleted: detaching and exiting")
                if self.child is not None:
                    # its work is moot, and it is a process in the namespace too
                    self.child.kill()
                    self.child.wait()
                self.end_server()
                self.cleanup()
                return 0
            if not self.ours():
                _log("pid file names another process: exiting")
                return 0
            if self.detached():
                _log("detached: exiting")
                if self.ours():
                    (self.directory / PID_FILE).unlink(missing_ok=True)
                return 0
            if self.child is None:
                self.check()


SERVER_LISTEN_WAIT = 2.0   # seconds attach waits at most for the command server


def server_listening(wait: float) -> bool:
    """Whether the namespace's command server listens (its abstract socket
    in /proc/net/unix, which lists this network namespace's sockets),
    waiting up to ``wait`` seconds for it."""
    from ..cli import client

    name = b"@" + client.socket_name()[1:]
    deadline = time.monotonic() + wait
    while True:
        try:
            with open("/proc/net/unix", "rb") as f:
                if any(line.rstrip(b"\n").split(b" ")[-1] == name for line in f):
                    return True
        except OSError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _daemon_main(directory: Path, ready_fd: int) -> int:
    if os.fork():
        os._exit(0)   # the session leader goes: the daemon can never get a terminal
    from .. import state

    if directory != state.run_dir() / f"netns-{state.netns_cookie()}":
        os.write(ready_fd, b"wrong namespace\n")
        return 1
    daemon = Daemon(directory)   # subscribed before "ready": no event is missed
    daemon.write_pid()
    # the command server first, listening before "ready": a command sent as
    # soon as attach returns (a restore) is served, not run in-process
    daemon.supervise()
    server_listening(SERVER_LISTEN_WAIT)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return daemon.run()


def main(argv: list[str]) -> int:
    if argv[:1] == ["daemon"] and len(argv) == 3:
        return _daemon_main(Path(argv[1]), int(argv[2]))
    if argv[:1] == ["resync"] and len(argv) == 2:
        return _resync_main()
    if argv[:1] == ["resync"] and len(argv) == 3 and argv[2] == "routes":
        return _resync_main(routes=True)
    sys.stderr.write(f"usage: python -m {MODULE} daemon DIR FD | resync DIR [routes]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
