"""Number parsing with C's strtoumax(base 0) semantics, as libxtables uses it.

iptables accepts "0x10" and "010" (octal) wherever it takes a number, rejects a
leading minus, and distinguishes "whole string consumed" from "prefix parsed";
scripts rely on exactly which inputs fail, so we reproduce it."""
from __future__ import annotations

import string

UINT8_MAX = 0xFF
UINT16_MAX = 0xFFFF
UINT32_MAX = 0xFFFFFFFF
UINT64_MAX = 0xFFFFFFFFFFFFFFFF
INT_MAX = 0x7FFFFFFF


def strtoumax(text: str, base: int = 0) -> tuple[int | None, int]:
    """Parse like strtoumax: return (value, index after the number).

    value is None when no digits were consumed (index is then 0). Values
    beyond 2**64-1 saturate like ERANGE, reported as UINT64_MAX + 1."""
    if base in (0, 10) and text.isdigit() and text.isascii() and (
            text[0] != "0" or len(text) == 1) and len(text) < 20:
        return int(text), len(text)  # the common plain decimal (no octal "0" prefix)
    i = 0
    n = len(text)
    while i < n and text[i] in " \t\n\r\f\v":
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    if base == 0:
        if text[i:i + 2].lower() == "0x" and i + 2 < n and text[i + 2] in string.hexdigits:
            base, i = 16, i + 2
        elif text[i:i + 1] == "0":
            base = 8
        else:
            base = 10
    elif base == 16 and text[i:i + 2].lower() == "0x" and i + 2 < n and text[i + 2] in string.hexdigits:
        i += 2
    start = i
    value = 0
    while i < n:
        c = text[i].lower()
        d = int(c, 36) if c.isalnum() and c.isascii() else 99
        if d >= base:
            break
        value = value * base + d
        i += 1
    if i == start:
        return None, 0
    if value > UINT64_MAX:
        value = UINT64_MAX + 1  # ERANGE
    elif negative:
        value = (-value) & UINT64_MAX
    return value, i


def strtoul(text: str, lo: int = 0, hi: int = 0, base: int = 0) -> int | None:
    """xtables_strtoul: the whole string must be a number in [lo, hi].

    hi == 0 means "no upper bound" as in libxtables. Returns None on failure."""
    if base in (0, 10) and text.isdigit() and text.isascii() and (
            text[0] != "0" or len(text) == 1) and len(text) < 20:
        value = int(text)  # plain decimal: no sign, space or octal prefix to weigh
        return value if lo <= value and (hi == 0 or value <= hi) else None
    value, end = parse_prefix(text, lo, hi, base)
    if value is None or end != len(text):
        return None
    return value


def parse_prefix(text: str, lo: int = 0, hi: int = 0, base: int = 0) -> tuple[int | None, int]:
    """xtables_strtoul with an end pointer: (value or None, end index)."""
    stripped = text.lstrip(" \t\n\r\f\v")
    if stripped.startswith("-"):
        return None, 0
    value, end = strtoumax(text, base)
    if value is None:
        return None, 0
    if value > UINT64_MAX or value < lo or (hi != 0 and value > hi):
        return None, end
    return value, end


def strtoui(text: str, lo: int = 0, hi: int = UINT32_MAX) -> int | None:
    return strtoul(text, lo, hi)
