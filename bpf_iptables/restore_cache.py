"""Parsing a restore's rule lines once per shape instead of once per line.

A large dump repeats a few hundred line shapes with different addresses
(ClassBench fw1: 9,351 rules, 420 shapes once the words after -s and -d are
blanked). The full parser (cmdline/parse.py) runs once per shape; later
lines of that shape copy its result and parse only their own addresses.

Why that is the same as parsing the line: the key is the whole argv with
the words after each -s/-d/--source/... option blanked, and a shape is
cached only when its full parse took exactly those words as the -s and -d
addresses. Every other word is equal, and getopt takes an option's argument
whatever it says, so every line of the shape is scanned alike and reaches
the same state except for the two address strings. Those are used only
after the scan (post_parse: expanded to nets, then the "!" with several
addresses and the -R single-address checks), which is what a hit redoes.
Anything unusual goes to the full parser: a shape whose parse wrote to
stderr (a warning must be printed per line), and any hit whose addresses do
not parse (so the error is the full parser's own)."""
from __future__ import annotations

import re
import sys
from typing import Callable

from .cmdline import parse as P
from .model import IPv4Net
from .netaddr import cidr_to_mask, ipparse_multiple

ADDRESS_OPTIONS = frozenset(("-s", "-d", "--source", "--src", "--destination", "--dst"))
# a template: the parsed command and the argv index of its -s and -d address
Template = tuple[P.ParsedCommand, int | None, int | None]


class _StderrWatch:
    """Forwards to stderr, remembering whether anything was written."""

    def __init__(self, inner):
        self.inner = inner
        self.used = False

    def write(self, text: str) -> int:
        self.used = True
        return self.inner.write(text)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class ParseCache:
    """Templates by line shape; clear() whenever what parsing depends on
    beyond argv changes (the chains the dump announced)."""

    def __init__(self) -> None:
        self.templates: dict[tuple, Template | None] = {}

    def clear(self) -> None:
        self.templates.clear()

    def parse(self, argv: list[str], full: Callable[[], P.CommandParser]) -> P.ParsedCommand:
        """The ParsedCommand of ``argv``; ``full()`` makes the full parser
        for it (its exceptions are the line's errors)."""
        key = shape(argv)
        if key in self.templates:
            template = self.templates[key]
            if template is not None:
                hit = replay(template, argv)
                if hit is not None:
                    return hit
            return full().parse()
        parser = full()
        watch = _StderrWatch(sys.stderr)
        sys.stderr = watch
        try:
            parsed = parser.parse()
        finally:
            sys.stderr = watch.inner
        blanked = [i for i, word in enumerate(key) if word is None]
        found = sorted(parser.address_words.values())
        if watch.used or blanked != found:
            self.templates[key] = None
        else:
            self.templates[key] = (parsed, parser.address_words.get("s"),
                                   parser.address_words.get("d"))
        return parsed


def shape(argv: list[str]) -> tuple:
    """argv with the word after each address option blanked (None)."""
    words: list[str | None] = list(argv)
    for i in range(len(argv) - 1):
        if argv[i] in ADDRESS_OPTIONS:
            words[i + 1] = None
    return tuple(words)


def replay(template: Template, argv: list[str]) -> P.ParsedCommand | None:
    """The template with this line's addresses; None if the full parser must
    say what is wrong with them."""
    parsed, src_at, dst_at = template
    # a shallow copy (copy.copy is five times slower): the template's
    # parts are shared, never changed after parsing
    p = P.ParsedCommand.__new__(P.ParsedCommand)
    p.__dict__.update(parsed.__dict__)
    try:
        if src_at is not None:
            p.sources = addresses(argv[src_at])
        if dst_at is not None:
            p.destinations = addresses(argv[dst_at])
    except Exception:  # noqa: BLE001 - the full parser reports it
        return None
    several = len(p.sources) > 1 or len(p.destinations) > 1
    if several and (p.base_rule.src_inv or p.base_rule.dst_inv):
        return None
    if p.command == P.CMD_REPLACE and (len(p.sources) != 1 or len(p.destinations) != 1):
        return None
    return p


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# "a.b.c.d/len" as saves print it: decimal bytes and a decimal length up to
# 32, without leading zeros (which strtoul would read as octal)
_SAVED_NET = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}/(3[0-2]|[12]?[0-9])")
# text -> net, for texts of that form only: no name lookups, so the answer
# never changes; nets are immutable, and sharing them also shrinks the store
_NETS: dict[str, IPv4Net] = {}


def addresses(text: str) -> list[IPv4Net]:
    """xtables_ipparse_multiple(); "a.b.c.d/len" (what saves print) directly."""
    net = _NETS.get(text)
    if net is not None:
        return [net]
    m = _SAVED_NET.fullmatch(text)
    if m is None:
        return ipparse_multiple(text)
    a, b, c, d, bits = m.groups()
    mask = cidr_to_mask(int(bits))
    net = IPv4Net(((int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)) & mask, mask)
    if len(_NETS) > 1 << 16:
        _NETS.clear()
    _NETS[text] = net
    return [net]
