"""Comparing `-L -v -x -n` listings of two namespaces that each carried a
bulk TCP transfer.

How many pure ACKs the receiving side sends during a transfer (delayed
ACKs, window updates) depends on scheduling: a clean-clone CI run saw one
more ACK in one of the two namespaces. The counters of the
chains that see those ACKs (both ends send them) may then differ by whole
pure ACKs; everything else must be identical."""
from __future__ import annotations

import re

# "    pkts      bytes target ..." rule lines and "Chain X (policy P N packets, M bytes)"
_RULE = re.compile(r"^(\s*)(\d+)(\s+)(\d+)(\s.*)$")
_POLICY = re.compile(r"^(Chain \S+ \(policy \S+ )(\d+)( packets, )(\d+)( bytes\))$")
PURE_ACK = 52     # IPv4 20 + TCP 20 + timestamps 12


def _split(line: str) -> tuple[str, int, int] | None:
    """(the line without its counters, packets, bytes), or None."""
    for pattern in (_POLICY, _RULE):
        m = pattern.match(line)
        if m:
            g = m.groups()
            return g[0] + "#" + g[2] + "#" + g[4], int(g[1]), int(g[3])
    return None


def differ_only_by_pure_acks(want: str, got: str, chains: tuple[str, ...],
                             most: int = 2) -> bool:
    """True when the listings are identical but for counters of ``chains``
    (policy lines and rules) that differ by at most ``most`` pure ACKs, each
    line's bytes by exactly PURE_ACK per packet."""
    a, b = want.splitlines(), got.splitlines()
    if len(a) != len(b):
        return False
    current = None
    for x, y in zip(a, b):
        if x.startswith("Chain "):
            current = x.split()[1]
        if x == y:
            continue
        sx, sy = _split(x), _split(y)
        if current not in chains or sx is None or sy is None or sx[0] != sy[0]:
            return False
        packets, octets = sy[1] - sx[1], sy[2] - sx[2]
        if not (0 < abs(packets) <= most and octets == PURE_ACK * packets):
            return False
    return True
