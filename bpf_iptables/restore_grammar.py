"""The restore format: a dump's lines as statements, a rule line's words.

``grammar/restore.lark`` (line classification) and ``grammar/cmdline.lark``
(add_param_to_argv()'s word splitting) specify both; restore_lark.py loads
them. A dump's lines and unquoted command text are handled here without
lark, which is only imported for a line with a double quote (and by the
tests, which check that both ways agree)."""
from __future__ import annotations

from dataclasses import dataclass

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


def parse_lines(text: str) -> list[Statement]:
    """Classify the lines of ``text`` (the reader guarantees no NUL inside).

    restore.lark says what each line is; since every line is classified by
    how it starts, a loop over the lines does the same ten times faster
    (about 10 ms for a 10k-rule dump instead of 100). Tests check that the
    two agree; ``parse_lines_lark`` is the grammar itself."""
    lines = text.split("\n")
    last = lines.pop()  # "" when the text ends in a newline
    out: list[Statement] = []
    append = out.append
    for number, line in enumerate(lines, 1):
        if line:
            append(_statement(line, number, True))
    if last:
        append(_statement(last, len(lines) + 1, False))
    return out


def _statement(line: str, number: int, newline: bool) -> Statement:
    """One non-empty line, as restore.lark's terminals (by priority) read it."""
    nl = "\n" if newline else ""
    first = line[0]
    if first == "C" and newline and line == "COMMIT":
        return Statement("commit", number, "COMMIT\n", True)
    if first == "*" or first == ":":
        words = tuple(w for w in line[1:].replace("\t", " ").split(" ") if w)
        return Statement("table" if first == "*" else "chain", number, line + nl, newline,
                         fields=words)
    if first == "#":
        return Statement("comment", number, line + nl, newline)
    if first == "[":
        close = line.find("]")
        if close > 0:
            command = line[close + 1:]
            return Statement("rule", number, line + nl, newline, counters=line[:close + 1],
                             command=command + nl)
    return Statement("rule", number, line + nl, newline, command=line + nl)


def parse_lines_lark(text: str) -> list[Statement]:
    """``parse_lines`` by the grammar (the specification the loop follows)."""
    if text and not text.endswith("\n"):
        text += NO_NEWLINE
    from .restore_lark import line_parser

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


def word_parser():
    """cmdline.lark's parser (lark is imported only when a line has a quote)."""
    from .restore_lark import word_parser as parser

    return parser()
