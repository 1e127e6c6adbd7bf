"""A faithful emulation of glibc getopt_long() as iptables drives it.

iptables' command-line syntax *is* getopt's: options may be abbreviated to
any unique prefix, optional arguments attach only as "-Lchain" or
"--list=chain", a non-option word is returned in order (optstring "-"), a
missing argument is reported as ':' (optstring ":"), and extensions add long
options while parsing is under way. Error messages and which argv element
they quote depend on these details, so they are reproduced exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Hashable

NO_ARGUMENT = 0
REQUIRED_ARGUMENT = 1
OPTIONAL_ARGUMENT = 2

NON_OPTION = "\x01"   # getopt returns 1 for a non-option in RETURN_IN_ORDER
UNKNOWN = "?"
MISSING_ARG = ":"


@dataclass(frozen=True)
class LongOption:
    name: str
    has_arg: int
    val: Hashable


@dataclass
class GetoptResult:
    code: Hashable          # short option char, a LongOption.val, or the specials above
    optarg: str | None


@lru_cache(maxsize=None)
def _short_options(optstring: str) -> dict[str, int]:
    """optstring -> {option char: has_arg}; parsed once per optstring
    (iptables-restore builds a parser per line). Read-only for callers."""
    spec = optstring
    if spec.startswith("-"):
        spec = spec[1:]
    if spec.startswith(":"):
        spec = spec[1:]
    short: dict[str, int] = {}
    i = 0
    while i < len(spec):
        c = spec[i]
        has = NO_ARGUMENT
        if spec[i + 1:i + 3] == "::":
            has, i = OPTIONAL_ARGUMENT, i + 2
        elif spec[i + 1:i + 2] == ":":
            has, i = REQUIRED_ARGUMENT, i + 1
        short[c] = has
        i += 1
    return short


# id(list) -> (the list, its first entry per name). Option lists are never
# changed in place (merging builds a new list), and the cache keeps each list
# alive, so an id cannot be reused for another list.
_EXACT_CACHE: dict[int, tuple[list[LongOption], dict[str, LongOption]]] = {}


def _exact_names(longopts: list[LongOption]) -> dict[str, LongOption]:
    """Exact-name lookup table: the first entry of each name, as the scan
    over the list in getopt_long() finds it."""
    hit = _EXACT_CACHE.get(id(longopts))
    if hit is None or hit[0] is not longopts:
        table: dict[str, LongOption] = {}
        for opt in longopts:
            table.setdefault(opt.name, opt)
        if len(_EXACT_CACHE) > 1024:
            _EXACT_CACHE.clear()
        hit = _EXACT_CACHE[id(longopts)] = (longopts, table)
    return hit[1]


@dataclass
class Getopt:
    argv: list[str]
    optstring: str
    longopts: list[LongOption] = field(default_factory=list)
    optind: int = 1
    nextchar: str = ""

    def __post_init__(self) -> None:
        self._short = _short_options(self.optstring)
        self._first_nonopt = self._last_nonopt = 1
        self.argc = len(self.argv)  # argv is never changed while parsing

    def next(self) -> GetoptResult | None:
        """One getopt_long() call; None when scanning is over (-1)."""
        if not self.nextchar:
            if self.optind >= self.argc:
                return None
            arg = self.argv[self.optind]
            if len(arg) == 2 and arg[0] == "-" and self.optind + 1 < self.argc:
                # the common "-s ADDR": what _short_option() does with a
                # lone option letter that takes the next word
                c = arg[1]
                if self._short.get(c) == REQUIRED_ARGUMENT and c not in ":;":
                    self.optind += 2
                    return GetoptResult(c, self.argv[self.optind - 1])
            if arg == "--":
                self.optind += 1
                # everything after "--" is left for the caller as non-options
                if self.optind != self.argc:
                    self._first_nonopt, self._last_nonopt = self.optind, self.argc
                return None
            if not arg.startswith("-") or arg == "-":
                self.optind += 1
                return GetoptResult(NON_OPTION, arg)
            if arg.startswith("--"):
                return self._long(arg[2:])
            self.nextchar = arg[1:]
        return self._short_option()

    def _long(self, body: str) -> GetoptResult:
        name, eq, value = body.partition("=")
        found = _exact_names(self.longopts).get(name)
        if found is None:
            ambiguous = False
            for opt in self.longopts:
                if opt.name.startswith(name):
                    if found is None:
                        found = opt
                    elif (found.has_arg, found.val) != (opt.has_arg, opt.val):
                        ambiguous = True
            if ambiguous:
                self.optind += 1
                return GetoptResult(UNKNOWN, None)
        self.optind += 1
        if found is None:
            return GetoptResult(UNKNOWN, None)
        if eq:
            if found.has_arg == NO_ARGUMENT:
                return GetoptResult(UNKNOWN, None)
            return GetoptResult(found.val, value)
        if found.has_arg == REQUIRED_ARGUMENT:
            if self.optind < self.argc:
                self.optind += 1
                return GetoptResult(found.val, self.argv[self.optind - 1])
            return GetoptResult(MISSING_ARG, None)
        return GetoptResult(found.val, None)

    def _short_option(self) -> GetoptResult:
        c, self.nextchar = self.nextchar[0], self.nextchar[1:]
        if not self.nextchar:
            self.optind += 1
        has = self._short.get(c)
        if has is None or c in ":;":
            return GetoptResult(UNKNOWN, None)
        if has == NO_ARGUMENT:
            return GetoptResult(c, None)
        if has == OPTIONAL_ARGUMENT:
            optarg = None
            if self.nextchar:
                optarg = self.nextchar
                self.optind += 1
            self.nextchar = ""
            return GetoptResult(c, optarg)
        if self.nextchar:
            optarg = self.nextchar
            self.optind += 1
        elif self.optind == self.argc:
            self.nextchar = ""
            return GetoptResult(MISSING_ARG, None)
        else:
            optarg = self.argv[self.optind]
            self.optind += 1
        self.nextchar = ""
        return GetoptResult(c, optarg)

    def leftover_start(self) -> int:
        """optind as iptables sees it after getopt returned -1."""
        if self._first_nonopt != self._last_nonopt:
            return self._first_nonopt
        return self.optind

    def has_arg(self) -> bool:
        """xs_has_arg(): is the next argv element a non-option word?"""
        return (self.optind < self.argc
                and not self.argv[self.optind].startswith("-")
                and not self.argv[self.optind].startswith("!"))

    def take(self) -> str:
        """argv[optind++]"""
        self.optind += 1
        return self.argv[self.optind - 1]
