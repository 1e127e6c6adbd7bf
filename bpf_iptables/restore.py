"""iptables-restore: apply a dump to the rule set, as iptables-restore 1.8.9
(legacy) does, line by line, with its messages and exit statuses.

Unlike iptables, the whole input is applied to a copy of the rule set, which
replaces the stored one only when every line and every COMMIT succeeded: a
failed restore leaves the previous rules and counters as they were."""
from __future__ import annotations

import errno
import os
import re
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, ContextManager, TextIO

from . import tableops
from .cmdline import parse as P
from .commands import Outcome, execute
from .errors import (NotSupported, TableOpError, XtablesError, OTHER_PROBLEM, PARAMETER_PROBLEM,
                     VERSION_PROBLEM)
from .model import BUILTIN_CHAINS, STANDARD_VERDICTS, Chain, Counters, RuleSet, Table
from .restore_cache import ParseCache
from .restore_grammar import Statement, parse_lines, split_words
from .restore_input import read_statements
from .validate import validate_table
from .datapath import attachment as datapath_hook

XT_TABLE_MAXNAMELEN = 32
XT_EXTENSION_MAXNAMELEN = 29
PARAM_BUFFER_SIZE = 1024   # struct xt_param_buf
MAX_ARGC = 255             # struct argv_store
KNOWN_TABLES = ("filter", "nat", "mangle", "raw", "security")


@dataclass
class RestoreOptions:
    counters: bool = False
    verbose: int = 0
    test: bool = False
    noflush: bool = False
    table: str | None = None
    wait: int = 0


class RestoreExit(Exception):
    """Stop with this exit status (the message is already written)."""

    def __init__(self, status: int):
        self.status = status


@dataclass
class Output:
    prog: str
    version: str
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def out(self, text: str) -> None:
        self.stdout.write(text)

    def err(self, text: str) -> None:
        self.stdout.flush()
        self.stderr.write(text)

    def try_help(self, line: int) -> None:
        self.err(f"Error occurred at line: {line}\n"
                 f"Try `{self.prog} -h' or '{self.prog} --help' for more information.\n")

    def xtables_error(self, exc: XtablesError, line: int) -> RestoreExit:
        """xtables_error() inside iptables-restore: the hint names the line."""
        self.err(f"{self.prog} v{self.version}: {exc.message}\n")
        if exc.status == PARAMETER_PROBLEM:
            self.try_help(line)
        elif exc.status == VERSION_PROBLEM:
            self.err("Perhaps iptables or your kernel needs to be upgraded.\n")
        return RestoreExit(exc.status)


# A store: a context manager yielding an object with load() and save().
StoreOpener = Callable[[int], ContextManager]


class Restorer:
    """One iptables-restore run over a list of statements."""

    def __init__(self, opts: RestoreOptions, out: Output, open_store: StoreOpener,
                 help_printer: Callable[[list], str] | None = None):
        self.opts = opts
        self.out = out
        self.open_store = open_store
        self.help_printer = help_printer
        self.stack = ExitStack()
        self.store = None
        self.working: RuleSet | None = None
        self.committed = False
        self.table: Table | None = None   # the open block's table (a private copy)
        self.curtable = ""
        self.opened: set[str] = set()           # tables whose handle was created
        self.announced: set[str] = set()        # chains named by ":" lines
        self.stored_names: set[str] | None = None
        self.saved = False
        self.parse_cache = ParseCache()
        self.skeleton: set[str] = set()  # stored tables whose rules were not loaded

    # -- the main loop (ip46tables_restore_main) ----------------------------

    def run(self, statements: list[Statement]) -> int:
        with self.stack:
            try:
                last = 0
                for st in statements:
                    last = st.line
                    self.statement(st)
                if self.table is not None:
                    self.out.err(f"{self.out.prog}: COMMIT expected at line {last + 1}\n")
                    return 1
                if self.committed and not self.opts.test:
                    assert self.store is not None and self.working is not None
                    try:
                        self.store.save(self.finished())
                    except XtablesError as exc:  # the data path refused or failed
                        self.out.err(f"{self.out.prog}: {exc.message}\n")
                        return exc.status
                    self.saved = True
                    return 0
            except RestoreExit as stop:
                return stop.status
            finally:
                self.keep_initialized_tables()
        return 0

    def keep_initialized_tables(self) -> None:
        """iptc_init() brings a table into being in the namespace even when
        the restore then fails or only tests, so later saves list it (empty
        if it was new); the rules themselves are left untouched."""
        if self.store is None or self.stored_names is None:
            return
        new = self.opened - self.stored_names
        if not new or (self.committed and not self.opts.test and self.saved):
            return
        ruleset = self.store.load()
        for name in sorted(new):
            ruleset.table(name)
        self.store.save(ruleset)

    def statement(self, st: Statement) -> None:
        kind = st.kind
        in_table = self.table is not None
        if kind == "comment":
            if self.opts.verbose:
                self.out.out(st.text)
            return
        if kind == "commit" and in_table:
            ok = self.commit()
        elif kind == "table" and not in_table:
            if not self.open_table(st):
                return  # another table than --table asked for: skipped
            ok = True
        elif kind == "chain" and in_table:
            self.chain_line(st)
            ok = True
        elif in_table:
            ok = self.rule_line(st)
        else:
            ok = False
        if self.opts.table is not None and self.opts.table != self.curtable:
            return
        if not ok:
            self.out.err(f"{self.out.prog}: line {st.line} failed\n")
            raise RestoreExit(1)

    # -- "*table" ------------------------------------------------------------

    def open_table(self, st: Statement) -> bool:
        if self.store is None:
            self.store = self.stack.enter_context(self.open_store(self.opts.wait))
            # attached namespaces: commits go through the data path first
            self.store = datapath_hook.wrap(self.store)
            self.working = self.load_working()
            self.stored_names = set(self.working.tables)
        if not st.fields:
            raise self.out.xtables_error(XtablesError(
                f"{self.out.prog}: line {st.line} table name invalid"), st.line)
        name = st.fields[0]
        self.curtable = name.encode()[:XT_TABLE_MAXNAMELEN].decode(errors="ignore")
        if self.opts.table is not None and self.opts.table != name:
            return False
        self.table = self.create_handle(name, st.line)
        return True

    def load_working(self) -> RuleSet:
        """The stored rule set to work on. A restore that flushes the tables
        it names needs only their built-in chains' policies: those come
        from the store's small index (``self.skeleton`` names the tables
        that are placeholders), and the rules of a stored table are loaded
        only if the restore leaves that table as it was (see finished())."""
        assert self.store is not None
        load_skeleton = getattr(self.store, "load_skeleton", None)  # the plain store's
        if load_skeleton is not None and not self.opts.noflush and not self.opts.verbose:
            skeleton = load_skeleton()
            if skeleton is not None:
                self.skeleton = set(skeleton.tables)
                return skeleton
        return self.store.load()

    def finished(self) -> RuleSet:
        """The rule set to save: the committed tables, and the stored ones
        the restore did not replace (in the stored order either way)."""
        assert self.store is not None and self.working is not None
        if not self.skeleton:
            return self.working
        full = self.store.load()
        for name, table in self.working.tables.items():
            if name not in self.skeleton:
                full.tables[name] = table
        return full

    def create_handle(self, name: str, line: int) -> Table:
        if name not in BUILTIN_CHAINS:
            if name in KNOWN_TABLES:
                raise self.out.xtables_error(NotSupported(f"table `{name}'"), line)
            raise self.out.xtables_error(XtablesError(
                f"{self.out.prog}: unable to initialize table '{name}'"), line)
        assert self.working is not None
        self.opened.add(name)
        current = self.working.table(name)
        if self.opts.noflush:
            table = current.copy()
        else:
            table = self.flushed(current)
        # a commit keeps only the policy counters set since the handle was read
        tableops.reset_policy_counters(table)
        return table

    def flushed(self, current: Table) -> Table:
        """flush_entries on every chain, then delete_chain on user chains.

        Built from scratch rather than by copying rules that would be thrown
        away; only the built-in chains' policies survive a flush."""
        if self.opts.verbose:
            chains = current.ordered_chains()
            self.out.out("".join(f"Flushing chain `{c.name}'\n" for c in chains))
            self.out.out("".join(f"Deleting chain `{c.name}'\n" for c in chains
                                 if not c.builtin))
        table = Table(current.name)
        for chain in current.chains.values():
            if chain.builtin:
                table.chains[chain.name] = Chain(chain.name, policy=chain.policy)
        return table

    # -- ":CHAIN POLICY [p:b]" ---------------------------------------------------

    def chain_line(self, st: Statement) -> None:
        table = self.table
        assert table is not None
        prog, line = self.out.prog, st.line
        if not st.fields:
            raise self.out.xtables_error(XtablesError(
                f"{prog}: line {line} chain name invalid"), line)
        chain = st.fields[0]
        if len(chain.encode()) >= XT_EXTENSION_MAXNAMELEN:
            raise self.out.xtables_error(XtablesError(
                f"Invalid chain name `{chain}' ({XT_EXTENSION_MAXNAMELEN - 1} chars max)"), line)
        existing = table.chains.get(chain)
        if existing is None or not existing.builtin:
            if self.opts.noflush and existing is not None:
                tableops.flush(table, chain)
            elif existing is not None or chain in STANDARD_VERDICTS:
                # libiptc's create_chain takes the verdict names as taken
                raise self.out.xtables_error(XtablesError(
                    f"error creating chain '{chain}':{errno_text(errno.EEXIST)}"), line)
            else:
                tableops.create_chain(table, chain)
        if len(st.fields) < 2:
            raise self.out.xtables_error(XtablesError(
                f"{prog}: line {line} policy invalid"), line)
        policy = st.fields[1]
        if policy != "-":
            self.set_policy(table, chain, policy, st)
        if chain not in self.announced:
            self.announced.add(chain)
            self.parse_cache.clear()  # -j CHAIN parses differently now

    def set_policy(self, table: Table, chain: str, policy: str, st: Statement) -> None:
        line = st.line
        count = Counters()
        if self.opts.counters:
            parsed = parse_counters(st.fields[2]) if len(st.fields) > 2 else None
            if parsed is None:
                raise self.out.xtables_error(XtablesError(
                    f"invalid policy counters for chain '{chain}'"), line)
            count = parsed
        try:
            tableops.set_policy(table, chain, policy, count)
        except TableOpError as exc:
            raise self.out.xtables_error(XtablesError(
                f"Can't set policy `{policy}' on `{chain}' line {line}: {exc}",
                OTHER_PROBLEM), line) from None

    # -- command lines ---------------------------------------------------------

    def rule_line(self, st: Statement) -> bool:
        table = self.table
        assert table is not None
        argv = [self.out.prog, "-t", self.curtable]
        if not self.opts.noflush:
            argv.extend(["-v"] * self.opts.verbose)
        command, pcnt, bcnt = self.rule_counters(st)
        if self.opts.counters and pcnt is not None and bcnt is not None:
            argv.extend(("--set-counters", pcnt, bcnt))
        words = split_words(command)
        self.check_argv_limits(len(argv), words, command, st.line)
        argv.extend(words)
        try:
            parsed = self.parse_cache.parse(argv, lambda: P.CommandParser(
                argv, table=self.curtable, restore=True, help_printer=self.help_printer,
                notargets=self.announced))
        except P.LineIgnored:
            return True
        except P.HelpRequested as h:
            self.out.out(h.text)
            raise RestoreExit(0) from None
        except P.VersionRequested as v:
            self.out.out(f"{self.out.prog} v{self.out.version}\n")
            raise RestoreExit(0) from None
        except P.TryHelpExit as t:
            self.out.try_help(st.line)
            raise RestoreExit(t.status) from None
        except XtablesError as exc:
            raise self.out.xtables_error(exc, st.line) from None
        outcome = Outcome()
        try:
            # not committed on its own: the policy counters set by
            # ":CHAIN POLICY [p:b]" earlier in the block last until COMMIT,
            # except where this command sets (-P -c) or zeroes (-Z) them
            execute(parsed, table, outcome, commit=False)
        except TableOpError:
            # with -v, the rules printed before the failing call still show
            self.out.out("".join(outcome.stdout))
            return False
        except XtablesError as exc:
            self.out.out("".join(outcome.stdout))
            raise self.out.xtables_error(exc, st.line) from None
        if outcome.stdout:
            self.out.out("".join(outcome.stdout))
        return True

    def check_argv_limits(self, argc: int, words: list[str], command: str, line: int) -> None:
        """add_param()'s 1024-byte word buffer and add_argv()'s MAX_ARGC,
        in the order add_param_to_argv() would run into them."""
        if len(command) < PARAM_BUFFER_SIZE // 4 and len(words) + argc + 1 < MAX_ARGC:
            return  # the usual line: far from both (a character is at most 4 bytes)
        for word in words:
            if len(word) >= PARAM_BUFFER_SIZE // 4 and \
                    len(word.encode("utf-8", "surrogateescape")) >= PARAM_BUFFER_SIZE:
                raise self.out.xtables_error(XtablesError("Parameter too long!"), line)
            if argc + 1 >= MAX_ARGC:
                raise self.out.xtables_error(
                    XtablesError("Parser cannot handle more arguments"), line)
            argc += 1

    def rule_counters(self, st: Statement) -> tuple[str, str | None, str | None]:
        """tokenize_rule_counters() -> (command text, pcnt, bcnt)."""
        if st.kind != "rule":
            return st.text, None, None  # a "*x" line inside a block, say
        if st.counters is None:
            if st.text.startswith("["):  # "[" without "]" on the line
                return tokenize_rule_counters(st.text, st.line, self.out)
            return st.command, None, None
        inner = st.counters[1:-1]
        pcnt, colon, bcnt = inner.partition(":")
        if colon and pcnt.isdigit() and bcnt.isdigit():
            return st.command, pcnt, bcnt  # the usual "[p:b]": no strtok quirk applies
        return tokenize_rule_counters(st.text, st.line, self.out)

    # -- COMMIT ------------------------------------------------------------------

    def commit(self) -> bool:
        table = self.table
        assert table is not None and self.working is not None
        self.table = None
        if self.opts.test:
            return True
        try:
            validate_table(table)
        except TableOpError:
            return False
        self.working.tables[table.name] = table
        self.skeleton.discard(table.name)
        self.committed = True
        return True


def tokenize_rule_counters(text: str, line: int,
                           out: Output) -> tuple[str, str | None, str | None]:
    """The "[pcnt:bcnt]" prefix exactly as xshared.c's strtok calls read it.

    strtok(buffer+1, ":") may run past the "]", and the NULs strtok writes
    can cut the command text that starts after the first "]"."""
    bracket = text.find("]")
    if bracket < 0:
        raise out.xtables_error(XtablesError(f"Bad line {line}: need ]"), line)
    cuts: list[int] = []
    pcnt, pos = _strtok(text, 1, ":", cuts)
    if pcnt is None:
        raise out.xtables_error(XtablesError(f"Bad line {line}: need :"), line)
    bcnt, pos = _strtok(text, pos, "]", cuts)
    if bcnt is None:
        raise out.xtables_error(XtablesError(f"Bad line {line}: need ]"), line)
    command = text[bracket + 1:]
    after = [c for c in cuts if c > bracket]
    if after:
        command = text[bracket + 1:min(after)]
    return command, pcnt, bcnt


def _strtok(text: str, pos: int, delims: str, cuts: list[int]) -> tuple[str | None, int]:
    """One strtok() call from ``pos``; records where it writes its NUL."""
    end = len(text)
    while pos < end and text[pos] in delims:
        pos += 1
    if pos >= end:
        return None, end
    start = pos
    while pos < end and text[pos] not in delims:
        pos += 1
    if pos < end:
        cuts.append(pos)
        return text[start:pos], pos + 1
    return text[start:pos], end


def parse_counters(text: str) -> Counters | None:
    """sscanf(string, "[%llu:%llu]") == 2 (%llu skips leading white space,
    takes a sign, wraps negative values and saturates on overflow)."""
    m = _POLICY_COUNTERS.match(text)
    if not m:
        return None
    return Counters(_ull(m.group(1), m.group(2)), _ull(m.group(3), m.group(4)))


_POLICY_COUNTERS = re.compile(r"\[[ \t\n\v\f\r]*([+-]?)([0-9]+):[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def _ull(sign: str, digits: str) -> int:
    value = min(int(digits), 2**64 - 1)
    return (-value if sign == "-" else value) % 2**64


def errno_text(err: int) -> str:
    return os.strerror(err)


__all__ = ["RestoreOptions", "Restorer", "Output", "read_statements", "parse_lines"]
