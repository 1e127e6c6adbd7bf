"""iptables' do_parse() and ipv4_post_parse(): argv -> ParsedCommand.

The order of checks follows iptables 1.8.9 exactly, because the first
failing check decides the message a script sees."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .. import extensions as registry
from ..errors import NotSupported, XtablesError
from ..extensions.base import Extension, ParseContext
from ..extensions.standard import refuse_queue
from ..model import Counters, Match, Rule, Target
from ..netaddr import IPv4Net, ipparse_multiple, parse_interface, parse_protocol, proto_to_name
from ..numbers import INT_MAX, strtoui
from .getopt import (MISSING_ARG, NO_ARGUMENT, NON_OPTION, OPTIONAL_ARGUMENT, REQUIRED_ARGUMENT,
                     UNKNOWN, Getopt, LongOption)

# Commands (CMD_*), as bits in iptables' order.
CMD_NONE = 0
CMD_INSERT = 1 << 0
CMD_DELETE = 1 << 1
CMD_DELETE_NUM = 1 << 2
CMD_REPLACE = 1 << 3
CMD_APPEND = 1 << 4
CMD_LIST = 1 << 5
CMD_FLUSH = 1 << 6
CMD_ZERO = 1 << 7
CMD_NEW_CHAIN = 1 << 8
CMD_DELETE_CHAIN = 1 << 9
CMD_SET_POLICY = 1 << 10
CMD_RENAME_CHAIN = 1 << 11
CMD_LIST_RULES = 1 << 12
CMD_ZERO_NUM = 1 << 13
CMD_CHECK = 1 << 14
NUMBER_OF_CMD = 15
_CMD_CHARS = "IDDRALFZNXPESZC"

# Options (OPT_*), as bits in iptables' order.
OPT_NUMERIC = 1 << 0
OPT_SOURCE = 1 << 1
OPT_DESTINATION = 1 << 2
OPT_PROTOCOL = 1 << 3
OPT_JUMP = 1 << 4
OPT_VERBOSE = 1 << 5
OPT_EXPANDED = 1 << 6
OPT_VIANAMEIN = 1 << 7
OPT_VIANAMEOUT = 1 << 8
OPT_LINENUMBERS = 1 << 9
OPT_COUNTERS = 1 << 10
OPT_FRAGMENT = 1 << 11
_OPT_CHARS = "nsdpjvxio0cf"
# which options may be inverted with "!"
_INVERTIBLE = {OPT_SOURCE, OPT_DESTINATION, OPT_PROTOCOL, OPT_VIANAMEIN,
               OPT_VIANAMEOUT, OPT_FRAGMENT}

# commands_v_options: per command, one column per option above ('x' = illegal)
_CVO = {
    CMD_INSERT:       "x     x  x  ",
    CMD_DELETE:       "x     x  xx ",
    CMD_DELETE_NUM:   "xxxxx xxxxxx",
    CMD_REPLACE:      "x     x  x  ",
    CMD_APPEND:       "x     x  x  ",
    CMD_LIST:         " xxxx  xx xx",
    CMD_FLUSH:        "xxxxx xxxxxx",
    CMD_ZERO:         "xxxxx xxxxxx",
    CMD_NEW_CHAIN:    "xxxxx xxxxxx",
    CMD_DELETE_CHAIN: "xxxxx xxxxxx",
    CMD_SET_POLICY:   "xxxxx xxxx x",
    CMD_RENAME_CHAIN: "xxxxx xxxxxx",
    CMD_LIST_RULES:   "xxxxx xxxxxx",
    CMD_ZERO_NUM:     "xxxxx xxxxxx",
    CMD_CHECK:        "x     x  xx ",
}

# per command, the options it makes illegal, as a bit mask
_ILLEGAL_FOR = {cmd: sum(1 << i for i, flag in enumerate(row) if flag == "x")
                for cmd, row in _CVO.items()}

IPT_OPTSTRING = "-:A:C:D:E:F::I:L::M:N:P:VX::Z::c:d:i:j:o:p:s:t:R:S::W::46bfg:h::m:nvw::x"

ORIGINAL_OPTS: tuple[tuple[str, int, str], ...] = (
    ("append", 1, "A"), ("delete", 1, "D"), ("check", 1, "C"), ("insert", 1, "I"),
    ("replace", 1, "R"), ("list", 2, "L"), ("list-rules", 2, "S"), ("flush", 2, "F"),
    ("zero", 2, "Z"), ("new-chain", 1, "N"), ("delete-chain", 2, "X"),
    ("rename-chain", 1, "E"), ("policy", 1, "P"), ("source", 1, "s"),
    ("destination", 1, "d"), ("src", 1, "s"), ("dst", 1, "d"), ("protocol", 1, "p"),
    ("in-interface", 1, "i"), ("jump", 1, "j"), ("table", 1, "t"), ("match", 1, "m"),
    ("numeric", 0, "n"), ("out-interface", 1, "o"), ("verbose", 0, "v"), ("wait", 2, "w"),
    ("wait-interval", 2, "W"), ("exact", 0, "x"), ("fragments", 0, "f"), ("version", 0, "V"),
    ("help", 2, "h"), ("line-numbers", 0, "0"), ("modprobe", 1, "M"),
    ("set-counters", 1, "c"), ("goto", 1, "g"), ("ipv4", 0, "4"), ("ipv6", 0, "6"),
)

# Built once: a restore makes a parser per line (LongOption is immutable).
# shared by every parser; never changed in place (merging builds new lists)
_ORIGINAL_LONGOPTS = [LongOption(n, h, v) for n, h, v in ORIGINAL_OPTS]

# Protocol matches iptables would load implicitly that bpf-iptables lacks,
# with their options, so "-p sctp --dport 1" says "not supported".
UNSUPPORTED_PROTO_OPTIONS = {
    "sctp": {"source-port", "sport", "destination-port", "dport", "chunk-types"},
    "dccp": {"source-port", "sport", "destination-port", "dport", "dccp-types", "dccp-option"},
    "esp": {"espspi"},
    "ah": {"ahspi"},
}


class HelpRequested(Exception):
    def __init__(self, text: str):
        self.text = text


class VersionRequested(Exception):
    def __init__(self, invert: bool):
        self.invert = invert


class TryHelpExit(Exception):
    """exit_tryhelp(): only the "Try ..." hint, with an exit status."""

    def __init__(self, status: int = 2):
        self.status = status


class LineIgnored(Exception):
    """-6 inside iptables-restore: the line is skipped."""


def cmd2char(cmd: int) -> str:
    i = 0
    while cmd > 1:
        cmd >>= 1
        i += 1
    return _CMD_CHARS[i]


def opt2char(opt: int) -> str:
    i = 0
    while opt > 1:
        opt >>= 1
        i += 1
    return _OPT_CHARS[i]


@dataclass
class ExtInstance:
    """One loaded match (or the target) in the rule being parsed."""

    ext: Extension
    state: Any
    completed: bool = False


@dataclass
class ParsedCommand:
    command: int = CMD_NONE
    chain: str | None = None
    rulenum: int = 0
    newname: str | None = None
    policy: str | None = None
    table: str = "filter"
    verbose: int = 0
    options: int = 0
    wait: int = 0
    jumpto: str = ""
    goto: bool = False
    target: ExtInstance | None = None
    target_data: Any = None
    match_data: list[Match] = field(default_factory=list)
    base_rule: Rule = field(default_factory=Rule)
    sources: list[IPv4Net] = field(default_factory=list)
    destinations: list[IPv4Net] = field(default_factory=list)
    pcnt: int = 0
    bcnt: int = 0

    def rules(self, target: Target) -> list[Rule]:
        """The rule, once per source x destination (iptables' a,b lists)."""
        out = []
        b = self.base_rule
        matches = tuple(self.match_data)
        for s in self.sources:
            for d in self.destinations:
                # Rule(...) rather than dataclasses.replace: a restore makes
                # 10k of them, and replace() costs three times as much
                out.append(Rule(src=s, dst=d, src_inv=b.src_inv, dst_inv=b.dst_inv,
                                in_iface=b.in_iface, out_iface=b.out_iface, in_inv=b.in_inv,
                                out_inv=b.out_inv, proto=b.proto, proto_inv=b.proto_inv,
                                fragment=b.fragment, frag_inv=b.frag_inv, matches=matches,
                                target=target, counters=Counters(self.pcnt, self.bcnt)))
        return out

    @property
    def numeric(self) -> bool:
        return bool(self.options & OPT_NUMERIC)


_LONGOPTS_CACHE: dict[tuple[str, str], list[LongOption]] = {}


def _extension_longopts(ext: Extension) -> list[LongOption]:
    """An extension's getopt entries (built once per process: restore parses
    thousands of lines that load the same few extensions)."""
    key = (ext.kind, ext.name)
    cached = _LONGOPTS_CACHE.get(key)
    if cached is None:
        cached = []
        for entry in ext.getopt_options:
            name, has_arg = entry[0], entry[1]
            opt_id = entry[2] if len(entry) > 2 else name
            cached.append(LongOption(name, REQUIRED_ARGUMENT if has_arg else NO_ARGUMENT,
                                     (key, opt_id)))
        _LONGOPTS_CACHE[key] = cached
    return cached


# (id(list), kind, name) -> (the list, the merged list). Parsers start from
# the same shared list of original options, so the lines of a restore file
# that load the same extensions reuse the same merged lists (and getopt's
# lookup tables for them). Lists are never changed in place.
_MERGE_CACHE: dict[tuple[int, str, str], tuple[list[LongOption], list[LongOption]]] = {}


def _merged_longopts(current: list[LongOption], ext: Extension) -> list[LongOption]:
    key = (id(current), ext.kind, ext.name)
    hit = _MERGE_CACHE.get(key)
    if hit is None or hit[0] is not current:
        older = [o for o in current[len(ORIGINAL_OPTS):] if o.val[0] != (ext.kind, ext.name)]
        merged = current[:len(ORIGINAL_OPTS)] + _extension_longopts(ext) + older
        if len(_MERGE_CACHE) > 1024:
            _MERGE_CACHE.clear()
        hit = _MERGE_CACHE[key] = (current, merged)
    return hit[1]


class CommandParser:
    """One do_parse() run."""

    def __init__(self, argv: list[str], table: str = "filter", restore: bool = False,
                 help_printer: Callable[[list[Extension]], str] | None = None,
                 notargets: frozenset[str] | set[str] = frozenset()):
        self.argv = argv
        # chains iptables-restore announced (xtables_announce_chain): -j NAME
        # never loads an extension of that name
        self.notargets = notargets
        self.restore = restore
        self.p = ParsedCommand(table=table)
        self.matches: list[ExtInstance] = []
        self.merged: set[str] = set()      # extensions whose options getopt knows
        self.protocol: str | None = None
        self.proto_used = False
        self.invert = False
        self.ctx = ParseContext()
        self.shost: str | None = None
        self.dhost: str | None = None
        # where -s and -d found their address: argv index by letter (restore's
        # parse cache replays a parse with other addresses there)
        self.address_words: dict[str, int] = {}
        self.help_printer = help_printer
        self.getopt = Getopt(argv, IPT_OPTSTRING, _ORIGINAL_LONGOPTS)
        self.ctx.argv = self.getopt

    # -- option merging ------------------------------------------------------

    def merge_options(self, ext: Extension) -> None:
        """xtables_merge_options(): new options go after the originals and
        before those merged earlier."""
        if ext.name in self.merged and ext.kind == "match":
            return
        self.merged.add(ext.name)
        self.getopt.longopts = _merged_longopts(self.getopt.longopts, ext)

    # -- helpers ---------------------------------------------------------------

    def attached_word(self) -> str:
        """argv[optind - 1], which iptables reads for -p -s -d -j -i -o.

        With a separate argument that is the argument; with an attached one
        ("-ptcp", "--jump=ACCEPT") it is the whole word, option included,
        so iptables rejects those spellings. We reproduce that."""
        return self.getopt.argv[self.getopt.optind - 1]

    def add_command(self, newcmd: int, othercmds: int) -> None:
        if self.invert:
            raise XtablesError("unexpected '!' flag")
        if self.p.command & ~othercmds:
            raise XtablesError(f"Cannot use -{cmd2char(newcmd)} with "
                               f"-{cmd2char(self.p.command & ~othercmds)}")
        self.p.command |= newcmd

    def set_option(self, option: int) -> None:
        if self.p.options & option:
            raise XtablesError(f"multiple -{opt2char(option)} flags not allowed")
        self.p.options |= option
        if self.invert:
            if option not in _INVERTIBLE:
                raise XtablesError(f"cannot have ! before -{opt2char(option)}")
            self._set_inv(option)

    def _set_inv(self, option: int) -> None:
        r = self.p.base_rule
        if option == OPT_SOURCE:
            r.src_inv = True
        elif option == OPT_DESTINATION:
            r.dst_inv = True
        elif option == OPT_PROTOCOL:
            r.proto_inv = True
            self.ctx.proto_inv = True
        elif option == OPT_VIANAMEIN:
            r.in_inv = True
        elif option == OPT_VIANAMEOUT:
            r.out_inv = True
        elif option == OPT_FRAGMENT:
            r.frag_inv = True

    def parse_rulenumber(self, text: str) -> int:
        value = strtoui(text, 1, INT_MAX)
        if value is None:
            raise XtablesError(f"Invalid rule number `{text}'")
        return value

    @staticmethod
    def check_empty_interface(arg: str | None) -> None:
        if arg == "":
            raise XtablesError("Empty interface is likely to be undesired")

    @staticmethod
    def parse_target_name(name: str) -> str:
        if len(name) < 1:
            raise XtablesError("Invalid target name (too short)")
        if len(name.encode()) >= 29:
            raise XtablesError(f"Invalid target name `{name}' (28 chars max)")
        if not name.isalnum() and any(c.isspace() for c in name):
            raise XtablesError(f"Invalid target name `{name}'")
        return name

    # -- the main loop -------------------------------------------------------

    def parse(self) -> ParsedCommand:
        g = self.getopt
        p = self.p
        wait_interval_set = False
        table_set = False
        while True:
            res = g.next()
            if res is None:
                break
            c, optarg = res.code, res.optarg
            if type(c) is tuple:
                # an extension's option (see command_default): tested
                # first, so it does not go through every letter below
                if self.command_default(c, optarg):
                    continue
            elif c == "A":
                self.add_command(CMD_APPEND, CMD_NONE)
                p.chain = optarg
            elif c == "C":
                self.add_command(CMD_CHECK, CMD_NONE)
                p.chain = optarg
            elif c == "D":
                self.add_command(CMD_DELETE, CMD_NONE)
                p.chain = optarg
                if g.has_arg():
                    p.rulenum = self.parse_rulenumber(g.take())
                    p.command = CMD_DELETE_NUM
            elif c == "R":
                self.add_command(CMD_REPLACE, CMD_NONE)
                p.chain = optarg
                if g.has_arg():
                    p.rulenum = self.parse_rulenumber(g.take())
                else:
                    raise XtablesError(f"-{cmd2char(CMD_REPLACE)} requires a rule number")
            elif c == "I":
                self.add_command(CMD_INSERT, CMD_NONE)
                p.chain = optarg
                p.rulenum = self.parse_rulenumber(g.take()) if g.has_arg() else 1
            elif c in ("L", "S"):
                self.add_command(CMD_LIST if c == "L" else CMD_LIST_RULES,
                                 CMD_ZERO | CMD_ZERO_NUM)
                if optarg is not None:
                    p.chain = optarg
                elif g.has_arg():
                    p.chain = g.take()
                if g.has_arg():
                    p.rulenum = self.parse_rulenumber(g.take())
            elif c == "F":
                self.add_command(CMD_FLUSH, CMD_NONE)
                if optarg is not None:
                    p.chain = optarg
                elif g.has_arg():
                    p.chain = g.take()
            elif c == "Z":
                self.add_command(CMD_ZERO, CMD_LIST | CMD_LIST_RULES)
                if optarg is not None:
                    p.chain = optarg
                elif g.has_arg():
                    p.chain = g.take()
                if g.has_arg():
                    p.rulenum = self.parse_rulenumber(g.take())
                    p.command = CMD_ZERO_NUM
            elif c == "N":
                assert_valid_chain_name(optarg or "")
                self.add_command(CMD_NEW_CHAIN, CMD_NONE)
                p.chain = optarg
            elif c == "X":
                self.add_command(CMD_DELETE_CHAIN, CMD_NONE)
                if optarg is not None:
                    p.chain = optarg
                elif g.has_arg():
                    p.chain = g.take()
            elif c == "E":
                self.add_command(CMD_RENAME_CHAIN, CMD_NONE)
                p.chain = optarg
                if g.has_arg():
                    p.newname = g.take()
                else:
                    raise XtablesError(
                        f"-{cmd2char(CMD_RENAME_CHAIN)} requires old-chain-name and new-chain-name")
            elif c == "P":
                self.add_command(CMD_SET_POLICY, CMD_NONE)
                p.chain = optarg
                if g.has_arg():
                    p.policy = g.take()
                else:
                    raise XtablesError(f"-{cmd2char(CMD_SET_POLICY)} requires a chain and a policy")
            elif c == "h":
                raise HelpRequested(self.help_printer(self.help_extensions())
                                    if self.help_printer else "")
            elif c == "p":
                self.set_option(OPT_PROTOCOL)
                self.protocol = self.attached_word().lower()
                proto = parse_protocol(self.protocol)
                p.base_rule.proto = proto
                self.ctx.proto = proto
                if proto == 0 and p.base_rule.proto_inv:
                    raise XtablesError("rule would never match protocol")
            elif c == "s":
                self.set_option(OPT_SOURCE)
                self.shost = self.attached_word()
                self.address_words["s"] = g.optind - 1
            elif c == "d":
                self.set_option(OPT_DESTINATION)
                self.dhost = self.attached_word()
                self.address_words["d"] = g.optind - 1
            elif c == "g":
                self.set_option(OPT_JUMP)
                p.goto = True
                p.jumpto = self.parse_target_name(optarg or "")
            elif c == "j":
                self.set_option(OPT_JUMP)
                self.command_jump(self.attached_word())
            elif c == "i":
                self.check_empty_interface(optarg)
                self.set_option(OPT_VIANAMEIN)
                p.base_rule.in_iface = parse_interface(self.attached_word())
            elif c == "o":
                self.check_empty_interface(optarg)
                self.set_option(OPT_VIANAMEOUT)
                p.base_rule.out_iface = parse_interface(self.attached_word())
            elif c == "f":
                self.set_option(OPT_FRAGMENT)
                p.base_rule.fragment = True
            elif c == "v":
                if not p.verbose:
                    self.set_option(OPT_VERBOSE)
                p.verbose += 1
            elif c == "m":
                self.command_match(optarg or "")
            elif c == "n":
                self.set_option(OPT_NUMERIC)
                self.ctx.numeric = True
            elif c == "t":
                if self.invert:
                    raise XtablesError("unexpected ! flag before --table")
                if self.restore and table_set:
                    raise XtablesError("The -t option cannot be used in iptables-restore.\n")
                p.table = optarg or ""
                table_set = True
            elif c == "x":
                self.set_option(OPT_EXPANDED)
            elif c == "V":
                raise VersionRequested(self.invert)
            elif c == "w":
                if self.restore:
                    raise XtablesError("You cannot use `-w' from iptables-restore")
                p.wait = self.parse_wait_time(optarg)
            elif c == "W":
                if self.restore:
                    raise XtablesError("You cannot use `-W' from iptables-restore")
                self.parse_wait_interval(optarg)
                wait_interval_set = True
            elif c == "0":
                self.set_option(OPT_LINENUMBERS)
            elif c == "M":
                pass  # --modprobe: there are no kernel modules to load
            elif c == "c":
                self.parse_counters_option(optarg or "")
            elif c == "4":
                pass
            elif c == "6":
                if self.restore:
                    raise LineIgnored()
                raise TryHelpExit(2)
            elif c == NON_OPTION:
                if optarg == "!":
                    if self.invert:
                        raise XtablesError("multiple consecutive ! not allowed")
                    self.invert = True
                    continue
                sys.stderr.write(f"Bad argument `{optarg}'\n")
                raise TryHelpExit(2)
            else:
                if self.command_default(c, optarg):
                    continue
            self.invert = False

        self.finish(wait_interval_set)
        return p

    def finish(self, wait_interval_set: bool) -> None:
        p = self.p
        if not p.wait and wait_interval_set:
            raise XtablesError("--wait-interval only makes sense with --wait\n")
        for inst in self.matches:
            p.match_data.append(Match(inst.ext.name, inst.ext.final_check(inst.state, self.ctx)))
        if p.target is not None:
            p.target_data = p.target.ext.final_check(p.target.state, self.ctx)
        if self.getopt.leftover_start() < len(self.argv):
            raise XtablesError("unknown arguments found on commandline")
        if not p.command:
            raise XtablesError("no command specified")
        if self.invert:
            raise XtablesError("nothing appropriate following !")
        self.post_parse()
        if p.command == CMD_REPLACE and (len(p.sources) != 1 or len(p.destinations) != 1):
            raise XtablesError("Replacement rule does not specify a unique address")
        self.generic_opt_check()
        if p.chain is not None and len(p.chain.encode()) >= 29:
            raise XtablesError(f"chain name `{p.chain}' too long (must be under 29 chars)")
        if p.command in (CMD_APPEND, CMD_DELETE, CMD_DELETE_NUM, CMD_CHECK, CMD_INSERT, CMD_REPLACE):
            if p.chain in ("PREROUTING", "INPUT") and p.options & OPT_VIANAMEOUT:
                raise XtablesError(f"Can't use -{opt2char(OPT_VIANAMEOUT)} with {p.chain}\n")
            if p.chain in ("POSTROUTING", "OUTPUT") and p.options & OPT_VIANAMEIN:
                raise XtablesError(f"Can't use -{opt2char(OPT_VIANAMEIN)} with {p.chain}\n")

    def post_parse(self) -> None:
        p = self.p
        if p.command & (CMD_REPLACE | CMD_INSERT | CMD_DELETE | CMD_APPEND | CMD_CHECK):
            if not p.options & OPT_DESTINATION:
                self.dhost = "0.0.0.0/0"
            if not p.options & OPT_SOURCE:
                self.shost = "0.0.0.0/0"
        if self.shost is not None:
            p.sources = ipparse_multiple(self.shost)
        if self.dhost is not None:
            p.destinations = ipparse_multiple(self.dhost)
        if ((len(p.sources) > 1 or len(p.destinations) > 1)
                and (p.base_rule.src_inv or p.base_rule.dst_inv)):
            raise XtablesError("! not allowed with multiple source or destination IP addresses")

    def generic_opt_check(self) -> None:
        """An option is legal when any of the given commands allows it."""
        command, options = self.p.command, self.p.options
        illegal = _ILLEGAL_FOR.get(command)
        if illegal is None:  # several commands (-L -Z): legal if any allows it
            illegal = ~0
            for j in range(NUMBER_OF_CMD):
                if command & (1 << j):
                    illegal &= _ILLEGAL_FOR[1 << j]
        bad = options & illegal
        if bad:
            first = (bad & -bad).bit_length() - 1
            raise XtablesError(f"Illegal option `-{_OPT_CHARS[first]}' with this command")

    # -- matches, targets and extension options --------------------------------

    def command_match(self, name: str) -> None:
        if self.invert:
            raise XtablesError("unexpected ! flag before --match")
        ext = registry.find_match(name)
        self._add_match(ext)

    def _add_match(self, ext: Extension) -> None:
        for inst in self.matches:
            if inst.ext.name == ext.name:
                inst.completed = True
        self.matches.append(ExtInstance(ext, ext.init()))
        self.merge_options(ext)

    def command_jump(self, name: str) -> None:
        p = self.p
        p.jumpto = self.parse_target_name(name)
        if name in self.notargets and name not in registry.STANDARD_TARGET_NAMES:
            return
        if name in registry.IPTABLES_TARGETS and registry.try_target(name) is None:
            raise NotSupported(f"target `{name}'")
        ext = registry.try_target(name)
        if ext is None:
            return
        if ext.name == "standard":
            refuse_queue(name)
        p.target = ExtInstance(ext, ext.init())
        self.merge_options(ext)

    def command_default(self, c: Any, optarg: str | None) -> bool:
        """An option no built-in case handles: an extension's, or unknown."""
        if isinstance(c, tuple):
            (kind, ext_name), opt_id = c
            p = self.p
            if kind == "target" and p.target is not None and p.target.ext.name == ext_name:
                p.target.ext.parse(p.target.state, opt_id, optarg, self.invert, self.ctx)
                return False
            for inst in self.matches:
                if inst.completed or inst.ext.name != ext_name:
                    continue
                inst.ext.parse(inst.state, opt_id, optarg, self.invert, self.ctx)
                return False
        ext = self.load_proto()
        if ext is not None:
            self.proto_used = True
            self._add_match(ext)
            self.getopt.optind -= 1
            self.getopt.nextchar = ""
            return True
        quoted = self.argv[self.getopt.optind - 1]
        if c == MISSING_ARG:
            raise XtablesError(f'option "{quoted}" requires an argument')
        if c == UNKNOWN:
            raise XtablesError(f'unknown option "{quoted}"')
        raise XtablesError(f'Unknown arg "{optarg}"')

    def _proto_name(self) -> str | None:
        assert self.protocol is not None
        num = strtoui(self.protocol, 0, 255)
        if num is not None:
            return proto_to_name(num, bool(self.p.options & OPT_NUMERIC))
        return self.protocol

    def load_proto(self) -> Extension | None:
        if self.protocol is None:
            return None
        name = self._proto_name()
        if name is None:
            return None
        ext = registry.try_match(name)
        if ext is None:
            if name in UNSUPPORTED_PROTO_OPTIONS:
                word = self.argv[self.getopt.optind - 1]
                opt = word[2:].split("=", 1)[0] if word.startswith("--") else ""
                if any(o.startswith(opt) for o in UNSUPPORTED_PROTO_OPTIONS[name]) and opt:
                    raise NotSupported(f"match `{name}'")
            return None
        # should_load_proto(): loaded-but-unused, or not loaded at all
        if ext.name in self.merged and self.proto_used:
            return None
        return ext

    def help_extensions(self) -> list[Extension]:
        """The extensions whose help -h appends: the target, then the
        matches; "-p tcp -h" loads the protocol's match for its help."""
        found: list[Extension] = [self.p.target.ext] if self.p.target is not None else []
        if self.matches:
            found += [inst.ext for inst in self.matches]
        elif self.protocol:
            proto = registry.try_match(self.protocol)
            if proto is not None:
                found.append(proto)
        return found

    # -- small option parsers --------------------------------------------------

    def parse_wait_time(self, optarg: str | None) -> int:
        text = optarg
        if text is None and self.getopt.has_arg():
            text = self.getopt.take()
        if text is None:
            return -1
        value = _scanf_int(text)
        if value is None:
            raise XtablesError("wait seconds not numeric")
        return value

    def parse_wait_interval(self, optarg: str | None) -> None:
        if optarg is not None:
            arg = optarg
        elif self.getopt.has_arg():
            arg = self.getopt.take()
        else:
            raise XtablesError("wait interval value required")
        value = _scanf_uint(arg)
        if value is None:
            raise XtablesError("wait interval not numeric")
        if value > 999999:
            raise XtablesError(f"too long usec wait {value} > 999999 usec")
        sys.stderr.write("Ignoring deprecated --wait-interval option.\n")

    def parse_counters_option(self, optarg: str) -> None:
        self.set_option(OPT_COUNTERS)
        pcnt = optarg
        comma = optarg.find(",", 1)
        bcnt = optarg[comma + 1:] if comma >= 0 else None
        if bcnt is None and self.getopt.has_arg():
            bcnt = self.getopt.take()
        if bcnt is None:
            raise XtablesError(f"-{opt2char(OPT_COUNTERS)} requires packet and byte counter")
        p = _scanf_ull(pcnt)
        if p is None:
            raise XtablesError(f"-{opt2char(OPT_COUNTERS)} packet counter not numeric")
        b = _scanf_ull(bcnt)
        if b is None:
            raise XtablesError(f"-{opt2char(OPT_COUNTERS)} byte counter not numeric")
        self.p.pcnt, self.p.bcnt = p, b


def assert_valid_chain_name(name: str) -> None:
    if len(name.encode()) >= 29:
        raise XtablesError(f"chain name `{name}' too long (must be under 29 chars)")
    if name.startswith(("-", "!")):
        raise XtablesError(f"chain name not allowed to start with `{name[0]}'")
    # xtables_find_target() treats "" as the standard target
    if name == "" or registry.is_target_name(name):
        raise XtablesError("chain name may not clash with target name")
    if any(c.isspace() for c in name):
        raise XtablesError(f"Invalid chain name `{name}'")


def _scanf_int(text: str) -> int | None:
    """sscanf("%i"): optional sign, then decimal/0x hex/0 octal prefix."""
    import re

    m = re.match(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return None
    sign, digits = m.groups()
    value = int(digits, 0) if not digits.startswith("0") or digits.lower().startswith("0x") or digits == "0" else int(digits, 8)
    value = -value if sign == "-" else value
    return ((value + 2**31) % 2**32) - 2**31


def _scanf_unsigned(text: str, bits: int) -> int | None:
    """sscanf("%u"/"%llu"): optional sign, decimal digits, wrapped to ``bits``."""
    import re

    m = re.match(r"\s*([+-]?)([0-9]+)", text)
    if not m:
        return None
    value = int(m.group(2))
    return (-value if m.group(1) == "-" else value) % 2**bits


def _scanf_uint(text: str) -> int | None:
    return _scanf_unsigned(text, 32)


def _scanf_ull(text: str) -> int | None:
    return _scanf_unsigned(text, 64)
