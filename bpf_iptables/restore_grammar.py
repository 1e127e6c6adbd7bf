"""The lark grammars of the restore format, loaded once per process.

``grammar/restore.lark`` classifies the lines of a dump and names their
fields; ``grammar/cmdline.lark`` splits a rule line's command text into argv
words as iptables-restore's add_param_to_argv() does. Both are LALR with
the transformer applied while parsing, so no parse tree is built for a
10,000-line dump."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer

# Appended to an input whose last line lacks a newline (see restore.lark).
NO_NEWLINE = "\x00"


@dataclass(frozen=True, slots=True)
class Statement:
    """One line of a dump.

    ``kind`` is "comment", "table", "chain", "commit" or "rule" (blank lines
    are dropped). ``fields`` are a "*"/":" line's strtok words; ``counters``
    the "[...]" prefix of a rule line and ``command`` the rest of it.
    ``newline`` tells whether the line ended in one (only the last may not)."""

    kind: str
    line: int
    text: str
    newline: bool
    fields: tuple[str, ...] = ()
    counters: str | None = None
    command: str = ""


def _eol(token: Token) -> tuple[bool, str]:
    newline = token == "\n"
    return newline, ("\n" if newline else "")


class _Lines(Transformer):
    """restore.lark's rules -> Statement (blank lines -> None)."""

    def start(self, children: list) -> list[Statement]:
        return [c for c in children if c is not None]

    def blank(self, children: list) -> None:
        return None

    def comment(self, children: list) -> Statement:
        text, eol = children
        newline, nl = _eol(eol)
        return Statement("comment", text.line, text + nl, newline)

    def _fields(self, kind: str, children: list) -> Statement:
        head, eol = children[0], children[-1]
        newline, nl = _eol(eol)
        body = children[1:-1]
        text = head + "".join(body) + nl
        words = tuple(str(t) for t in body if t.type == "WORD")
        return Statement(kind, head.line, text, newline, fields=words)

    def table(self, children: list) -> Statement:
        return self._fields("table", children)

    def chain(self, children: list) -> Statement:
        return self._fields("chain", children)

    def commit(self, children: list) -> Statement:
        head, eol = children
        return Statement("commit", head.line, "COMMIT\n", True)

    def rule(self, children: list) -> Statement:
        eol = children[-1]
        newline, nl = _eol(eol)
        counters = None
        command = ""
        for tok in children[:-1]:
            if tok.type == "COUNTERS":
                counters = str(tok)
            else:
                command = str(tok)
        text = (counters or "") + command + nl
        return Statement("rule", children[0].line, text, newline, counters=counters,
                         command=command + nl)


def _unescape(quoted: str) -> str:
    """Inside quotes a backslash makes the next character literal."""
    out = []
    chars = iter(quoted)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, "")
        out.append(ch)
    return "".join(out)


class _Words(Transformer):
    """cmdline.lark's words -> argv strings."""

    def start(self, children: list) -> list[str]:
        return [w for w in children if w is not None]

    def plain(self, children: list) -> str:
        return str(children[0])

    def quoted(self, children: list) -> str:
        prefix, _, rest = str(children[0]).partition('"')
        return prefix + _unescape(rest[:-1])

    def open(self, children: list) -> str | None:
        prefix, _, rest = str(children[0]).partition('"')
        word = prefix + _unescape(rest)
        return word or None  # an open quote that collected nothing adds no word


def _grammar(name: str) -> str:
    return resources.files("bpf_iptables").joinpath("grammar", name).read_text()


@lru_cache(maxsize=1)
def line_parser() -> Lark:
    return Lark(_grammar("restore.lark"), parser="lalr", lexer="contextual",
                transformer=_Lines(), cache=True)


@lru_cache(maxsize=1)
def word_parser() -> Lark:
    return Lark(_grammar("cmdline.lark"), parser="lalr", lexer="contextual",
                transformer=_Words(), cache=True)


def parse_lines(text: str) -> list[Statement]:
    """Classify the lines of ``text`` (the reader guarantees no NUL inside)."""
    if text and not text.endswith("\n"):
        text += NO_NEWLINE
    return line_parser().parse(text)


def split_words(command: str) -> list[str]:
    """add_param_to_argv(): the argv words of a rule line's command text.

    Without a double quote the grammar reduces to splitting on runs of space,
    tab and newline, which str.split does far faster; tests check the two
    agree."""
    if '"' not in command:
        if "\t" in command or "\n" in command:
            command = command.replace("\t", " ").replace("\n", " ")
        return [w for w in command.split(" ") if w]
    return word_parser().parse(command)
