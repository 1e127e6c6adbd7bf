"""Reading a dump the way iptables-restore's fgets() loop does.

Normally the whole input goes through the line grammar in one parse. Two
things fgets() does need records of their own: a line longer than the
10240-byte buffer is read as several lines (each counted), and C string
functions stop at a NUL byte, so the rest of such a line is ignored."""
from __future__ import annotations

from dataclasses import replace

from .restore_grammar import Statement, parse_lines

BUFFER_SIZE = 10240  # iptables-restore's char buffer[10240]


def decode(data: bytes) -> str:
    """Bytes -> str; bytes that are not UTF-8 survive as surrogates."""
    return data.decode("utf-8", errors="surrogateescape")


def _split_newlines(data: bytes) -> list[bytes]:
    """Split after each "\\n" only (bytes.splitlines knows other breaks)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def read_statements(data: bytes) -> list[Statement]:
    if b"\x00" not in data and not _has_long_line(data):
        return parse_lines(decode(data))
    statements: list[Statement] = []
    for number, record in enumerate(_split_records(data), 1):
        record = record.split(b"\x00", 1)[0]
        if not record:
            # buffer[0] == '\0': neither blank nor comment nor header, so a
            # command line with no words
            statements.append(Statement("rule", number, "", False))
            continue
        for st in parse_lines(decode(record)):
            statements.append(replace(st, line=number))
    return statements


def _split_records(data: bytes) -> list[bytes]:
    records = []
    limit = BUFFER_SIZE - 1
    for line in _split_newlines(data):
        while len(line) > limit:
            records.append(line[:limit])
            line = line[limit:]
        records.append(line)
    return records


def _has_long_line(data: bytes) -> bool:
    if len(data) < BUFFER_SIZE:
        return False
    return max(map(len, data.split(b"\n"))) >= BUFFER_SIZE - 1
