"""The lark grammars of the restore format, loaded once per process.

``grammar/restore.lark`` classifies the lines of a dump and names their
fields; ``grammar/cmdline.lark`` splits a rule line's command text into argv
words as iptables-restore's add_param_to_argv() does. Both are LALR with
the transformer applied while parsing, so no parse tree is built.

restore_grammar.py does the common cases without them (importing lark
alone takes 30 ms); these are the specification and the fallback."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer

from .restore_grammar import Statement


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
