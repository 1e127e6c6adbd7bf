"""The ipset commands (7.17 syntax and messages) on a namespace's SetStore:
create, add, del, test, list, save, restore, flush, destroy, rename, swap.

Every change is written to the store and, when the namespace has its set
maps pinned, to the maps (the data path reads them directly: rules are
neither touched nor recompiled)."""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Callable, TextIO

from .model import (DEFAULT_BUCKETSIZE, DEFAULT_HASHSIZE, HASH_TYPES,
                    MAX_TIMEOUT, NS, REVISION, TYPES, IpSet, IpsetError, Member, format_elem,
                    new_initval, now_ns, parameter_error, parse_elems, parse_uint)
from .cmdline import (COMMANDS, HELP, PROG, TYPE_ALIASES, UNSUPPORTED_OPTIONS, VERSION,
                      Options, Out, split_options, words_command)
from .maps import MAX_ELEMS, SetMaps
from .store import SetStore, locked, read_sets, references


class Session:
    """One invocation (or one restore): the store, loaded once."""

    def __init__(self, directory: Path, opts: Options, out: Out):
        self.directory = directory
        self.opts = opts
        self.out = out
        self.store = SetStore(directory)
        self.changed = False

    def run(self, words: list[str], restoring: bool = False) -> None:
        if not words:
            raise parameter_error("No command specified.")
        cmd = COMMANDS.get(words[0])
        if cmd is None:
            raise parameter_error(f"No command specified: unknown argument {words[0]}")
        args = words[1:]
        handler: Callable[[list[str]], None] = getattr(self, f"do_{cmd}")
        if restoring and cmd in ("restore", "help", "version", "list", "save"):
            raise parameter_error(f"Command `{cmd}' is invalid in restore mode.")
        handler(args)

    def restore_maps(self) -> None:
        """After a failed map write: the maps as the saved store has them."""
        maps = self.store._maps
        if maps is None:
            return
        saved = read_sets(self.directory)
        now = {(s.type, s.id): s for s in self.store.sets.values()}
        try:
            for prev in saved.values():
                maps.write_set(prev, now.pop((prev.type, prev.id), None))
            for gone in now.values():
                maps.clear_set(gone)
        except OSError:
            pass   # as much as could be written; the next command writes again

    # -- helpers ---------------------------------------------------------------

    def _need(self, args: list[str], n: int, cmd: str) -> None:
        if len(args) < 1:
            raise parameter_error(f"Missing mandatory argument to command {cmd}")
        if n >= 2 and len(args) < 2:
            raise parameter_error(f"Missing second mandatory argument to command {cmd}")

    def _maps(self) -> "SetMaps | None":
        return self.store.maps()

    # -- create ----------------------------------------------------------------

    def do_create(self, args: list[str]) -> None:
        self._need(args, 2, "create")
        name, tname = args[0], args[1]
        if len(name) > 31:
            raise IpsetError(f"Syntax error: setname '{name}' is longer than 31 characters")
        settype = TYPE_ALIASES.get(tname, tname)
        if settype not in TYPES:
            if settype in ("hash:ip,port,ip", "hash:ip,port,net", "hash:ip,mark", "hash:net,net",
                           "hash:net,port", "hash:net,port,net", "hash:net,iface", "hash:mac",
                           "hash:ip,mac", "bitmap:ip", "bitmap:ip,mac", "list:set"):
                raise IpsetError(f"bpf-iptables-set: set type {settype} is not supported")
            raise IpsetError(f"Syntax error: typename '{tname}' is unknown")
        s = IpSet(name, settype, 0, initval=new_initval())
        has_range = False
        i = 2
        while i < len(args):
            opt = args[i]
            key = opt.lstrip("-")
            allowed = (("family", "hashsize", "maxelem", "timeout", "bucketsize", "initval")
                       if settype in HASH_TYPES else ("range", "timeout"))
            if key in UNSUPPORTED_OPTIONS and (key != "netmask" or settype == "hash:ip"):
                raise IpsetError(f"bpf-iptables-set: create option `{key}' is not supported")
            if key not in allowed:
                raise parameter_error(f"Unknown argument: `{opt}'")
            if i + 1 >= len(args):
                raise parameter_error(f"Missing mandatory argument of option `{key}'")
            val = args[i + 1]
            i += 2
            if key == "family":
                if val == "inet6":
                    raise IpsetError("bpf-iptables-set: family inet6 is not supported")
                if val != "inet":
                    raise IpsetError(f"Syntax error: unknown family {val}")
            elif key == "hashsize":
                n = parse_uint(val, 0, 0xFFFFFFFF)
                size = 64
                while size < n:
                    size *= 2
                s.hashsize = size if n else DEFAULT_HASHSIZE
            elif key == "maxelem":
                s.maxelem = parse_uint(val, 0, 0xFFFFFFFF)
            elif key == "timeout":
                s.timeout = parse_uint(val, 0, MAX_TIMEOUT)
            elif key == "bucketsize":
                b = parse_uint(val, 0, 255)
                b = max(2, min(b, DEFAULT_BUCKETSIZE))
                s.bucketsize = b + (b & 1)
            elif key == "initval":
                try:
                    s.initval = int(val, 0) & 0xFFFFFFFF
                except ValueError:
                    raise IpsetError(f"Syntax error: '{val}' is invalid as number") from None
            elif key == "range":
                lo, _, hi = val.partition("-")
                if not hi:
                    raise IpsetError(f"Syntax error: cannot parse {val} as a port range")
                a, b = parse_uint(lo, 0, 65535), parse_uint(hi, 0, 65535)
                s.first_port, s.last_port = min(a, b), max(a, b)
                has_range = True
        if settype == "bitmap:port" and not has_range:
            raise parameter_error("Mandatory option `range' is missing")
        old = self.store.sets.get(name)
        if old is not None:
            if self.opts.exist and old.type == s.type and old.header() == s.header().replace(
                    f"initval 0x{s.initval:08x}", f"initval 0x{old.initval:08x}"):
                return
            raise IpsetError("Set cannot be created: set with the same name already exists")
        s.id = self.store.new_id(settype)
        self.store.sets[name] = s
        maps = self._maps()
        if maps is not None:
            maps.clear_set(IpSet(name, settype, s.id))  # a slot/id used before
            if settype == "bitmap:port":
                maps.write_bitmap(s)
        self.changed = True

    # -- add / del / test -------------------------------------------------------

    def _elem_args(self, s: IpSet, args: list[str], cmd: str) -> tuple[list, int | None, bool]:
        elems = parse_elems(s.type, args[1])
        timeout: int | None = None
        nomatch = False
        i = 2
        while i < len(args):
            key = args[i].lstrip("-")
            if key == "timeout" and cmd == "add":
                if i + 1 >= len(args):
                    raise parameter_error("Missing mandatory argument of option `timeout'")
                timeout = parse_uint(args[i + 1], 0, MAX_TIMEOUT)
                i += 2
            elif key == "nomatch" and s.type == "hash:net":
                nomatch = True
                i += 1
            else:
                raise parameter_error(f"Unknown argument: `{args[i]}'")
        if timeout is not None and s.timeout is None:
            raise IpsetError("Timeout cannot be used: set was created without timeout support")
        return elems, timeout, nomatch

    def _check_elem(self, s: IpSet, elem: tuple) -> None:
        if s.type == "bitmap:port":
            if not s.first_port <= elem[0] <= s.last_port:
                raise IpsetError("Element is out of the range of the set")
        elif s.type == "hash:ip" and elem[0] == 0:
            raise IpsetError("Null-valued element, cannot be stored in a hash type of set")
        elif s.type == "hash:ip,port" and elem[0] == 0:
            raise IpsetError("Kernel error received: Invalid argument")

    def do_add(self, args: list[str]) -> None:
        self._need(args, 2, "add")
        s = self.store.get(args[0])
        elems, timeout, nomatch = self._elem_args(s, args, "add")
        secs = s.timeout if timeout is None else timeout
        expires = now_ns() + secs * NS if secs else 0
        added: list = []
        if s.type == "bitmap:port":
            # the kernel checks a port range against the set's before adding
            for elem, _ in elems:
                self._check_elem(s, elem)
        try:
            for elem, _ in elems:
                self._check_elem(s, elem)
                if elem in s.members:
                    if not self.opts.exist:
                        raise IpsetError("Element cannot be added to the set: it's already added")
                    s.members[elem] = Member(expires, nomatch)
                    added.append(elem)
                    continue
                if s.type != "bitmap:port" and len(s.members) >= s.maxelem:
                    raise IpsetError("Hash is full, cannot add more elements")
                s.members[elem] = Member(expires, nomatch)
                added.append(elem)
        finally:
            if added:
                self.changed = True
                maps = self._maps()
                if maps is not None:
                    maps.put(s, added)

    def do_del(self, args: list[str]) -> None:
        self._need(args, 2, "del")
        s = self.store.get(args[0])
        elems, _, _ = self._elem_args(s, args, "del")
        gone: list = []
        try:
            for elem, _ in elems:
                self._check_elem(s, elem)
                if elem not in s.members:
                    if not self.opts.exist:
                        raise IpsetError("Element cannot be deleted from the set: it's not added")
                    continue
                del s.members[elem]
                gone.append(elem)
        finally:
            if gone:
                self.changed = True
                maps = self._maps()
                if maps is not None:
                    maps.remove(IpSet(s.name, s.type, s.id, members=s.members), gone)

    def do_test(self, args: list[str]) -> None:
        from .match import contains_elem

        self._need(args, 2, "test")
        s = self.store.get(args[0])
        elems, _, _ = self._elem_args(s, args, "test")
        for elem, _ in elems:
            self._check_elem(s, elem)
            text = format_elem(s.type, elem)
            if not contains_elem(s, elem, now_ns()):
                if not self.opts.quiet:
                    self.out.stderr.append(f"{text} is NOT in set {s.name}.\n")
                raise _TestFailed()
            if not self.opts.quiet:
                self.out.stderr.append(f"Warning: {text} is in set {s.name}.\n")

    # -- whole sets ---------------------------------------------------------------

    def _names(self, args: list[str]) -> list[IpSet]:
        if len(args) > 1:
            raise parameter_error(f"Unknown argument {args[1]}")
        if args:
            return [self.store.get(args[0])]
        return list(self.store.sets.values())

    def do_list(self, args: list[str]) -> None:
        sets = self._names(args)
        if self.opts.names:
            self.out.stdout.extend(f"{s.name}\n" for s in sets)
            return
        if self.opts.output == "save":
            self.do_save(args)
            return
        refs = references(self.directory)
        now = now_ns()
        blocks = []
        for s in sets:
            live = s.live_members(now)
            lines = [f"Name: {s.name}\n", f"Type: {s.type}\n", f"Revision: {REVISION[s.type]}\n",
                     f"Header: {s.header()}\n", f"Size in memory: {s.memsize(len(live))}\n",
                     f"References: {refs.get(s.name, 0)}\n", f"Number of entries: {len(live)}\n"]
            if not self.opts.terse:
                lines.append("Members:\n")
                texts = [s.member_text(e, m, now) for e, m in self._ordered(s, live)]
                lines.extend(t + "\n" for t in texts)
            blocks.append("".join(lines))
        self.out.stdout.append("\n".join(blocks))

    def _ordered(self, s: IpSet, live: list) -> list:
        if self.opts.sorted or s.type == "bitmap:port":   # a bitmap lists in port order
            if s.type == "hash:net":
                # as ipset -s: by address, the longer prefix first
                return sorted(live, key=lambda em: (em[0][0], -em[0][1]))
            return sorted(live, key=lambda em: em[0])
        return live

    def do_save(self, args: list[str]) -> None:
        now = now_ns()
        for s in self._names(args):
            self.out.stdout.append(f"create {s.name} {s.type} {s.header()}\n")
            for e, m in self._ordered(s, s.live_members(now)):
                self.out.stdout.append(f"add {s.name} {s.member_text(e, m, now)}\n")

    def do_flush(self, args: list[str]) -> None:
        maps = self._maps()
        for s in self._names(args):
            if maps is not None:
                maps.clear_set(s)
            s.members.clear()
            self.changed = True

    def do_destroy(self, args: list[str]) -> None:
        sets = self._names(args)
        refs = references(self.directory)
        if any(refs.get(s.name) for s in sets):
            raise IpsetError("Set cannot be destroyed: it is in use by a kernel component")
        maps = self._maps()
        for s in sets:
            if maps is not None:
                maps.clear_set(s)
            del self.store.sets[s.name]
            self.changed = True

    def do_rename(self, args: list[str]) -> None:
        self._need(args, 2, "rename")
        s = self.store.get(args[0])
        new = args[1]
        if new in self.store.sets:
            raise IpsetError("Set cannot be renamed: a set with the new name already exists")
        if references(self.directory).get(s.name):
            raise IpsetError("Set cannot be renamed: it is in use by another system")
        s.name = new
        self.store.sets = {(new if k == args[0] else k): v for k, v in self.store.sets.items()}
        self.changed = True

    def do_swap(self, args: list[str]) -> None:
        """Names, ids and references stay; everything else is exchanged
        (what the kernel's swap of two sets' index slots amounts to for
        rules, which refer to a set by its index)."""
        self._need(args, 2, "swap")
        a = self.store.get(args[0])
        b = self.store.sets.get(args[1])
        if b is None:
            raise IpsetError("Sets cannot be swapped: the second set does not exist")
        if a.type != b.type:
            raise IpsetError("The sets cannot be swapped: their type does not match")
        if a.type == "bitmap:port" and (a.timeout is None) != (b.timeout is None):
            refs = references(self.directory)
            if refs.get(a.name) or refs.get(b.name):
                # a rule would then use a bitmap:port set with timeouts,
                # which the data path refuses (datapath/sets.py)
                raise IpsetError("bpf-iptables-set: swapping a bitmap:port set with timeout "
                                 "into a rule's set is not supported")
        old_a = IpSet(a.name, a.type, a.id, members=dict(a.members))
        old_b = IpSet(b.name, b.type, b.id, members=dict(b.members))
        for attr in ("hashsize", "maxelem", "bucketsize", "initval", "timeout", "first_port",
                     "last_port", "members"):
            va, vb = getattr(a, attr), getattr(b, attr)
            setattr(a, attr, vb)
            setattr(b, attr, va)
        maps = self._maps()
        if maps is not None:
            maps.write_set(a, old_a)
            maps.write_set(b, old_b)
        self.changed = True

    def do_restore(self, args: list[str]) -> None:
        text = read_input(self.opts.file, self.opts.stdin or sys.stdin)
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split()
            if not words or words[0].startswith("#") or words[0] == "COMMIT":
                continue
            try:
                self.run(words, restoring=True)
            except IpsetError as exc:
                if exc.status == 1:
                    exc.message = f"Error in line {number}: {exc.message}"
                raise

    def do_help(self, args: list[str]) -> None:
        self.out.stdout.append(HELP)

    def do_version(self, args: list[str]) -> None:
        self.out.stdout.append(f"{PROG} v{VERSION}, protocol version: 7\n")


class _TestFailed(Exception):
    """``test``: the element is not in the set (exit 1, message already out)."""


def read_input(path: str | None, stdin: TextIO) -> str:
    if path is None:
        return stdin.read()
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        raise IpsetError(f"Cannot open {path} for reading: {exc.strerror}") from None


def execute(argv: list[str], directory: Path, stdout: TextIO, stderr: TextIO,
            stdin: TextIO | None = None) -> int:
    """Run one command line; its exit status."""
    opts = Options(stdin=stdin)
    out = Out()
    status = 0
    try:
        words = split_options(argv, opts)
        if not words:
            raise parameter_error("No command specified.")
        with locked(directory):
            session = Session(directory, opts, out)
            try:
                try:
                    session.run(words)
                except OSError as exc:
                    # a map write failed (the maps are full, no memory): the
                    # store is not saved, and the maps are put back as it says
                    session.changed = False
                    session.restore_maps()
                    why = (f"more than {MAX_ELEMS} elements of one set type in a namespace"
                           if exc.errno == errno.E2BIG else exc.strerror or str(exc))
                    raise IpsetError(f"bpf-iptables-set: writing the set maps failed: {why}"
                                     ) from None
                finally:
                    if session.changed:
                        session.store.save()
            finally:
                session.store.close()
    except _TestFailed:
        status = 1
    except IpsetError as exc:
        status = exc.status
        if not opts.quiet or status == 2:
            out.stderr.append(f"{PROG} v{VERSION}: {exc.message}\n")
            if status == 2:
                out.stderr.append(f"Try `{PROG} help' for more information.\n")
    text = "".join(out.stdout)
    if opts.file is not None and text and words_command(argv) in ("save", "list"):
        # -f: save (and list) write to the file instead
        try:
            with open(opts.file, "w") as fh:
                fh.write(text)
            text = ""
        except OSError as exc:
            out.stderr.append(f"{PROG} v{VERSION}: Cannot open {opts.file} for writing: "
                              f"{exc.strerror}\n")
            status = status or 1
    stdout.write(text)
    stdout.flush()
    stderr.write("".join(out.stderr))
    return status
