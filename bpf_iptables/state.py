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

import fcntl
import os
import pickle
import signal
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import RESOURCE_PROBLEM
from . import tableops, validate
from .model import Chain, Rule, RuleSet, Table

SO_NETNS_COOKIE = 71
FORMAT_VERSION = 2


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
        acquire(fd, wait, lock_file)
        yield Store(namespace_dir())
    finally:
        os.close(fd)


def acquire(fd: int, wait: int, lock_file: Path) -> None:
    """Take the xtables lock on ``fd`` (locked(); the command server holds
    it past a command, see datapath/server.py)."""
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


@dataclass(frozen=True)
class ChainIndex:
    """What an append needs to know of a table without loading its rules:
    which chains exist, which are built-in, and the hooks reaching each."""

    builtin: dict[str, bool]
    hooks: dict[str, frozenset[str]]
    # the built-in chains' policies: all a restore that flushes the table
    # keeps of it (absent from indexes written before it was added)
    policies: dict[str, str] | None = None

    def is_chain(self, name: str) -> bool:
        return name in self.builtin

    def is_builtin_chain(self, name: str) -> bool:
        return self.builtin.get(name, False)


class Store:
    """The persisted rule set of one namespace (use under the lock).

    A generation G is a snapshot of the whole rule set (``snapshot-G``),
    an index of its chains (``index-G``) and a journal of rules appended,
    inserted or deleted since (``journal-G``); the file ``current`` names
    G. ``-A`` and ``-D`` (and, in the command server, ``-I``) only add a
    journal record, so changing a large rule set does
    not rewrite it; every other change writes generation G+1 and then
    switches ``current``, so a crash at any point leaves a consistent
    generation. The index stays true while the journal grows: neither an
    appended nor a deleted rule may jump to a user chain (those change
    which hooks reach a chain, and take the full path)."""

    # past this size the journal is folded into a new snapshot
    JOURNAL_LIMIT = 4 << 20

    def __init__(self, directory: Path):
        self.directory = directory

    def _generation(self) -> int | None:
        try:
            return int((self.directory / "current").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _file(self, kind: str, gen: int) -> Path:
        return self.directory / f"{kind}-{gen}"

    def load(self) -> RuleSet:
        gen = self._generation()
        if gen is None:
            return RuleSet()
        with open(self._file("snapshot", gen), "rb") as fh:
            version, ruleset = pickle.load(fh)
        if version != FORMAT_VERSION:
            raise RuntimeError(f"state format {version} in {self.directory} is not {FORMAT_VERSION}")
        for record in self._journal(gen):
            if len(record) == 3:  # an append: (table, chain, rules)
                table_name, chain, rules = record
                table = ruleset.table(table_name)
                table.chains[chain].rules.extend(rules)
            else:
                op, table_name, chain, what = record
                table = ruleset.table(table_name)
                if op == "delete":  # rules by content, as -D found them
                    for rule in what:
                        tableops.delete(table, chain, rule)
                elif op == "insert":  # (index from 0, rules): the command server's -I
                    at, rules = what
                    table.chains[chain].rules[at:at] = rules
                else:  # "delete_num": by index
                    tableops.delete_num(table, chain, what)
            # what the command's own commit did (see tableops.reset_policy_counters)
            tableops.reset_policy_counters(table)
        return ruleset

    def _journal(self, gen: int) -> Iterator[tuple[str, str, list[Rule]]]:
        try:
            data = self._file("journal", gen).read_bytes()
        except FileNotFoundError:
            return
        view = memoryview(data)
        pos = 0
        while pos + 4 <= len(data):
            size = int.from_bytes(view[pos:pos + 4], "little")
            if pos + 4 + size > len(data):
                break  # a record cut short by a crash was never acknowledged
            yield pickle.loads(view[pos + 4:pos + 4 + size])
            pos += 4 + size

    def save(self, ruleset: RuleSet) -> None:
        old = self._generation()
        gen = (old or 0) + 1
        index = {name: ChainIndex({c.name: c.builtin for c in table.chains.values()},
                                  validate.chain_hooks(table),
                                  {c.name: c.policy for c in table.chains.values() if c.builtin})
                 for name, table in ruleset.tables.items()}
        _write(self._file("snapshot", gen), pickle.dumps((FORMAT_VERSION, ruleset),
                                                          protocol=pickle.HIGHEST_PROTOCOL))
        _write(self._file("index", gen), pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))
        _write(self.directory / "current", str(gen).encode())
        if old is not None:
            for kind in ("snapshot", "index", "journal"):
                self._file(kind, old).unlink(missing_ok=True)

    def load_skeleton(self) -> RuleSet | None:
        """The stored tables with their built-in chains and policies only
        (no rules, no user chains, zero counters): what a restore that
        flushes every table it names needs, read from the small index
        instead of the snapshot. None when the index cannot tell."""
        gen = self._generation()
        if gen is None:
            return None
        try:
            with open(self._file("index", gen), "rb") as fh:
                index = pickle.load(fh)
        except FileNotFoundError:
            return None
        ruleset = RuleSet()
        for name, entry in index.items():
            policies = getattr(entry, "policies", None)
            if policies is None:
                return None
            table = ruleset.tables[name] = Table(name)
            for chain, policy in policies.items():
                table.chains[chain] = Chain(chain, policy=policy)
        return ruleset

    def load_index(self, table: str) -> ChainIndex | None:
        """The chain index for an append, or None when the slow path must run."""
        gen = self._generation()
        if gen is None:
            return None
        journal = self._file("journal", gen)
        if journal.exists() and journal.stat().st_size > self.JOURNAL_LIMIT:
            return None
        try:
            with open(self._file("index", gen), "rb") as fh:
                return pickle.load(fh).get(table)
        except FileNotFoundError:
            return None

    def append(self, table: str, chain: str, rules: list[Rule]) -> None:
        self._record((table, chain, rules))

    def delete(self, table: str, chain: str, rules: list[Rule]) -> None:
        """-D by rule: each rule's first match is deleted, in order."""
        self._record(("delete", table, chain, rules))

    def delete_num(self, table: str, chain: str, index: int) -> None:
        """-D by number (``index`` counts from 0)."""
        self._record(("delete_num", table, chain, index))

    def insert(self, table: str, chain: str, index: int, rules: list[Rule]) -> None:
        """-I: ``rules`` inserted before the rule at ``index`` (from 0)."""
        self._record(("insert", table, chain, (index, rules)))

    def _record(self, record: tuple) -> None:
        gen = self._generation()
        assert gen is not None, "a journal record needs a saved generation"
        record = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        fd = os.open(self._file("journal", gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # no fsync (see _write): a record written is seen by every later
            # process; only a machine crash could lose it, and that ends
            # the namespace it belongs to
            os.write(fd, len(record).to_bytes(4, "little") + record)
        finally:
            os.close(fd)


def _write(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary file, rename).

    No fsync: what the store guarantees is against a process that dies
    (a killed command, server or update: the next call repairs or
    reports it), and a process's writes outlive it in the page cache,
    seen by later readers in the order they were made. Only a machine
    crash loses unsynced data, and it also ends every network namespace
    and their pinned programs: state under /run (a tmpfs, FHS) belongs
    to a namespace that no longer exists after a reboot. The fsyncs cost
    ~0.2-10 ms per update on a disk-backed /run (ext4 here), on the
    client's time; the data path's record (attachment.write) never had one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


__all__ = ["locked", "lock_path", "LockBusy", "Store", "ChainIndex", "RESOURCE_PROBLEM", "netns_cookie"]
