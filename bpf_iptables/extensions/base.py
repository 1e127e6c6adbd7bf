"""What every extension module provides, and the shared option machinery.

An extension module owns, for one match or target: its options (names and
whether they take an argument, for getopt), their parsing into an immutable
data object, the canonical save text (``-S``/iptables-save), the ``-L`` text,
the checks the kernel would make when the rule is committed, and its
reference semantics on a packet. The data path lowering hangs off the same
class later. Nothing outside the module knows its options.

Most iptables extensions use libxtables' "x6" option tables: typed options
with flags (invertible, may repeat, mandatory, exclusions). ``XtOption`` and
``XtOptionsExtension`` reproduce that machinery with the same error texts, so
a module only declares its table and reacts to already-parsed values."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import NotSupported, XtablesError
from ..netaddr import ipparse_any, parse_protocol, service_to_port
from ..numbers import UINT8_MAX, UINT16_MAX, UINT32_MAX, UINT64_MAX, parse_prefix, strtoul

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet


@dataclass
class ParseContext:
    """What an extension may look at while its options are parsed: the
    rule's IP part as parsed so far (iptables passes ``struct ipt_entry``)."""

    proto: int = 0
    proto_inv: bool = False
    numeric: bool = False
    # The argv reader, for the few options that consume a second word
    # (tcp's "--tcp-flags MASK COMP"): has_arg()/take() as in xs_has_arg.
    argv: Any = None


@dataclass(frozen=True)
class Verdict:
    """Outcome of a target in the reference semantics.

    kind: "accept", "drop", "reject" (detail = reject type) or "continue"
    (non-terminal targets such as LOG)."""

    kind: str
    detail: str = ""


class Extension:
    """Base of all match and target extensions."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "match" or "target"
    # Long options, in the order getopt sees them: (name, takes_argument).
    getopt_options: ClassVar[tuple[tuple[str, bool], ...]] = ()
    # A match that the kernel only allows with "-p <proto>" (not inverted).
    required_proto: ClassVar[int | None] = None
    # Hooks the kernel allows the extension in (None: all).
    allowed_hooks: ClassVar[frozenset[str] | None] = None

    def init(self) -> Any:
        """Fresh per-rule parse state."""
        return {}

    def parse(self, state: Any, option: str, arg: str | None, invert: bool,
              ctx: ParseContext) -> None:
        raise NotImplementedError

    def final_check(self, state: Any, ctx: ParseContext) -> Any:
        """Validate the collected options and return the immutable data."""
        raise NotImplementedError

    def save(self, data: Any) -> str:
        """Save text after ``-m NAME``/``-j NAME``, with leading spaces."""
        return ""

    def print(self, data: Any, numeric: bool) -> str:
        """Text of ``-L``, with a leading space (as iptables' print())."""
        return ""

    def kernel_check(self, data: Any, rule: "Rule", hooks: frozenset[str]) -> bool:
        """The kernel's checkentry: False makes the commit fail with EINVAL."""
        return True


class MatchExtension(Extension):
    kind = "match"

    def matches(self, data: Any, packet: "Packet") -> bool:
        raise NotImplementedError

    def lower(self, data: Any, rule: "Rule") -> list[Any]:
        """This match as eBPF data-path constraints (``datapath.fields``
        constraint objects, a conjunction). A match that cannot be enforced
        there is refused rather than ignored."""
        raise NotSupported(f"match `{self.name}' in the eBPF data path")


class TargetExtension(Extension):
    kind = "target"

    def verdict(self, data: Any, packet: "Packet") -> Verdict:
        raise NotImplementedError


# --- the x6 option machinery --------------------------------------------------

class T(Enum):
    """Option argument types, as XTTYPE_*."""

    NONE = auto()
    UINT8 = auto()
    UINT16 = auto()
    UINT32 = auto()
    UINT64 = auto()
    UINT8RC = auto()
    UINT16RC = auto()
    UINT32RC = auto()
    UINT64RC = auto()
    STRING = auto()
    SYSLOGLEVEL = auto()
    HOST = auto()
    HOSTMASK = auto()
    PROTOCOL = auto()
    PORT = auto()
    PORTRC = auto()
    ETHERMAC = auto()
    TOSMASK = auto()
    MARKMASK32 = auto()
    DOUBLE = auto()


_TYPE_MAX = {
    T.UINT8: UINT8_MAX, T.UINT16: UINT16_MAX, T.UINT32: UINT32_MAX, T.UINT64: UINT64_MAX,
    T.UINT8RC: UINT8_MAX, T.UINT16RC: UINT16_MAX, T.UINT32RC: UINT32_MAX, T.UINT64RC: UINT64_MAX,
}


@dataclass(frozen=True)
class XtOption:
    name: str
    type: T = T.NONE
    invert: bool = False      # XTOPT_INVERT
    multi: bool = False       # XTOPT_MULTI
    mand: bool = False        # XTOPT_MAND
    excl: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    min: int = 0
    max: int = 0
    id: str = ""              # options sharing an id share a flag bit
    size: int = 0             # XTTYPE_STRING buffer size (0: no limit)

    @property
    def key(self) -> str:
        return self.id or self.name


@dataclass
class XtState:
    """Per-rule parse state of an x6 extension: flags seen + values."""

    flags: set[str] = field(default_factory=set)
    values: dict[str, Any] = field(default_factory=dict)
    inverted: dict[str, bool] = field(default_factory=dict)


SYSLOG_LEVELS = {
    "alert": 1, "crit": 2, "debug": 7, "emerg": 0, "error": 3,
    "info": 6, "notice": 5, "panic": 0, "warning": 4,
}


class XtOptionsExtension(Extension):
    """An extension declared by an x6 option table."""

    xt_options: ClassVar[tuple[XtOption, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.xt_options and not cls.__dict__.get("getopt_options"):
            # Synonyms share their id, hence getopt's val: glibc then does not
            # call an abbreviation of both ambiguous ("--d" for dport and
            # destination-port).
            cls.getopt_options = tuple((o.name, o.type is not T.NONE, o.key)
                                       for o in cls.xt_options)

    def init(self) -> XtState:
        return XtState()

    def option(self, name: str) -> XtOption:
        """The entry for an option id (or name).

        libxtables looks an option up by its id, which finds the *first*
        entry with that id: a synonym is parsed, checked for inversion and
        named in messages as that first entry (``--sport`` reports
        "--source-port"; ``! --ttl 5`` is ``! --ttl-eq 5``)."""
        for opt in self.xt_options:
            if opt.key == name:
                return opt
        for opt in self.xt_options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def parse(self, state: XtState, option: str, arg: str | None, invert: bool,
              ctx: ParseContext) -> None:
        opt = self.option(option)
        self.generic_parse(state, opt, arg, invert)
        self.on_option(state, opt, state.values.get(opt.key), invert, ctx, arg)

    def generic_parse(self, state: XtState, opt: XtOption, arg: str | None, invert: bool) -> None:
        """xtables_option_parse(): multi-use, inversion, typed value."""
        if (not opt.multi or opt.key in opt.excl) and opt.key in state.flags:
            raise XtablesError(f'{self.name}: option "--{opt.name}" can only be used once.\n')
        if invert and not opt.invert:
            raise XtablesError(f'{self.name}: option "--{opt.name}" cannot be inverted.\n')
        if opt.type is not T.NONE and arg is None:
            raise XtablesError(f'{self.name}: option "--{opt.name}" requires an argument.\n')
        if opt.type is not T.NONE:
            state.values[opt.key] = self.parse_value(opt, arg or "")
        else:
            state.values[opt.key] = True
        state.inverted[opt.key] = invert
        state.flags.add(opt.key)

    def parse_value(self, opt: XtOption, arg: str) -> Any:
        t = opt.type
        if t in (T.UINT8, T.UINT16, T.UINT32, T.UINT64):
            lo = opt.min
            hi = opt.max or _TYPE_MAX[t]
            value = strtoul(arg, lo, hi)
            if value is None:
                raise XtablesError(
                    f'{self.name}: bad value for option "--{opt.name}", '
                    f"or out of range ({lo}-{hi}).\n")
            return value
        if t in (T.UINT8RC, T.UINT16RC, T.UINT32RC, T.UINT64RC):
            return self._parse_mint(opt, arg)
        if t is T.STRING:
            # argv bytes that are not UTF-8 arrive as surrogates; C counts
            # (and cuts) bytes, so work on the original bytes
            raw = arg.encode("utf-8", "surrogateescape")
            length = len(raw)
            if opt.min and length < opt.min:
                raise XtablesError(f"Argument must have a minimum length of {opt.min} characters\n")
            if opt.max and length > opt.max:
                raise XtablesError(f"Argument must have a maximum length of {opt.max} characters\n")
            if opt.size and length >= opt.size:
                # XTOPT_PUT truncates silently to the buffer size
                arg = raw[:opt.size - 1].decode("utf-8", "surrogateescape")
            return arg
        if t is T.SYSLOGLEVEL:
            num = strtoul(arg, 0, 7)
            if num is None:
                if arg not in SYSLOG_LEVELS:
                    raise XtablesError(f'log level "{arg}" unknown\n')
                num = SYSLOG_LEVELS[arg]
            return num
        if t is T.PROTOCOL:
            return parse_protocol(arg)
        if t is T.PORT:
            value = getportbyname(arg)
            if value < 0:
                raise XtablesError(f'Port "{arg}" does not resolve to anything.\n')
            return value
        if t is T.PORTRC:
            return self._parse_portrc(opt, arg)
        if t is T.HOSTMASK:
            addrs, mask = ipparse_any(arg)
            return addrs[0], mask
        if t is T.HOST:
            addrs, _ = ipparse_any(arg)
            return addrs[0]
        if t is T.ETHERMAC:
            return parse_mac(arg)
        if t is T.DOUBLE:
            try:
                return float(arg)
            except ValueError:
                raise XtablesError(
                    f'{self.name}: bad value for option "--{opt.name}", '
                    f"or out of range ({opt.min}-{opt.max}).\n") from None
        raise NotImplementedError(t)

    def _parse_mint(self, opt: XtOption, arg: str) -> tuple[int, ...]:
        """xtopt_parse_mint(): "a[:b]"; an empty component takes 0 / the max."""
        lmax = _TYPE_MAX[opt.type]
        maxiter = 2
        values: list[int] = []
        pos = 0
        while True:
            if len(values) == maxiter:
                raise XtablesError(
                    f'{self.name}: Too many components for option "--{opt.name}" (max: {maxiter})\n')
            rest = arg[pos:]
            if rest == "" or rest[0] == ":":
                end = pos
                value = lmax if len(values) == 1 else 0
            else:
                value, n = parse_prefix(rest, 0, lmax)
                if value is None:
                    raise XtablesError(
                        f'{self.name}: bad value for option "--{opt.name}" near "{rest}", '
                        f"or out of range (0-{lmax}).\n")
                end = pos + n
                if end < len(arg) and arg[end] != ":":
                    raise XtablesError(
                        f'{self.name}: Argument to "--{opt.name}" has unexpected characters '
                        f'near "{arg[end:]}".\n')
            values.append(value)
            if end >= len(arg):
                break
            pos = end + 1
        return tuple(values)

    def _parse_portrc(self, opt: XtOption, arg: str) -> tuple[int, int]:
        """xtopt_parse_mport(): "a[:b]" with service names; defaults 0/65535."""
        rng = [0, 0xFFFF]
        count = 0
        for piece in arg.split(":"):
            if count == 2:
                raise XtablesError(
                    f'{self.name}: Too many components for option "--{opt.name}" (max: 2)\n')
            if piece:
                value = getportbyname(piece)
                if value < 0:
                    raise XtablesError(f'Port "{piece}" does not resolve to anything.\n')
                rng[count] = value
            count += 1
        if count == 1:
            rng[1] = rng[0]
        return rng[0], rng[1]

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        """Extension-specific handling after the generic parse (x6_parse)."""

    def final_check(self, state: XtState, ctx: ParseContext) -> Any:
        self.fcheck(state, ctx)
        self.options_fcheck(state)
        return self.build(state, ctx)

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        """The extension's own x6_fcheck (runs before the generic checks)."""

    def options_fcheck(self, state: XtState) -> None:
        """xtables_options_fcheck(): mandatory options, also/excl."""
        for opt in self.xt_options:
            if opt.mand and opt.key not in state.flags:
                raise XtablesError(f'{self.name}: option "--{opt.name}" must be specified\n')
            if opt.key not in state.flags:
                continue
            for other in self.fcheck_others():
                if other.key == opt.key:
                    continue
                if other.key in opt.also and other.key not in state.flags:
                    raise XtablesError(
                        f'{self.name}: option "--{opt.name}" also requires "--{other.name}".\n')
                if other.key in opt.excl and other.key in state.flags:
                    raise XtablesError(
                        f'{self.name}: option "--{opt.name}" cannot be used together '
                        f'with "--{other.name}".\n')

    # Option ids in the C enum's order, when that differs from the table's
    # order: xtables_options_fcheck() visits the "other" options by id.
    xt_id_order: ClassVar[tuple[str, ...]] = ()

    def fcheck_others(self) -> list[XtOption]:
        if not self.xt_id_order:
            return list(self.xt_options)
        rank = {key: i for i, key in enumerate(self.xt_id_order)}
        return sorted(self.xt_options, key=lambda o: rank.get(o.key, len(rank)))

    def build(self, state: XtState, ctx: ParseContext) -> Any:
        raise NotImplementedError


@lru_cache(maxsize=4096)
def getportbyname(name: str) -> int:
    """xtables_getportbyname(): getaddrinfo(NULL, name), else -1.

    That is glibc's service parsing, not strtoul: numbers are decimal only
    ("010" is 10, "0x10" fails) and wrap modulo 65536 ("65536" is port 0)."""
    import socket

    try:
        infos = socket.getaddrinfo(None, name)
    except (socket.gaierror, UnicodeError, ValueError):
        return -1
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET6, socket.AF_INET):
            return int(sockaddr[1])
    return -1


def parse_mac(arg: str) -> bytes:
    """xtopt_parse_ethermac(): six hex groups of at most two digits."""
    out = []
    rest = arg
    for i in range(6):
        value, n = strtoumax_hex(rest)
        sep_ok = (rest[n:n + 1] == ":") if i < 5 else (n == len(rest))
        if value is None or n > 2 or not sep_ok:
            raise XtablesError("Invalid MAC address specified.")
        out.append(value & 0xFF)
        rest = rest[n + 1:]
    return bytes(out)


def strtoumax_hex(text: str) -> tuple[int | None, int]:
    from ..numbers import strtoumax

    value, end = strtoumax(text, 16)
    return (value, end) if value is not None else (0, 0)


def save_string(text: str) -> str:
    """xtables_save_string(): " value" bare when it is only [_-0-9a-zA-Z],
    else double-quoted with backslash before ", \\ and '."""
    if text and all(c in _NO_QUOTE for c in text):
        return " " + text
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in text)
    return f' "{escaped}"'


_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
