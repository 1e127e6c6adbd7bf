"""netfilter's filter table: read, replaced, flushed, with iptables' own tools.

``legacy`` is iptables-legacy (x_tables), ``nft`` iptables-nft (nf_tables
through the iptables compatibility layer). ``auto`` picks legacy when its
filter table exists in the namespace (/proc/net/ip_tables_names lists it),
else nft."""
from __future__ import annotations

import subprocess
from pathlib import Path

TOOLS = {"legacy": ("iptables-legacy-save", "iptables-legacy-restore", "iptables-legacy"),
         "nft": ("iptables-nft-save", "iptables-nft-restore", "iptables-nft")}

EMPTY_FILTER = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                "COMMIT\n")


class SourceError(Exception):
    pass


def pick(kind: str) -> str:
    if kind != "auto":
        return kind
    try:
        names = Path("/proc/net/ip_tables_names").read_text().split()
    except OSError:
        names = []
    return "legacy" if "filter" in names else "nft"


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise SourceError(f"{argv[0]} is not installed") from None
    if r.returncode != 0:
        raise SourceError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def read(kind: str) -> str:
    """The filter table with counters (iptables-save -c -t filter)."""
    return _run([TOOLS[kind][0], "-c", "-t", "filter"])


def restore(kind: str, text: str) -> None:
    """Replace the filter table (and its counters) by ``text``."""
    _run([TOOLS[kind][1], "-c"], stdin=text)


def flush(kind: str) -> None:
    """An empty filter table with ACCEPT policies: netfilter filters nothing."""
    _run([TOOLS[kind][1]], stdin=EMPTY_FILTER)
