"""Where two rule lists part, by identity.

The front end never changes a rule in place: a rule object that is still
in the list after a command is the same rule. So a single edit is found by
comparing objects, not rule texts, in C-level passes (10k rules well under
a millisecond): the journal record, the patched compile, the carried
counters and the validated-rules memo all ask this."""
from __future__ import annotations

import operator
from collections.abc import Iterable


def first_difference(a: Iterable, b: Iterable, default: int) -> int:
    """The first index where ``a`` and ``b`` hold different objects (one
    lazy pass, no list of bools); ``default`` if none before the shorter
    one ends."""
    try:
        return operator.indexOf(map(operator.is_not, a, b), True)
    except ValueError:
        return default
