"""Rule set -> map contents and program shape for one hook chain.

Step 1, inlining: the hook chain becomes a flat list of entries. A rule
that calls a user chain (-j CHAIN) becomes a counting entry followed by
the chain's rules, each guarded by the calling rule's matches (an entry's
match is the conjunction along its path). RETURN becomes an entry that
continues the scan after the inlined block; -g CHAIN inlines the chain
with the caller's return point and is closed by an uncounted entry, with
the -g rule's matches, that jumps to that return point (a packet that took
the goto and fell off the chain must not see the rest of the caller).

Step 2, field tables: for every field in use, one bitvector per field
value (LPM prefix, protocol, ifindex, port interval, ...), with bit e set
when entry e's constraints on that field hold for that value.

The last entry is the policy: it has no constraints, so its bit is set in
every field's bitvectors and ends every scan that gets that far.

Counter slots: 0 is the policy, 1 a scratch slot for uncounted entries,
rules of the table from 2 on (in chain order), so each inlined copy of a
rule bumps the rule's own counters."""
from __future__ import annotations

import gc
import socket
import threading
from bisect import bisect_left
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain as chained, compress, count, islice, repeat
from dataclasses import dataclass, field, replace
from functools import cached_property
from operator import attrgetter, is_
from typing import TYPE_CHECKING, Any

from ..errors import NotSupported
from ..extensions.reject import RejectData, default_ttl, reject_verdict
from ..model import Rule, Table
from ..netaddr import iface_matches
from . import addrtypes
from .fields import (ICMP_ANY, EntryFields, Prefix, PrefixField, RangeField, ct_slots, decompose,
                     nf_conntrack)
from .sets import assign as assign_sets
from .sameness import first_difference

if TYPE_CHECKING:
    from ..extensions.limit import LimitData

XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2
VERDICT_CONTINUE = 0xFFFFFFFF
VERDICTS = {"ACCEPT": XDP_PASS, "DROP": XDP_DROP}
POLICY_COUNTER, SCRATCH_COUNTER, FIRST_RULE_COUNTER = 0, 1, 2
MAX_ENTRIES = 1 << 16
MAX_DEPTH = 64
PROTO_DEFAULT = 256
TCP_FLAGS_NONE = 64
TCP_FLAGS_EVIL = 65
# The scan loop's bound per invocation: the verifier walks every
# iteration, and gives up at a million instructions or 8192 pending
# branch states, which some field combinations reach at a few hundred
# iterations (program.py then retries with fewer); longer scans continue
# in tail calls of the program, of which the kernel allows 33.
MAX_STEPS = 600
# Every field compiled in adds an AND term to the loop body: with more
# than the first nine fields the budget is 5/6 of it (program.py still
# retries with fewer steps when the verifier gives up).
BASE_FIELDS = 9
# 31: a root program tail-calls the classifier (one of the 33)
MAX_CHUNKS = 31
FIELD_ORDER = ("src", "dst", "proto", "iif", "frag", "flags", "sport", "dport", "icmp",
               "length", "ttl", "tos", "ports", "oif", "mac", "pkttype", "ctstate",
               "ctcheck", "mark", "atcheck")
# Shape attributes that size a field's map (-D<NAME upper>)
SIZE_ATTRS = ("src_max", "dst_max", "src_bsize", "dst_bsize", "src_probes", "dst_probes",
              "proto_max", "iif_max", "sport_bsize", "dport_bsize",
              "icmp_max", "length_bsize", "ttl_bsize", "oif_max", "mac_max", "nlimits",
              "nlogs", "ctextra_max", "nhashlimits", "nrecent", "memo", "nsets")
ICMP_OTHER, ICMP_NONE = 0x10000, 0x10001   # icmp-table keys (filter.c, parse.h)
MAC_OTHER, MAC_NONE = 1 << 48, (1 << 48) + 1  # mac-table keys (filter.c)
PKTTYPES = 3   # pkttype-table slots: PACKET_HOST, _BROADCAST, _MULTICAST (parse.h)
CTSTATES = 64  # ctstate-table slots: state, direction, status bits (conntrack_defs.h)


@dataclass(slots=True)   # slots: ~10k of them per compile, no __dict__ each
class Entry:
    fields: EntryFields
    counter: int
    verdict: int = VERDICT_CONTINUE
    next: "int | _Label | None" = None   # None: the following entry
    tcp: bool = False    # own rule has a tcp match: hot-drops offset-1 TCP fragments
    limit: int = 0       # the rule's -m limit bucket (limit_map slot), 0: none
    log: int = 0         # the rule's -j LOG (log_map slot), 0: none
    hashlimit: int = 0   # the rule's -m hashlimit (Compiled.hashlimits slot), 0: none
    # stateful matches on jump rules (memo bits, filter.c entry_state):
    # the bits of the jump rules guarding this entry, which must all be
    # set, and the bit this entry sets when its own stateful match holds
    need: int = 0
    set: int = 0
    recent: int = 0      # the rule's -m recent (recent_rule_map slot), 0: none
    set_mask: int = 0    # -m set: the set checks (bits of the packet's mask) it needs
    set_want: int = 0    # ... and the outcome wanted (0 for "! --match-set")

    def residual(self, which: str) -> tuple[int, int, bool]:
        """(addr, mask, invert) checked per candidate; mask 0 checks nothing."""
        pf = self.fields.src if which == "src" else self.fields.dst
        return pf.residual or (0, 0, False)


class _Label:
    """A forward reference to an entry index, resolved after layout."""

    def __init__(self) -> None:
        self.index: int | None = None


@dataclass
class Shape:
    """What the C program is compiled for; map contents must fit in it."""

    nwords: int                      # bitvector words, a power of two
    steps: int
    ncounters: int
    fields: frozenset[str]
    src_max: int = 1                 # distinct source-address bitvectors
    dst_max: int = 1
    src_bsize: int = 2               # address interval slots, a power of two
    dst_bsize: int = 2
    src_nbounds: int = 1             # address intervals in use
    dst_nbounds: int = 1
    src_probes: int = 0              # binary-search probes within a /16 bucket
    dst_probes: int = 0
    # dense blocks (bpf/lib/ranges.h): slots for the /16s crowded enough
    # that a bitmap beats the search (0: none compiled in). Not a size
    # ``covers`` needs: /16s beyond the slots are searched, as before
    src_dense: int = 0
    dst_dense: int = 0
    proto_max: int = 1
    iif_max: int = 1
    sport_bsize: int = 2             # boundary slots, a power of two
    dport_bsize: int = 2
    icmp_max: int = 1
    length_bsize: int = 2
    ttl_bsize: int = 2
    oif_max: int = 1
    mac_max: int = 2
    nlimits: int = 0                 # limit_map slots (slot 0 unused); 0: no limit code
    nlogs: int = 0                   # log_map slots (slot 0 unused); 0: no LOG code
    ctextra_max: int = 1             # conntrack checks beyond an entry's first (+1)
    nhashlimits: int = 0             # 1: hashlimit code compiled in (bpf/lib/hashlimit.h)
    nrecent: int = 0                 # recent_rule_map slots (slot 0 unused); 0: no recent code
    memo: int = 0                    # 1: jump rules with stateful matches (memo bits)
    nsets: int = 0                   # set_check_map slots (slot 0 unused); 0: no set code
    # steps the longest scan may need (0: ``steps``); one invocation runs
    # ``steps`` of them and continues in tail calls, so a program whose
    # verifier budget forced fewer steps per invocation still fits
    scan: int = 0
    # entries whose check is a program of its own (hashlimit, recent): two
    # more tail calls each, out of the same budget (check_stateful_calls)
    stateful: int = 0

    @property
    def nentries(self) -> int:
        return self.nwords * 64

    @property
    def scan_steps(self) -> int:
        return self.scan or self.steps

    def invocations(self, steps: int) -> int:
        """Tail calls of the classifier's module a packet may need when one
        invocation runs ``steps``: the scan's invocations, and two for each
        hashlimit or recent candidate (to its program and back)."""
        return -(-self.scan_steps // steps) + 2 * self.stateful

    def covers(self, other: "Shape") -> bool:
        # an address search takes this program's probes from an interval
        # of the bucket; the slots after the last interval must hold them
        addresses = all(getattr(self, f"{a}_probes") >= getattr(other, f"{a}_probes")
                        and getattr(other, f"{a}_nbounds") + (1 << getattr(self, f"{a}_probes"))
                        <= getattr(self, f"{a}_bsize") for a in ("src", "dst"))
        return (addresses and other.fields <= self.fields and self.nwords >= other.nwords
                and other.invocations(self.steps) <= MAX_CHUNKS
                and self.ncounters >= other.ncounters
                and all(getattr(self, k) >= getattr(other, k) for k in SIZE_ATTRS))

    def union(self, other: "Shape") -> "Shape":
        u = Shape(**{k: (self.fields | other.fields) if k == "fields"
                     else max(getattr(self, k), getattr(other, k))
                     for k in self.__dataclass_fields__})
        for a in ("src", "dst"):
            room = getattr(u, f"{a}_nbounds") + (1 << getattr(u, f"{a}_probes"))
            setattr(u, f"{a}_bsize", max(getattr(u, f"{a}_bsize"), pow2_at_least(room)))
        # more fields can mean fewer steps per invocation (the verifier's budget)
        u.steps = min(u.steps, max_steps(u.fields))
        return u


def max_steps(fields: "frozenset[str] | set[str]") -> int:
    """The scan steps one invocation may take with ``fields`` compiled in."""
    return MAX_STEPS if len(fields) <= BASE_FIELDS else MAX_STEPS * 5 // 6


@dataclass
class Intervals:
    """A field's value space cut into intervals: interval i starts at
    ``bounds[i]`` (sorted, from 0) and has bitvector ``vectors[index[i]]``;
    equal bitvectors are stored once. For addresses, ``top[h]`` is the
    interval holding address h << 16 and ``probes`` the binary-search
    probes that find any address of that /16 from there."""

    bounds: list[int]
    index: list[int]
    vectors: "Sequence[int]"   # a list, or RowInts over the matrix below
    top: "array[int]" = field(default_factory=lambda: array("I"))   # 65,536 u32
    probes: int = 0
    # the same vectors as a numpy uint64 bit matrix (one row per vector,
    # bit e of a row = entry e), when address_table built one: ``tree``
    # (what the rows are made of, when no entry negates a prefix; the rows
    # are made only on demand, by the image at its own width) or ``rows``
    # (left out of ==: the vectors compare as ints; numpy arrays have no truth value)
    rows: "Any" = field(default=None, compare=False)
    tree: "AddressTree | None" = field(default=None, compare=False)
    # for addresses, per /16 its own depth (numpy uint32, 65,536): the
    # probes its search needs, ``probes`` being the largest (slash16_depths)
    top_depth: "Any" = field(default=None, compare=False)

    def slash16_depth(self) -> "Any":
        """``top_depth``, counted from the bounds (and kept) when the
        layout did not hand it over."""
        if self.top_depth is None:
            import numpy as np

            self.top_depth = slash16_depths(np.asarray(self.bounds, dtype=np.int64))[0]
        return self.top_depth

    def matrix(self) -> "Any":
        """The vectors as a bit matrix (made from ``tree`` once if need be)."""
        if self.rows is None and self.tree is not None:
            self.rows = self.tree.rows()
        return self.rows


@dataclass
class AddressTree:
    """An address table's rows as ``prefix_rows`` makes them: row k is
    ``internal[base[k]]`` (the entries of an internal prefix, one with
    more specific prefixes listed, and of its ancestors) with bit
    ``leaf_entries[j]`` set where ``leaf_rows[j]`` is k (a leaf prefix's
    own entries, each in one row only). The internal rows are few (fw1-10k:
    7 of 6,669): image.py computes summaries and pair buckets from them
    and the leaf bits, and gathers the rows straight into its map buffer."""

    internal: "Any"          # (internal prefixes, nwords) uint64
    base: "Any"
    leaf_rows: "Any"
    leaf_entries: "Any"
    bounds: "Any" = None     # Intervals.bounds and .index as numpy arrays
    index: "Any" = None
    # per leaf bit its prefix's first address and the one past its last
    leaf_first: "Any" = None
    leaf_past: "Any" = None

    def rows(self, width: int | None = None, scratch: bool = False, into: "Any" = None
             ) -> "Any":
        """The rows, ``width`` u64 columns each (default nwords; more:
        zero). ``scratch``: in a buffer kept for the next call (for a
        caller that copies the rows out before then); ``into``: in that
        array (of the right shape)."""
        import numpy as np

        internal = self.internal
        if width is not None and width != internal.shape[1]:
            internal = np.zeros((internal.shape[0], width), dtype=np.uint64)
            internal[:, :self.internal.shape[1]] = self.internal
        if into is not None:
            out = into
            np.take(internal, self.base, axis=0, out=out)
        elif scratch:
            out = _scratch(len(self.base) * internal.shape[1]).reshape(-1, internal.shape[1])
            np.take(internal, self.base, axis=0, out=out)
        else:
            out = internal[self.base]
        scatter_bits(out, self.leaf_rows, self.leaf_entries)
        return out

    def columns(self, first: int) -> "Any":
        """Words ``first``.. (to the tree's width) of every row, as
        ``rows()`` makes them (a new array)."""
        internal = self.internal[:, first:]
        out = internal[self.base]
        later = self.leaf_entries >= first * 64
        scatter_bits(out, self.leaf_rows[later], self.leaf_entries[later] - first * 64)
        return out


# one buffer for the rows the image copies out at once (AddressTree.rows),
# per thread: a fresh 14 MB array per update (fw1-10k's destinations)
# costs more in page faults than gathering the rows into it
_scratch_buffer = threading.local()


def _scratch(count: int) -> "Any":
    """``count`` u64 of this thread's kept buffer (grown when too small)."""
    import numpy as np

    kept = getattr(_scratch_buffer, "array", None)
    if kept is None or len(kept) < count:
        kept = _scratch_buffer.array = np.empty(count, dtype=np.uint64)
    return kept[:count]


class RowInts(Sequence):
    """The rows of an address table's bit matrix read as Python ints (bit
    e = entry e), made on demand: tests, the harness and bench read a few;
    the image takes the matrix itself."""

    def __init__(self, iv: Intervals, count: int) -> None:
        self.iv, self.count = iv, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return int.from_bytes(self.iv.matrix()[i].tobytes(), "little")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


@dataclass
class Compiled:
    """Map contents (bitvectors as Python ints, bit e = entry e)."""

    hook: str
    shape: Shape
    entries: list[Entry]
    live: int
    policy: int
    counter_of: dict[tuple[str, int], int]   # (chain, rule index) -> slot
    src_iv: "Intervals | None" = None     # address intervals (see address_table)
    dst_iv: "Intervals | None" = None
    proto: dict[int, int] = field(default_factory=dict)      # PROTO_DEFAULT included
    iif: dict[int, int] = field(default_factory=dict)        # ifindex 0: unknown
    oif: dict[int, int] = field(default_factory=dict)        # ifindex 0: unknown / no route
    frag: list[int] = field(default_factory=list)            # [not fragment, fragment]
    flags: list[int] = field(default_factory=list)           # 66 entries
    sport_bounds: list[int] = field(default_factory=list)
    sport: list[int] = field(default_factory=list)           # per interval, no-L4, evil
    dport_bounds: list[int] = field(default_factory=list)
    dport: list[int] = field(default_factory=list)
    icmp: dict[int, int] = field(default_factory=dict)       # ICMP_OTHER, ICMP_NONE included
    length_bounds: list[int] = field(default_factory=list)   # IP total length intervals
    length: list[int] = field(default_factory=list)
    ttl_bounds: list[int] = field(default_factory=list)      # keyed by the frame's TTL
    ttl: list[int] = field(default_factory=list)
    tos: list[int] = field(default_factory=list)             # 256: one per TOS byte
    # multiport --ports: per sport / dport slot (as c.sport / c.dport), the
    # entries whose list holds that port; the AND term is (sport | dport)
    ports_s: list[int] = field(default_factory=list)
    ports_d: list[int] = field(default_factory=list)
    mac: dict[int, int] = field(default_factory=dict)        # MAC_OTHER, MAC_NONE included
    pkttype: list[int] = field(default_factory=list)         # PKTTYPES slots
    ctstate: list[int] = field(default_factory=list)         # CTSTATES slots
    # fast path (filter.c): a packet whose conntrack slot is in fast_slots
    # is accepted by entry 0 without the scan, counted in fast_counter
    fast_slots: int = 0
    fast_counter: int = 0
    # -m limit: per limit_map slot (from 1) the rule's (credit_cap, cost)
    limits: list[tuple[int, int]] = field(default_factory=list)
    # -j LOG: per log_map slot (from 1) the rule's LogData
    logs: list = field(default_factory=list)
    # -m addrtype --limit-iface-*: the routes' LPM trie (addrtypes.lpm_items)
    atype_lpm: list = field(default_factory=list)
    # -m hashlimit: per slot (from 1) the rule's HashlimitData
    hashlimits: list = field(default_factory=list)
    # -m recent: per recent_rule_map slot (from 1) the rule's RecentData
    recents: list = field(default_factory=list)
    # -m set: per set_check_map slot (from 1) a distinct struct set_check
    # (datapath/sets.py); slot k is bit k - 1 of the packet's membership mask
    set_records: list[bytes] = field(default_factory=list)
    # the hook chain alone, one plain entry per rule (Walked.flat): no
    # REJECT, LOG, user chain, stateful, conntrack or set match among its
    # rules (callers skip scans for those)
    flat: bool = False
    # a flat compile kept for patching: its number (``serial``), and the
    # edit that made it from the hook's previous one (numbered
    # ``edit.serial``): image.py patches that one's entry rows
    serial: int = 0
    edit: "Edit | None" = field(default=None, compare=False)


def summary_words(nwords: int) -> int:
    """Words of a bitvector's summary: bit j set when word j is non-zero."""
    return max(1, nwords // 64)


# The source x destination pair summary (filter.c PAIR, image.pair_parts):
# compiled in with both address fields and at least this many words (with
# fewer, a summary of a few bits names few words anyway); the pair table
# is keyed by the top PAIR_BITS bits of each address.
PAIR_MIN_WORDS = 8
PAIR_BITS = 8


def pair_summary(shape: "Shape") -> bool:
    """Whether a program of ``shape`` has the pair summary (filter.c PAIR)."""
    return "src" in shape.fields and "dst" in shape.fields and shape.nwords >= PAIR_MIN_WORDS


# The source x ports summary (filter.c PORTS_PAIR, image.ports_pair_table):
# with the pair summary and both port fields, a table with one slot per
# (source port slot, destination port slot) of the port maps, compiled in
# while it has at most this many slots (fw1-10k: 34 x 130 = 4,420).
PORTS_PAIR_MAX_SLOTS = 1 << 15


def ports_pair_slots(shape: "Shape") -> int:
    """Slots of filter.c's ports_pair_map: every sport_map key times every
    dport_map key (the intervals, "no ports" and "offset-1 fragment")."""
    return (shape.sport_bsize + 2) * (shape.dport_bsize + 2)


def ports_pair(shape: "Shape") -> bool:
    """Whether a program of ``shape`` has the source x ports summary."""
    return (pair_summary(shape) and "sport" in shape.fields and "dport" in shape.fields
            and ports_pair_slots(shape) <= PORTS_PAIR_MAX_SLOTS)


def pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


# -- step 1: inlining ---------------------------------------------------------

def counter_slots(table: Table) -> dict[tuple[str, int], int]:
    """(chain, rule index) -> counter slot. The dict only depends on the
    chains' order and lengths, so the last one is kept and handed out
    again (callers only read it): an update's hooks share it, and one
    rule more or less in the last chain with rules adds or drops one key
    (~0.7 ms at 10k rules to build anew)."""
    layout = tuple((c.name, len(c.rules)) for c in table.ordered_chains())
    global _slots_memo
    was = _slots_memo
    if was is not None:
        if was[0] == layout:
            return was[1]
        grown = _one_more_or_less(was[0], layout)
        if grown is not None:
            name, n, more = grown
            slots = dict(was[1])
            if more:
                slots[(name, n)] = FIRST_RULE_COUNTER + len(slots)
            else:
                del slots[(name, n - 1)]
            _slots_memo = (layout, slots)
            return slots
    slots = {}
    for name, n in layout:
        # (the keys and slots of a chain made in C: ~10k rules per update)
        first = FIRST_RULE_COUNTER + len(slots)
        slots.update(zip(zip(repeat(name, n), range(n)), range(first, first + n)))
    _slots_memo = (layout, slots)
    return slots


def _one_more_or_less(was: tuple, now: tuple) -> "tuple[str, int, bool] | None":
    """(chain, its old length, grown?) when ``now`` differs from ``was`` by
    one rule in one chain after which every chain is empty (no slot moves)."""
    if len(was) != len(now):
        return None
    for i, ((name, n), (name2, m)) in enumerate(zip(was, now)):
        if name != name2:
            return None
        if n != m:
            if abs(n - m) != 1 or was[i + 1:] != now[i + 1:] or any(k for _, k in now[i + 1:]):
                return None
            return name, n, m > n
    return None


# the last counter_slots() layout and dict
_slots_memo: "tuple[tuple, dict[tuple[str, int], int]] | None" = None


def hotdrop_guard(rule: Rule) -> Rule | None:
    """``rule`` cut after its first tcp match, when matches other than
    tcp/comment follow it (their constraints would hide the hot-drop)."""
    names = [m.name for m in rule.matches]
    at = names.index("tcp")
    if all(n in ("tcp", "comment") for n in names[at + 1:]):
        return None
    return replace(rule, matches=rule.matches[:at + 1])


@contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector off for a compile: it allocates tens of
    thousands of objects that all live until it returns, and each
    collection the allocations trigger walks the whole heap (the rule set
    too) for nothing; at 10k rules that was half the compile time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            # the allocations counted meanwhile would start a collection at
            # the next allocation, which walks every object the compile made
            # (~5 ms at 10k rules, more when it cascades into older
            # generations): freeze + unfreeze moves the young objects to the
            # oldest generation at once and resets the counts, so they are
            # looked at by the next full collection only (cyclic garbage
            # among them is still found there)
            gc.freeze()
            gc.unfreeze()
            gc.enable()


# What ``fields.decompose`` reads of a rule (not its target or counters),
# as one C-level call (an identity-cache hit compares it for every rule)
_RULE_KEY = attrgetter("src", "dst", "src_inv", "dst_inv", "in_iface", "out_iface", "in_inv",
                       "out_inv", "proto", "proto_inv", "fragment", "frag_inv", "matches")


def rule_key(rule: Rule) -> tuple:
    """What ``fields.decompose`` reads of a rule (not its target or counters)."""
    return _RULE_KEY(rule)


@dataclass(frozen=True)
class Decomposed:
    """What ``inline`` needs of an entry's path: its constraints, those of
    the hot-drop guard entry (the last rule cut after its tcp match; None
    when nothing follows the tcp match), whether the rule has a tcp match,
    whether it has a stateful match (then ``rule_stateful`` is asked), and
    whether it has a conntrack match (``uses_conntrack`` of the walked chains)."""

    fields: EntryFields
    guard: EntryFields | None
    tcp: bool
    stateful: bool = False
    conntrack: bool = False
    # none of stateful, conntrack or a guard entry: walk's fast path emits it
    plain: bool = False


def decomposed(path: list[Rule], hook: str) -> Decomposed:
    last = path[-1]
    tcp = any(m.name == "tcp" for m in last.matches)
    cut = hotdrop_guard(last) if tcp else None
    guard = None if cut is None else decompose(path[:-1] + [cut], hook)
    stateful = any(m.name in STATEFUL_MATCHES for m in last.matches)
    conntrack = any(m.name in CONNTRACK_MATCHES for m in last.matches)
    return Decomposed(decompose(path, hook), guard, tcp, stateful, conntrack,
                      not stateful and not conntrack and guard is None)


class FieldsCache:
    """Decompositions of earlier compiles of one hook, for the next.

    Keyed by content (the ``rule_key`` of every rule on the entry's path),
    so a rule changed in place or a new rule object with another rule's
    content cannot get stale constraints. Finding a rule by content means
    hashing its matches (Python-level hashes of frozen dataclasses, ~1 us
    a rule), so a rule object of the previous compile is first looked up
    by identity: ``by_id`` holds a reference to it (its id cannot be
    reused) and its key, and the key is compared again (cheap: an
    unchanged rule's fields are the very objects the key holds). Memory
    stays bounded: ``by_id`` holds the previous compile's rules only, and
    the content maps are emptied when they outgrow it (rules found by
    identity are not re-entered there, which would mean hashing them)."""

    def __init__(self) -> None:
        self.by_rule: dict[tuple, Decomposed] = {}        # rule_key -> (paths of one rule)
        self.by_path: dict[tuple, Decomposed] = {}        # rule_keys along longer paths
        self.by_id: dict[int, tuple[Rule, tuple, Decomposed]] = {}
        self.next_by_id: dict[int, tuple[Rule, tuple, Decomposed]] = {}
        self.misses = 0       # rules of this compile not found by identity

    def get(self, guard: list[Rule], rule: Rule, hook: str) -> Decomposed:
        """The decomposition of the path ``guard`` + [``rule``]."""
        if not guard:
            hit = self.by_id.get(id(rule))
            if hit is not None and hit[0] is rule and rule_key(rule) == hit[1]:
                self.next_by_id[id(rule)] = hit
                return hit[2]
            key = rule_key(rule)
            self.misses += 1
            if self.misses == INDEX_AFTER:
                self.index()
            d = self.by_rule.get(key) if self.misses >= INDEX_AFTER else None
            if d is None:
                d = decomposed([rule], hook)
            self.next_by_id[id(rule)] = (rule, key, d)
            return d
        path = guard + [rule]
        key = tuple(map(rule_key, path))
        d = self.by_path.get(key)
        if d is None:
            d = self.by_path[key] = decomposed(path, hook)
        return d

    def index(self) -> None:
        """Enter the previous compile's rules in the content map: many
        rules were not found by identity (a rule set read again, or
        copied), so hashing them all (~1 us a rule) beats decomposing
        them again (~10 us). A fresh process (nothing to find) or a few
        new rules never pay for it."""
        for _, key, d in self.by_id.values():
            self.by_rule[key] = d
        for _, key, d in self.next_by_id.values():
            self.by_rule[key] = d

    def done(self, entries: int) -> None:
        """The compile succeeded: its rules are the next one's identity map."""
        self.by_id, self.next_by_id, self.misses = self.next_by_id, {}, 0
        if len(self.by_rule) + len(self.by_path) > 4 * entries + 4096:
            self.by_rule, self.by_path = {}, {}

    def abandon(self) -> None:
        self.next_by_id, self.misses = {}, 0


# rules not found by identity before a compile looks them up by content
INDEX_AFTER = 64
# hook -> its decompositions (see FieldsCache)
_fields_cache: dict[str, FieldsCache] = {}


def clear_caches() -> None:
    """Forget every cached decomposition and address layout (tests:
    compare with a cold compile)."""
    _fields_cache.clear()
    _layouts.clear()
    _flat.clear()


STATEFUL_MATCHES = ("limit", "recent", "hashlimit")


def rule_stateful(rule: Rule) -> "tuple[str, Any] | None":
    """The rule's stateful match (limit, recent or hashlimit) as (name, data) when the
    data path can evaluate it as netfilter does: only once every other
    match held, i.e. it is the rule's last match (comments aside, which
    always hold and have no effect). One before other matches changes its
    state in netfilter even when a later match fails: refused, as are two
    stateful matches on one rule."""
    for m in rule.matches:   # the common case, none, without a list
        if m.name in STATEFUL_MATCHES:
            break
    else:
        return None
    names = [m.name for m in rule.matches]
    found = [i for i, n in enumerate(names) if n in STATEFUL_MATCHES]
    if len(found) > 1:
        raise NotSupported("more than one of the matches `limit', `recent' and `hashlimit' "
                           "on one rule in the eBPF data path")
    at = found[0]
    name = names[at]
    if any(n != "comment" for n in names[at + 1:]):
        raise NotSupported(f"match `{name}' in the eBPF data path only as the rule's last match "
                           "(netfilter updates its state before the matches after it)")
    return name, rule.matches[at].data


def rule_limit(rule: Rule) -> "LimitData | None":
    """The rule's ``-m limit`` (see rule_stateful)."""
    st = rule_stateful(rule)
    return st[1] if st is not None and st[0] == "limit" else None  # type: ignore[return-value]


# memo bits per hook: one per inlined jump rule with a stateful match
MAX_MEMO = 64


def rule_hashlimit(rule: Rule):
    """The rule's ``-m hashlimit`` (its HashlimitData; see rule_stateful:
    netfilter updates the bucket before the matches after it run, and the
    data path runs it once every field of the entry held)."""
    st = rule_stateful(rule)
    return st[1] if st is not None and st[0] == "hashlimit" else None


# all tables' buckets of a namespace (HL_CAPACITY, bpf/lib/hashlimit.h)
HASHLIMIT_CAPACITY = 1 << 20


def check_hashlimit_capacity(datas: list) -> None:
    from ..extensions.hashlimit import table_max

    maxima: dict[str, int] = {}
    for d in datas:
        maxima.setdefault(d.name, table_max(d))
    if sum(maxima.values()) > HASHLIMIT_CAPACITY:
        raise NotSupported(f"hashlimit tables with more than {HASHLIMIT_CAPACITY} entries "
                           "(--hashlimit-htable-max) in all in the eBPF data path")


XT_LOG_UID = 0x08


def check_log(data, hook: str) -> None:
    """What the logger cannot write as the kernel does is refused."""
    if data.logflags & XT_LOG_UID:
        # UID= and GID= come from the socket's file credentials, which no
        # eBPF program at XDP or TC can read
        raise NotSupported("target `LOG' with --log-uid in the eBPF data path")


@dataclass
class Walked:
    """What ``inline`` saw on the way: the chains it walked (every rule of
    each was emitted) and whether one of their rules has a conntrack match."""

    chains: set[str] = field(default_factory=set)
    conntrack: bool = False
    # one plain entry per rule of the hook chain (a verdict or none; no
    # jump, RETURN, REJECT, LOG, stateful match or hot-drop guard entry):
    # the next compile may patch the entries (see _Flat)
    flat: bool = True


def inline(table: Table, hook: str, slots: dict[tuple[str, int], int],
           limits: "list[tuple[int, int]] | None" = None,
           logs: "list | None" = None, hashlimits: "list | None" = None,
           recents: "list | None" = None, walked: Walked | None = None) -> list[Entry]:
    """The hook chain as entries. ``limits`` receives (credit_cap, cost) per
    limit bucket; entry.limit is its slot + 1 (one bucket per rule, shared
    by every inlined copy, as the kernel keeps one per rule)."""
    entries: list[Entry] = []
    if walked is None:
        walked = Walked()
    end = _Label()
    cache = _fields_cache.setdefault(hook, FieldsCache())
    limit_slot: dict[int, int] = {}   # counter slot -> limit slot
    if limits is None:
        limits = []
    if logs is None:
        logs = []
    log_slot: dict[int, int] = {}     # counter slot -> log slot
    if hashlimits is None:
        hashlimits = []
    hl_slot: dict[int, int] = {}      # counter slot -> hashlimit slot
    if recents is None:
        recents = []
    recent_slot: dict[int, int] = {}  # counter slot -> recent slot
    memo_bits = [0]                   # memo bits handed out so far

    # the identity map of this compile (cache.get's first step, done here
    # for the top-level rules: ~10k calls at fw1-10k)
    by_id_get, next_by_id = cache.by_id.get, cache.next_by_id

    def emit(guard: list[Rule], rule: Rule, counter: int, verdict: int = VERDICT_CONTINUE,
             next_: "_Label | None" = None, need: int = 0, sets: int = 0) -> Decomposed:
        if len(entries) >= MAX_ENTRIES:
            raise NotSupported(f"more than {MAX_ENTRIES} rules after inlining user chains")
        d = None
        if not guard:
            hit = by_id_get(id(rule))
            if hit is not None and hit[0] is rule and _RULE_KEY(rule) == hit[1]:
                next_by_id[id(rule)] = hit
                d = hit[2]
        if d is None:
            d = cache.get(guard, rule, hook)
        if d.conntrack:
            walked.conntrack = True
        own = counter != SCRATCH_COUNTER
        own_tcp = d.tcp and own
        if own_tcp and d.guard is not None:
            # xt_tcpudp hot-drops an offset-1 TCP fragment before the matches
            # after it run, but their constraints sit on shared fields (e.g.
            # iprange on the address tries): an uncounted entry without them
            # is the candidate that hot-drops; any other packet passes it by
            entries.append(Entry(d.guard, SCRATCH_COUNTER, tcp=True, need=need))
        lim = rec = hl = 0
        st = rule_stateful(rule) if own and d.stateful else None
        if st is not None and st[0] == "limit":
            data = st[1]
            lim = limit_slot.get(counter, 0)
            if not lim:
                limits.append((data.credit_cap, data.cost))
                lim = limit_slot[counter] = len(limits)
        elif st is not None and st[0] == "recent":
            rec = recent_slot.get(counter, 0)
            if not rec:
                recents.append(st[1])
                rec = recent_slot[counter] = len(recents)
        elif st is not None:
            hl = hl_slot.get(counter, 0)
            if not hl:
                hashlimits.append(st[1])
                hl = hl_slot[counter] = len(hashlimits)
        log = 0
        target = rule.target
        if own and target.data is not None and target.name == "LOG":
            log = log_slot.get(counter, 0)
            if not log:
                logs.append(target.data)
                log = log_slot[counter] = len(logs)
        # (positional: fields, counter, verdict, next, tcp, limit, log,
        # hashlimit, need, set, recent)
        entries.append(Entry(d.fields, counter, verdict, next_, own_tcp, lim, log, hl, need,
                             sets, rec))
        return d

    reject_ttl: list[int] = []   # read once, when a REJECT is met

    def rejecting(data: RejectData) -> int:
        if not reject_ttl:
            reject_ttl.append(default_ttl())
        return reject_verdict(data, hook, reject_ttl[0])

    def walk(chain_name: str, guard: list[Rule], ret: _Label, depth: int, need: int) -> None:
        """``need``: the memo bits of the stateful jump rules in ``guard``."""
        if depth > MAX_DEPTH:
            raise NotSupported("user chains nested deeper than 64")
        rules = table.chains[chain_name].rules
        walked.chains.add(chain_name)
        # a chain's counter slots are consecutive (counter_slots)
        base = slots[(chain_name, 0)] if rules else 0
        verdicts_get = VERDICTS.get
        entries_append = entries.append
        top = not guard
        for i, rule in enumerate(rules):
            slot = base + i
            target = rule.target
            name = target.name
            if target.data is not None:   # an extension target
                walked.flat = False
                if name == "REJECT" and isinstance(target.data, RejectData):
                    # the classifier builds and sends the reply (bpf/lib/reject.h)
                    emit(guard, rule, slot, rejecting(target.data), need=need)
                    continue
                if name != "LOG":
                    raise NotSupported(f"target `{name}' in the eBPF data path")
                check_log(target.data, hook)
                # non-terminal: counted, logged, and the scan goes on
                emit(guard, rule, slot, VERDICT_CONTINUE, None, need)
                continue
            verdict = verdicts_get(name)
            if verdict is None and name == "":
                verdict = VERDICT_CONTINUE
            if verdict is not None:
                if top:
                    # emit()'s common case inline (most rules of a big
                    # rule set): a top-level rule of the previous compile,
                    # without stateful match or hot-drop guard entry
                    hit = by_id_get(id(rule))
                    if hit is not None:
                        known, key, d = hit
                        if (known is rule and d.plain and _RULE_KEY(rule) == key
                                and len(entries) < MAX_ENTRIES):
                            next_by_id[id(rule)] = hit
                            # (need is 0 at the top level; the rest at their defaults)
                            entries_append(Entry(d.fields, slot, verdict, None, d.tcp))
                            continue
                if not emit(guard, rule, slot, verdict, None, need).plain or not top:
                    walked.flat = False
            elif name == "RETURN":
                walked.flat = False
                emit(guard, rule, slot, next_=ret, need=need)
            elif name in table.chains:
                walked.flat = False
                # a stateful match on the jump (limit's token, recent's
                # update, hashlimit's bucket) runs once, at the jump entry,
                # which records the outcome in a memo bit; the called
                # chain's entries, guarded by the jump's other matches,
                # require that bit
                inner = need
                sets = 0
                if rule_stateful(rule) is not None:
                    if memo_bits[0] >= MAX_MEMO:
                        raise NotSupported(f"more than {MAX_MEMO} jumps with `limit', `recent' "
                                           f"or `hashlimit' in {hook} in the eBPF data path")
                    sets = 1 << memo_bits[0]
                    memo_bits[0] += 1
                    inner = need | sets
                emit(guard, rule, slot, need=need, sets=sets)
                path = guard + [rule]
                if target.goto:
                    walk(name, path, ret, depth + 1, inner)
                    emit(guard, rule, SCRATCH_COUNTER, next_=ret, need=inner)
                else:
                    after = _Label()
                    walk(name, path, after, depth + 1, inner)
                    after.index = len(entries)
            else:
                raise NotSupported(f"target `{name}' in the eBPF data path")

    try:
        walk(hook, [], end, 0, 0)
    except BaseException:
        cache.abandon()
        raise
    cache.done(len(entries))
    end.index = len(entries)
    # the policy: an entry without constraints, so every scan ends here
    policy = VERDICTS[table.chains[hook].policy or "ACCEPT"]
    entries.append(Entry(EntryFields(), POLICY_COUNTER, policy, len(entries) + 1))
    return entries


def resolve(entries: list[Entry]) -> None:
    for i, e in enumerate(entries):
        if e.next is None:
            e.next = i + 1
        elif isinstance(e.next, _Label):
            assert e.next.index is not None
            e.next = e.next.index


# -- step 2: field tables -------------------------------------------------------

def bits(indices) -> int:
    """The int with bit i set for every i in ``indices``. OR-ing ``1 << i``
    into a growing int costs its size each time (quadratic at 10k
    entries); a string of binary digits converts in one linear step."""
    idx = indices if isinstance(indices, list) else list(indices)
    if len(idx) < 32:
        v = 0
        for i in idx:
            v |= 1 << i
        return v
    top = max(idx)
    digits = bytearray(b"0") * (top + 1)
    for i in idx:
        digits[top - i] = 49   # "1"
    return int(digits, 2)


ROOT = Prefix(0, 0)


def _prefix_vectors(live: int, per_entry: list[tuple[int, PrefixField]]
                    ) -> tuple[list[tuple[int, int]], list[int]]:
    """The prefixes in use (and 0/0) as (addr, length), sorted by address
    then length, and per prefix the entries that hold for an address
    whose longest listed prefix it is. An entry holds when its positive
    prefix (if any) is an ancestor-or-self of that prefix and none of its
    negated ones is; computed down the prefix tree (``_Layout.links``:
    each prefix's nearest listed ancestor), whose shape depends on the set
    of prefixes only and is kept between compiles (``_layout_of``)."""
    pos: dict[Prefix, int] = {}
    neg: dict[Prefix, int] = {}
    positive: list[int] = []
    pos_get, neg_get = pos.get, neg.get
    for e, pf in per_entry:
        p = pf.positive
        if p is not None:
            v = pos_get(p)
            pos[p] = 1 << e if v is None else v | 1 << e
            positive.append(e)
        if pf.negative:
            for p in pf.negative:
                v = neg_get(p)
                neg[p] = 1 << e if v is None else v | 1 << e
    no_positive = live & ~bits(positive)
    layout = _layout_of({ROOT, *pos, *neg})
    order = layout.order
    ok = list(map(pos_get, order))   # (None: no positive entries there)
    # 0/0 (position 0) is everyone's ancestor: its entries hold everywhere,
    # like those without a positive prefix
    everywhere = no_positive | (ok[0] or 0)
    if not neg:
        # parents come before their children in ``order`` (every prefix
        # but 0/0 has one): a prefix's vector is its own entries OR its
        # parent's vector, one OR each (none, and the parent's very int,
        # for a prefix without positive entries)
        ok[0] = everywhere
        for i, par in layout.links:
            o = ok[i]
            ok[i] = o | ok[par] if o else ok[par]
        return order, ok
    ok = [o or 0 for o in ok]
    ok[0] = 0
    # one forward pass ORs every other ancestor's positive entries into each prefix
    for i, par in layout.links:
        if par:
            o = ok[par]
            if o:
                ok[i] |= o
    bad = [neg_get(k, 0) for k in order]
    for i, par in layout.links:
        o = bad[par]
        if o:
            bad[i] |= o
    # ok and no_positive hold live entries only
    return order, [(o | everywhere) & ~b if b else o | everywhere for o, b in zip(ok, bad)]


def prefix_table(live: int, per_entry: list[tuple[int, PrefixField]]) -> dict[Prefix, int]:
    """LPM contents: for each prefix in use (and 0/0), the entries that hold
    for an address whose longest listed prefix it is (``_prefix_vectors``)."""
    order, vectors = _prefix_vectors(live, per_entry)
    return {Prefix(a, n): v for (a, n), v in zip(order, vectors)}


def address_table(live: int, per_entry: list[tuple[int, PrefixField]],
                  nwords: int | None = None) -> Intervals:
    """An address field's intervals straight from the entries (what
    ``address_intervals(prefix_table(...))`` gives, without Prefix keys).
    With ``nwords``: the vectors as a numpy bit matrix of that many u64
    words per row (``prefix_rows``; ``vectors`` reads its rows as ints)."""
    if nwords is not None:
        found = list(zip(*per_entry))
        ents, pfs = found if found else ([], [])
        return address_columns(live, list(ents), list(pfs), nwords)
    order, vectors = _prefix_vectors(live, per_entry)
    return _intervals(order, vectors, _layouts[0])   # (_prefix_vectors found or made it)


def scatter_bits(m: "Any", rows: "Any", entries: "Any") -> None:
    """Set bit ``entries[k]`` of row ``rows[k]`` of the uint64 matrix ``m``
    for every k (the pairs sorted by word first: several bits of one word
    are ORed together before the store, as fancy assignment keeps one)."""
    import numpy as np

    if not len(entries):
        return
    assert m.flags.c_contiguous   # (reshape(-1) below must be a view)
    flat = rows * m.shape[1] + (entries >> 6)
    bit = np.left_shift(np.uint64(1), (entries & 63).astype(np.uint64))
    order = np.argsort(flat, kind="stable")
    flat, bit = flat[order], bit[order]
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    m.reshape(-1)[flat[starts]] |= np.bitwise_or.reduceat(bit, starts)


def int_words(value: int, nwords: int) -> "Any":
    """A Python int's low ``nwords`` u64 words as a numpy array (a copy)."""
    import numpy as np

    return np.frombuffer(value.to_bytes(nwords * 8, "little"), "<u8").copy()


_POSITIVE = attrgetter("positive")
_NEGATIVE = attrgetter("negative")


def address_columns(live: int, ents: list[int], pfs: list[PrefixField], nwords: int,
                    keep: "list | None" = None) -> Intervals:
    """``address_table(live, list(zip(ents, pfs)), nwords)`` from the
    entries and their constraints as two lists (what the compiler has)."""
    layout, rows, tree = prefix_rows(live, ents, pfs, nwords, keep)
    return _address_iv(layout, rows, tree)


def _address_iv(layout: "_Layout", rows: "Any", tree: "AddressTree | None") -> Intervals:
    iv = Intervals(layout.bounds, layout.index, [], layout.top, layout.probes, rows, tree,
                   layout.top_depth)
    iv.vectors = RowInts(iv, len(layout.owners))
    return iv


def prefix_rows(live: int, ents: list[int], pfs: list[PrefixField], nwords: int,
                keep: "list | None" = None) -> "tuple[_Layout, Any, AddressTree | None]":
    """``_prefix_vectors`` as a numpy bit matrix, in the layout's owner
    order (``Intervals.vectors``): the rows of the internal prefixes (with
    more specific ones listed) get their own positive entries' bits (0/0's:
    every entry without a positive prefix too), ORed down the tree one
    depth at a time; a leaf's row is its parent's plus its own entries
    (``AddressTree``: rows made on demand). Negated prefixes make a second
    such matrix, cleared from the first (then the rows are made now, and
    no tree is returned). Bit for bit what ``_prefix_vectors`` gives (tested).
    ``keep``: a list the AddressState of a tree is appended to."""
    import numpy as np

    # (the attributes by map(): attrgetter runs in C, ~10k entries;
    # compress / filter / count too: a Prefix is a non-empty tuple)
    allpos = list(map(_POSITIVE, pfs))
    pos_e = list(compress(ents, allpos))
    pos_p = list(filter(None, allpos))
    neg_e: list[int] = []
    neg_p: list[Prefix] = []
    allneg = list(map(_NEGATIVE, pfs))
    if allneg.count(()) != len(allneg):
        for e, negative in zip(ents, allneg):
            if negative:
                for q in negative:
                    neg_e.append(e)
                    neg_p.append(q)
    keys = {ROOT, *pos_p, *neg_p}
    layout = _layout_of(keys)
    codes = layout.codes

    def positions(prefixes: list[Prefix]) -> "Any":
        pairs = np.fromiter(chained.from_iterable(prefixes), dtype=np.int64,
                            count=2 * len(prefixes)).reshape(-1, 2)
        return np.searchsorted(codes, (pairs[:, 0] << 6) | pairs[:, 1])

    pe = np.array(pos_e, dtype=np.int64)
    # 0/0 (position 0) is everyone's ancestor: every entry without a
    # positive prefix holds everywhere, as its own entries do
    positive = np.zeros((1, nwords), dtype=np.uint64)
    scatter_bits(positive, np.zeros(len(pe), dtype=np.int64), pe)
    at = positions(pos_p)
    tree = _tree_rows(layout, at, pe, int_words(live, nwords) & ~positive[0], nwords)
    if neg_e:
        rows = tree.rows()
        rows &= ~_tree_rows(layout, positions(neg_p), np.array(neg_e, dtype=np.int64),
                            np.zeros(nwords, dtype=np.uint64), nwords).rows()
        return layout, rows, None
    if keep is not None:
        refs: dict[Prefix, int] = {}
        for q in pos_p:
            refs[q] = refs.get(q, 0) + 1
        keep.append(AddressState(nwords, pe, codes[at], bits(pos_e), refs, keys, layout))
    return layout, None, tree


def _tree_rows(layout: "_Layout", at: "Any", entries: "Any", root: "Any", nwords: int
               ) -> AddressTree:
    """Per owner the bits of ``entries`` at ``at`` (positions in the
    layout) and their ancestors, ``root`` ORed into 0/0's: computed densely
    for the internal prefixes only (few); a leaf's own bits listed."""
    import numpy as np

    iid = layout.internal_id[at]
    inner = iid >= 0
    tree = np.zeros((int(layout.internal_id.max()) + 1, nwords), dtype=np.uint64)
    scatter_bits(tree, iid[inner], entries[inner])
    tree[0] |= root
    for child, par in layout.internal_levels:
        tree[child] |= tree[par]
    leaf = at[~inner]
    first = layout.codes[leaf] >> 6
    return AddressTree(tree, layout.base, layout.owner_of[leaf], entries[~inner],
                       layout.bounds_np, layout.index_np, first,
                       first + np.left_shift(1, 32 - (layout.codes[leaf] & 63)))


def address_intervals(prefixes: dict[Prefix, int]) -> Intervals:
    """The LPM table as address intervals: the address space cut at the
    first address of every prefix and after its last; each interval gets
    the bitvector of the longest prefix containing it. A binary search
    over the interval starts (bpf/lib/ranges.h) costs about half an LPM
    trie lookup here (measured: 35 vs 89 ns with 6,672 prefixes), and the
    bitvectors, stored once each, stay out of the search structure."""
    items = sorted(((p.addr, p.length), v) for p, v in prefixes.items())
    assert items and items[0][0] == (0, 0), "0/0 is always in the table"
    return _intervals([k for k, _ in items], [v for _, v in items])


@dataclass
class _Layout:
    """The part of an address table that depends on the prefixes only,
    not on the entries: the interval starts, per interval the id of its
    bitvector, which prefix (position in ``order``) each id is, the /16
    table and the probes. Shared by the Intervals made from it (nothing
    writes them)."""

    order: list[tuple[int, int]]
    bounds: list[int]
    index: list[int]
    owners: list[int]
    top: "array[int]"
    probes: int
    # the prefixes as a set (to find this layout again)
    keys: frozenset = frozenset()
    # for prefix_rows: ``order`` as sorted addr << 6 | length codes; the
    # prefixes with children ("internal", 0/0 always first), per
    # position its internal id (-1: a leaf), per owner the internal id of
    # itself or, for a leaf, of its parent; per depth the internal
    # positions' ids and their parents' ids; per position its owner row
    codes: "Any" = None
    internal_id: "Any" = None
    base: "Any" = None
    internal_levels: list = field(default_factory=list)
    owner_of: "Any" = None
    bounds_np: "Any" = None   # bounds and index as numpy arrays
    index_np: "Any" = None
    # per position its parent and depth, per cut its innermost prefix's
    # position (what _layout_edit patches)
    parent: "Any" = None
    depths: "Any" = None
    owner: "Any" = None
    top_depth: "Any" = None   # Intervals.top_depth

    @cached_property
    def links(self) -> list[tuple[int, int]]:
        """Per position in ``order`` but the first (0/0), (position, its
        nearest listed ancestor's position), in order (made when first
        asked: the compiler's prefix_rows path never does)."""
        return list(zip(range(1, len(self.order)), self.parent[1:].tolist()))


# the last few address layouts: an update that leaves the prefixes of a
# field as they were (most single-rule changes, for one of the two
# addresses at least) skips the interval sweep and the /16 table
_layouts: list[_Layout] = []
LAYOUTS_KEPT = 6


def _layout_of(keys: set[tuple[int, int]]) -> _Layout:
    """The layout of a set of prefixes (0/0 among them), most recent first."""
    for at, layout in enumerate(_layouts):
        if layout.keys == keys:
            if at:
                _layouts.insert(0, _layouts.pop(at))
            return layout
    import numpy as np

    # sorted as integers (addr << 6 | length: the same order as the
    # tuples, ~10x faster to sort than Prefix tuples)
    pairs = np.fromiter(chained.from_iterable(keys), dtype=np.int64,
                        count=2 * len(keys)).reshape(-1, 2)
    codes = np.sort((pairs[:, 0] << 6) | pairs[:, 1])
    addrs, lengths = codes >> 6, codes & 63
    order = list(zip(addrs.tolist(), lengths.tolist()))
    return _remember(_layout(order, addrs, lengths))


def _layout_after(prev: _Layout, keys: set[tuple[int, int]],
                  changed: list[tuple[tuple[int, int], bool]]) -> _Layout:
    """The layout of ``keys``: a kept one, else ``prev`` patched by
    ``changed`` (prefixes removed or added, in turn: ``_layout_edit``)."""
    n = len(keys)
    for at, layout in enumerate(_layouts):
        # (a kept layout of as many prefixes that lacks an added one or
        # holds a removed one is refused before the set compare: O(1))
        if (len(layout.keys) == n and all((p in layout.keys) == add for p, add in changed)
                and layout.keys == keys):
            if at:
                _layouts.insert(0, _layouts.pop(at))
            return layout
    layout = prev
    for p, add in changed:
        layout = _layout_edit(layout, p, add)
    return _remember(layout)


def _remember(layout: _Layout) -> _Layout:
    _layouts.insert(0, layout)
    del _layouts[LAYOUTS_KEPT:]
    return layout


def _intervals(order: list[tuple[int, int]], values: list[int],
               layout: "_Layout | None" = None) -> Intervals:
    """``order``: (addr, length) sorted, 0/0 first; ``values`` their
    bitvectors; ``layout``: the layout of ``order`` when known."""
    if layout is None or layout.order is not order:
        for layout in _layouts:
            if layout.order == order:
                break
        else:
            layout = _remember(_layout(order))
    return Intervals(layout.bounds, layout.index, [values[p] for p in layout.owners],
                     layout.top, layout.probes, top_depth=layout.top_depth)


def _layout(order: list[tuple[int, int]], addrs: "Any" = None, lengths: "Any" = None
            ) -> _Layout:
    """The intervals of ``order`` (sorted, 0/0 first; ``addrs``,
    ``lengths``: the same as numpy arrays, when known), computed by
    numpy: cut at every prefix's first address and after its last; each
    interval belongs to the innermost prefix containing its start;
    bitvector ids in order of first appearance."""
    import numpy as np

    n = len(order)
    if addrs is None:
        addrs = np.fromiter((a for a, _ in order), dtype=np.int64, count=n)
        lengths = np.fromiter((m for _, m in order), dtype=np.int64, count=n)
    ends = addrs + np.left_shift(np.int64(1), 32 - lengths)
    parent, depths = _parents(addrs, ends)
    cuts = np.unique(np.concatenate((np.zeros(1, dtype=np.int64), addrs, ends[ends < 1 << 32])))
    # the innermost prefix holding a cut: the last one starting at or
    # before it, or the nearest of its ancestors that still holds the cut
    # (0/0 holds every cut; one step per level of nesting, all cuts at once)
    owner = np.searchsorted(addrs, cuts, side="right") - 1
    while True:
        out = ends[owner] <= cuts
        if not out.any():
            break
        owner[out] = parent[owner[out]]
    return _finish(list(order), addrs, lengths, parent, depths, cuts, owner)


def _finish(order: list[tuple[int, int]], addrs: "Any", lengths: "Any", parent: "Any",
            depths: "Any", cuts: "Any", owner: "Any", top: "Any" = None,
            keys: "frozenset | None" = None, bounds: "list[int] | None" = None) -> _Layout:
    """The layout from the prefixes' tree (``parent``, ``depths``), the
    cuts and each cut's innermost prefix (``owner``); ``top``: the /16
    table when the caller patched it (else ``with_buckets`` makes it)."""
    import numpy as np

    n = len(order)
    # one bitvector per prefix that is the innermost somewhere, numbered
    # in order of first appearance
    uniq, first = np.unique(owner, return_index=True)
    owners = uniq[np.argsort(first, kind="stable")]
    ids = np.zeros(n, dtype=np.int64)
    ids[owners] = np.arange(len(owners))
    index = ids[owner].tolist()
    if bounds is None:
        bounds = cuts.tolist()
    if top is None:
        iv = with_buckets(Intervals(bounds, index, []))
        top, probes, top_depth = iv.top, iv.probes, iv.top_depth
    else:
        top = array("I", top.astype(np.uint32).tobytes())
        top_depth, probes = slash16_depths(cuts)
    levels = [np.flatnonzero(depths == d) for d in range(1, int(depths.max()) + 1)]
    internal = np.union1d([0], parent[1:])
    internal_id = np.full(n, -1, dtype=np.int64)
    internal_id[internal] = np.arange(len(internal))
    base = internal_id[owners]
    leaf = base < 0
    base[leaf] = internal_id[parent[owners[leaf]]]
    internal_levels = []
    for level in levels:
        inner = level[internal_id[level] >= 0]
        if len(inner):
            internal_levels.append((internal_id[inner], internal_id[parent[inner]]))
    owner_of = np.full(n, -1, dtype=np.int64)
    owner_of[owners] = np.arange(len(owners))
    return _Layout(order, bounds, index, owners.tolist(), top, probes,
                   frozenset(order) if keys is None else keys, (addrs << 6) | lengths,
                   internal_id, base, internal_levels, owner_of, cuts, ids[owner],
                   parent, depths, owner, top_depth)


def slash16_depths(bounds: "Any") -> "tuple[Any, int]":
    """Per /16 the bit length of the number of interval starts inside it
    (not at its first address): the probes a search from its first
    interval needs (numpy uint32, 65,536); and the largest, the probes of
    the most crowded /16 (``Intervals.probes``). The program skips the
    steps a /16 does not need (bpf/lib/ranges.h)."""
    import numpy as np

    inside = bounds[(bounds & 0xFFFF) != 0] >> 16
    counts = np.bincount(inside, minlength=1 << 16)
    # frexp(c) = (m, e) with c = m * 2**e, 0.5 <= m < 1: e is c's bit length (0 for 0)
    depth = np.frexp(counts.astype(np.float64))[1].astype(np.uint32)
    return depth, int(depth.max())


def _layout_edit(prev: _Layout, p: tuple[int, int], add: bool) -> _Layout:
    """``_layout`` of ``prev``'s prefixes with ``p`` added (``add``) or
    removed, patched from ``prev``: the tree (a prefix inside ``p`` whose
    parent was ``p``'s gets ``p``, or gets ``p``'s parent back; every
    prefix inside ``p`` one level deeper or shallower), ``p``'s two cuts
    (kept when another prefix starts or ends there), the cuts inside ``p``
    owned by its parent moved to ``p`` (or back), and the /16 table
    shifted past each cut added or removed. The same layout as a full
    build (tested field by field)."""
    import numpy as np

    code = p[0] << 6 | p[1]
    codes, parent, depths, cuts, owner = prev.codes, prev.parent, prev.depths, prev.bounds_np, prev.owner
    a, e = p[0], p[0] + (1 << (32 - p[1]))
    top = np.frombuffer(prev.top, dtype=np.uint32).astype(np.int64)
    j = int(np.searchsorted(codes, code))
    order = list(prev.order)
    bounds = list(prev.bounds)   # (cuts as a list, patched alongside)
    if add:
        addrs = codes >> 6
        ends = addrs + np.left_shift(np.int64(1), 32 - (codes & 63))
        # p's parent: from the prefix before it, up while it ends at or before a
        c = j - 1
        while ends[c] <= a:
            c = int(parent[c])
        hi = int(np.searchsorted(addrs, e))   # [j, hi): the prefixes inside p
        par = parent + (parent >= j)
        inside = par[j:hi]
        inside[inside == c] = j
        par = np.insert(par, j, c)
        dep = depths.copy()
        dep[j:hi] += 1
        dep = np.insert(dep, j, depths[c] + 1)
        own = owner + (owner >= j)
        for x in (a, e):
            if x < 1 << 32:
                at = int(np.searchsorted(cuts, x))
                if at == len(cuts) or cuts[at] != x:
                    cuts = np.insert(cuts, at, x)
                    bounds.insert(at, x)
                    own = np.insert(own, at, own[at - 1])
                    f = (x + 0xFFFF) >> 16
                    top[f:] += 1
        lo, up = np.searchsorted(cuts, (a, e))
        span = own[lo:up]
        span[span == c] = j
        codes = np.insert(codes, j, code)
        order.insert(j, p)
    else:
        c = int(parent[j])
        codes = np.delete(codes, j)
        addrs = codes >> 6
        ends = addrs + np.left_shift(np.int64(1), 32 - (codes & 63))
        hi = int(np.searchsorted(addrs, e))   # [j, hi): the prefixes inside p (new numbering)
        par = parent.copy()
        par[par == j] = c
        par = np.delete(par, j)
        par -= par > j
        dep = np.delete(depths, j)
        dep[j:hi] -= 1
        own = owner.copy()
        own[own == j] = c
        own -= own > j
        for x in (a, e):
            if x < 1 << 32 and x != 0:
                if not ((addrs == x).any() or (ends == x).any()):
                    at = int(np.searchsorted(cuts, x))
                    cuts = np.delete(cuts, at)
                    del bounds[at]
                    own = np.delete(own, at)
                    top[(x + 0xFFFF) >> 16:] -= 1
        del order[j]
    keys = prev.keys | {p} if add else prev.keys - {p}
    return _finish(order, codes >> 6, codes & 63, par, dep, cuts, own, top, keys, bounds)


def _parents(addrs: "Any", ends: "Any") -> "tuple[Any, Any]":
    """Per prefix (sorted by address then length, 0/0 first; nested or
    disjoint) its nearest listed ancestor (0/0: itself) and its depth
    below 0/0. The parent of i is the last j < i whose end lies past i's
    start. Every prefix starts from i - 1 as its candidate and, while the
    candidate ends at or before its start, jumps to the candidate's own
    current candidate: a candidate's candidate is never below the
    candidate's parent, and a prefix holding i holds everything between
    it and i, so no jump passes i's parent (pointer jumping: a few rounds
    of numpy, not a Python stack walk over every prefix)."""
    import numpy as np

    n = len(addrs)
    parent = np.arange(-1, n - 1, dtype=np.int64)
    parent[0] = 0
    while True:
        out = np.flatnonzero(ends[parent] <= addrs)
        if not len(out):
            break
        parent[out] = parent[parent[out]]
    depths = np.full(n, -1, dtype=np.int64)
    depths[0] = 0
    while True:
        ready = np.flatnonzero((depths < 0) & (depths[parent] >= 0))
        if not len(ready):
            break
        depths[ready] = depths[parent[ready]] + 1
    return parent, depths


def with_buckets(iv: Intervals) -> Intervals:
    """A first step indexed by the address's top 16 bits (DIR-16 style):
    the search then runs only among the intervals of that /16, with as
    many probes as the most crowded /16 needs (measured on fw1-10k's
    destinations: 14 probes -> a handful)."""
    import numpy as np

    bounds = np.array(iv.bounds, dtype=np.int64)
    # interval i holds the /16 starts from bounds[i] up to bounds[i + 1]:
    # top[h] is the last interval whose first /16 start is at or before h
    firsts = (bounds + 0xFFFF) >> 16
    top = np.searchsorted(firsts, np.arange(1 << 16), side="right") - 1
    # from top[h], the search moves past the interval starts inside the /16
    iv.top = array("I", top.astype(np.uint32).tobytes())
    iv.top_depth, iv.probes = slash16_depths(bounds)
    return iv


# A /16 with at least 2**(DENSE_DEPTH - 1) interval starts inside gets a
# dense block when its program has slots (image.dense_blocks): its search
# would take 3 dependent steps or more (SEARCH_BITS 2), the block one load
# and a popcount. Each slot is a 12 KiB block; at most DENSE_SLOTS_MAX per
# field (3 MiB: one map value, under the 4 MiB older kernels allow).
DENSE_DEPTH = 5
DENSE_SLOTS_MAX = 256


def dense_slots(iv: Intervals) -> int:
    """Dense block slots for ``iv``'s crowded /16s: a power of two (the
    program masks the slot), 0 when none is crowded."""
    import numpy as np

    crowded = int(np.count_nonzero(iv.slash16_depth() >= DENSE_DEPTH))
    return min(DENSE_SLOTS_MAX, pow2_at_least(crowded)) if crowded else 0


def bsize_of(iv: Intervals) -> int:
    """Slots for the interval starts, with room for a search that begins
    at the last one and probes up to 2**probes - 1 slots further."""
    return max(2, pow2_at_least(len(iv.bounds) + (1 << iv.probes)))


def range_cuts(positive: "tuple[int, int] | None", negative: "tuple[tuple[int, int], ...]",
               top: int) -> list[int]:
    """Where a range constraint cuts [0, top]: each range's first value
    and the one after its last (none past ``top``)."""
    out = []
    for lo, hi in ([positive] if positive else []) + list(negative):
        out.append(lo)
        if hi < top:
            out.append(hi + 1)
    return out


def range_table(live: int, per_entry: list[tuple[int, RangeField]], top: int,
                extra_cuts: set[int] = frozenset(), groups: "list | None" = None
                ) -> tuple[list[int], list[int]]:
    """Interval contents of a range-compressed field whose values lie in
    [0, top]: the boundaries (sorted, from 0) and, per interval
    [b[i], b[i+1]), the entries whose ranges hold there. Ranges are cut at
    every boundary, so each range contains an interval or is disjoint from
    it; one sweep gives every interval's bitvector. ``extra_cuts``: more
    boundaries (of another table sharing these intervals). Entries with
    the same ranges are swept as one group (one bitvector); ``groups``:
    grouped(per_entry, _RANGE_KEY) when the caller has it."""
    if groups is None:
        groups = grouped(per_entry, _RANGE_KEY)
    cuts = {0, *extra_cuts}
    for (positive, negative), _ in groups:
        cuts.update(range_cuts(positive, negative, top))
    bounds = sorted(cuts)
    # sweep: groups start/stop being covered at interval indices
    index = {b: i for i, b in enumerate(bounds)}
    events: dict[int, list[tuple[int, bool, int]]] = {}
    no_positive = live
    for g, ((positive, negative), vec) in enumerate(groups):
        if positive:
            no_positive &= ~vec
            lo, hi = positive
            events.setdefault(index[lo], []).append((g, True, +1))
            if hi < top:
                events.setdefault(index[hi + 1], []).append((g, True, -1))
        for lo, hi in negative:
            events.setdefault(index[lo], []).append((g, False, +1))
            if hi < top:
                events.setdefault(index[hi + 1], []).append((g, False, -1))
    pos_active, neg_active = 0, 0
    neg_count: dict[int, int] = {}
    vectors = []
    for i in range(len(bounds)):
        for g, positive, delta in events.get(i, ()):
            vec = groups[g][1]
            if positive:
                pos_active ^= vec  # one positive range per group
            else:
                n = neg_count.get(g, 0) + delta
                neg_count[g] = n
                if n:
                    neg_active |= vec
                else:
                    neg_active &= ~vec
        v = pos_active | no_positive
        vectors.append(v & ~neg_active if neg_active else v)
    return bounds, vectors


def port_table(live: int, per_entry: list[tuple[int, RangeField]], l4_entries: int,
               extra_cuts: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """A port field: the intervals (range_table), then the no-L4 bitvector
    (entries without a tcp/udp match) and the offset-1 TCP fragment
    bitvector (all entries: every tcp entry must be reached to hot-drop)."""
    bounds, vectors = range_table(live, per_entry, 0xFFFF, extra_cuts)
    return bounds, vectors + [live & ~l4_entries, live]


def either_cuts(live_entries: list[tuple[int, EntryFields]]) -> set[int]:
    """The boundaries of every multiport --ports list (cut into both port fields)."""
    cuts: set[int] = set()
    for ranges in {f.either for _, f in live_entries if f.either is not None}:
        for lo, hi in ranges:
            cuts.add(lo)
            if hi < 0xFFFF:
                cuts.add(hi + 1)
    return cuts


def either_table(live: int, live_entries: list[tuple[int, EntryFields]],
                 bounds: list[int]) -> list[int]:
    """Per interval of a port field (its bounds include every --ports
    boundary), the entries whose --ports list holds the interval, plus
    every entry without --ports; then no L4 header (no --ports entry) and
    the offset-1 fragment (all: NotFragment excludes it elsewhere)."""
    groups = grouped(live_entries, lambda f: f.either)
    free = sum(vec for ranges, vec in groups if ranges is None)
    lists = [(ranges, vec) for ranges, vec in groups if ranges is not None]
    out = []
    for b in bounds:
        v = free
        for ranges, vec in lists:
            if any(lo <= b <= hi for lo, hi in ranges):
                v |= vec
        out.append(v)
    return out + [free, live]


def interfaces_here() -> dict[str, int]:
    """Interface name -> ifindex in the current network namespace (netlink)."""
    return {name: index for index, name in socket.if_nameindex()}


def compile_chain(table: Table, hook: str = "INPUT", interfaces: dict[str, int] | None = None,
                  min_shape: Shape | None = None, trust_identity: bool = False) -> Compiled:
    """Compile ``hook`` of ``table``. Interface names in -i are resolved to
    ifindexes now, from ``interfaces`` (default: this namespace's); an
    interface that appears later is seen as matching no -i name until the
    chain is compiled again.

    ``trust_identity``: the caller never changes a rule object in place
    (the front end does not: every change makes new Rule objects), so the
    previous compile of ``hook`` may be patched when its rules differ by
    one rule added, removed or replaced (_Flat). The entries of a compiled
    chain may then be renumbered in place by the next compile of its hook."""
    with gc_paused():
        return _compile_chain(table, hook, interfaces, min_shape, trust_identity)


def _compile_chain(table: Table, hook: str, interfaces: dict[str, int] | None,
                   min_shape: Shape | None, trust_identity: bool = False) -> Compiled:
    if hook not in ("INPUT", "FORWARD", "OUTPUT"):
        raise NotSupported(f"the {hook} chain in the eBPF data path")
    if interfaces is None:
        interfaces = interfaces_here()
    if addrtypes.used and addrtypes.refresh():
        # -m addrtype was lowered from the routes (by this process, so
        # maybe cached): decompositions made with other routes are stale
        clear_caches()
    slots = counter_slots(table)
    limits: list[tuple[int, int]] = []
    logs: list = []
    hashlimits: list = []
    recents: list = []
    walked = Walked()
    policy = VERDICTS[table.chains[hook].policy or "ACCEPT"]
    flat = _patched(table, hook, slots) if trust_identity else None
    if flat is not None:
        # one rule added, removed or replaced in a flat hook chain (or none):
        # the previous compile's entries patched (see _Flat)
        entries = flat.entries + [Entry(EntryFields(), POLICY_COUNTER, policy,
                                        len(flat.entries) + 1)]
        set_records: list[bytes] = []
        n = len(entries)
        live_index = flat.live_index + [n - 1]
        live_fields = flat.live_fields + [entries[-1].fields]
        uses: "set[frozenset[str]] | dict[frozenset[str], int]" = flat.uses
        nonterminal, nstateful = flat.nonterminal, 0
        walked.chains.add(hook)   # (its entries have no conntrack match: flat)
    else:
        if trust_identity:
            _flat.pop(hook, None)   # (remembered again below when still flat)
        entries = inline(table, hook, slots, limits, logs, hashlimits, recents, walked)
        if limits:
            shared_limits(table)
        if hashlimits:
            check_hashlimit_capacity(hashlimits)
        if recents:
            from .recent import table_needs
            table_needs(table)   # refuses what the tables cannot hold
        set_records = assign_sets(entries)
        n = len(entries)
        # one pass: targets resolved, the live entries, the fields in use (each
        # decomposition knows its own) and the entries a scan may pass by:
        # continuing ones, and terminal ones whose per-candidate check can fail
        live_index = []
        live_fields = []
        uses = {}
        uses_get = uses.get
        nonterminal = 0
        nstateful = 0   # entries whose check is a program of its own (hashlimit, recent)
        for i, e in enumerate(entries):
            nxt = e.next
            if nxt is None:
                e.next = i + 1
            elif isinstance(nxt, _Label):
                assert nxt.index is not None
                e.next = nxt.index
            f = e.fields
            if not f.never:
                live_index.append(i)
                live_fields.append(f)
                u = f.used
                if u is None:
                    u = frozenset(f.uses())
                uses[u] = uses_get(u, 0) + 1
            checks = f.checks
            if (e.verdict == VERDICT_CONTINUE or e.need or e.limit or e.hashlimit or e.recent
                    or e.set_mask or (checks if checks is not None else f.has_checks())):
                nonterminal += 1
                if e.hashlimit or e.recent:
                    nstateful += 1
    live_entries = list(zip(live_index, live_fields))
    live = bits(live_index) if flat is None else flat.live | 1 << (n - 1)
    is_flat = flat is not None or (walked.flat and walked.chains == {hook} and not set_records
                                   and n == len(table.chains[hook].rules) + 1)
    if flat is None and trust_identity and is_flat:
        _remember_flat(table, hook, slots, entries, live_index, live_fields, uses,
                       nonterminal, live)

    def per_entry(name: str) -> list:
        """(entry, its constraint on field ``name``) per live entry."""
        return list(zip(live_index, map(attrgetter(name), live_fields)))
    used: set[str] = set().union(*uses)   # (the policy's: none)
    nwords = pow2_at_least((n + 63) // 64)
    # A scan only moves forward (continuations and RETURN/goto targets lie
    # after the entry), so it reads each summary word (one bit per
    # bitvector word, see bpf/lib/bitvector.h) and each candidate word at
    # most once, and visits at most every continuing entry plus one verdict.
    needed = nwords + summary_words(nwords) + nonterminal + 2
    if "ctstate" not in used and (walked.conntrack or uses_conntrack(table, walked.chains)):
        # the namespace tracks connections: every hook's classifier runs
        # the tracker (and carries the field), used by its rules or not
        used.add("ctstate")
    limit = max_steps(used | (min_shape.fields if min_shape is not None else set()))
    steps = min(needed, limit)
    if -(-needed // steps) > MAX_CHUNKS:
        raise NotSupported(f"more than {MAX_CHUNKS * limit - nwords - 2} "
                           "non-terminating rules in one chain in the eBPF data path")
    c = Compiled(hook, Shape(nwords, steps, FIRST_RULE_COUNTER + len(slots), frozenset(),
                             scan=needed, stateful=nstateful),
                 entries, live, policy, slots)
    check_stateful_calls(c.shape, steps)
    c.flat = is_flat
    shape = c.shape
    c.limits = limits
    shape.nlimits = len(limits) + 1 if limits else 0
    c.logs = logs
    shape.nlogs = len(logs) + 1 if logs else 0
    c.hashlimits = hashlimits
    shape.nhashlimits = 1 if hashlimits else 0
    c.recents = recents
    shape.nrecent = len(recents) + 1 if recents else 0
    shape.memo = 0 if flat is not None else int(any(e.set for e in entries))
    c.set_records = set_records
    shape.nsets = len(set_records) + 1 if set_records else 0
    if min_shape is not None:
        used |= set(min_shape.fields)
    shape.fields = frozenset(used)

    # (the derivable tables: Derived, below; ``keep`` made here for these)
    edit = flat.edit if flat is not None else None
    prev = edit.tables if edit is not None else None
    keep = Derived() if trust_identity and is_flat else None

    def addresses(name: str) -> Intervals:
        if keep is not None and prev is not None and name in prev.addresses:
            assert edit is not None
            derived = derive_address(prev.addresses[name], edit, name, live, nwords)
            if derived is not None:
                keep.addresses[name] = derived[1]
                return derived[0]
        kept: "list | None" = [] if keep is not None else None
        iv = address_columns(live, live_index, list(map(attrgetter(name), live_fields)),
                             nwords, kept)
        if kept:
            assert keep is not None
            keep.addresses[name] = kept[0]
        return iv
    if "src" in used:
        c.src_iv = addresses("src")
        shape.src_max, shape.src_bsize = len(c.src_iv.vectors), bsize_of(c.src_iv)
        shape.src_nbounds, shape.src_probes = len(c.src_iv.bounds), c.src_iv.probes
        shape.src_dense = dense_slots(c.src_iv)
    if "dst" in used:
        c.dst_iv = addresses("dst")
        shape.dst_max, shape.dst_bsize = len(c.dst_iv.vectors), bsize_of(c.dst_iv)
        shape.dst_nbounds, shape.dst_probes = len(c.dst_iv.bounds), c.dst_iv.probes
        shape.dst_dense = dense_slots(c.dst_iv)
    # a patched edit derives the range and protocol tables from the last
    # compile's (Derived) too
    def ranged(name: str, top: int, extra_cuts: set[int] = frozenset()
               ) -> tuple[list[int], list[int]]:
        if extra_cuts or keep is None:
            return range_table(live, per_entry(name), top, extra_cuts)
        if prev is not None and name in prev.ranges:
            assert edit is not None
            state = derive_range(prev.ranges[name], edit, name, top)
        else:
            state = range_state(live, per_entry(name), top)
        keep.ranges[name] = state
        return state.bounds, state.vectors
    if "proto" in used:
        if keep is None:
            c.proto = proto_table(live, live_entries)
        else:
            if prev is not None and prev.proto is not None:
                assert edit is not None
                c.proto, refs = derive_proto(prev.proto, prev.proto_refs, edit)
            else:
                c.proto, refs = proto_table(live, live_entries), proto_refs_of(live_entries)
            keep.proto, keep.proto_refs = c.proto, refs
        shape.proto_max = len(c.proto)
    if "iif" in used:
        c.iif = iif_table(live, live_entries, interfaces)
        shape.iif_max = len(c.iif)
    if "oif" in used:
        c.oif = iif_table(live, live_entries, interfaces, lambda f: f.oif)
        shape.oif_max = len(c.oif)
    if "frag" in used:
        c.frag = frag_table(live_entries)
    if "flags" in used:
        c.flags = flags_table(live, live_entries)
    l4 = _l4_of(hook, flat, live_entries)
    # (no entry with --ports: no cut of theirs; a pass less)
    ecuts = either_cuts(live_entries) if any("ports" in u for u in uses) else set()
    if "sport" in used:
        bounds, vectors = ranged("sport", 0xFFFF, ecuts)
        c.sport_bounds, c.sport = bounds, vectors + [live & ~l4, live]   # as port_table
        shape.sport_bsize = max(2, pow2_at_least(len(c.sport_bounds)))
    if "dport" in used:
        bounds, vectors = ranged("dport", 0xFFFF, ecuts)
        c.dport_bounds, c.dport = bounds, vectors + [live & ~l4, live]
        shape.dport_bsize = max(2, pow2_at_least(len(c.dport_bounds)))
    if "ports" in used:
        # "sport in L or dport in L": the OR of a sport-indexed and a
        # dport-indexed bitvector, one more AND term (filter.c TERM_PORTS)
        c.ports_s = either_table(live, live_entries, c.sport_bounds)
        c.ports_d = either_table(live, live_entries, c.dport_bounds)
    if "length" in used:
        c.length_bounds, c.length = ranged("length", 0xFFFF)
        shape.length_bsize = max(2, pow2_at_least(len(c.length_bounds)))
    if "ttl" in used:
        bounds, c.ttl = ranged("ttl", 0xFF)
        if hook == "FORWARD":
            # ip_forward() lowers the TTL before the FORWARD hook: netfilter
            # compares frame TTL - 1, so the table is keyed by the frame's
            # TTL with every boundary one higher (a boundary of 256 is
            # never reached: netfilter never sees TTL 255 in FORWARD)
            bounds = [0] + [b + 1 for b in bounds[1:]]
        c.ttl_bounds = bounds
        shape.ttl_bsize = max(2, pow2_at_least(len(c.ttl_bounds)))
    if "tos" in used:
        c.tos = tos_table(live_entries)
    if "mac" in used:
        c.mac = mac_table(live_entries)
        shape.mac_max = len(c.mac)
    if "pkttype" in used:
        c.pkttype = pkttype_table(live_entries)
    if any("atcheck" in u for u in uses):   # (f.uses(): atcheck not None)
        # (a shape asking for the field alone gets fill_unused's /0)
        c.atype_lpm = addrtypes.current_lpm()
    if "ctcheck" in used:
        # every entry's (image.ctcheck_blobs writes dead ones' too)
        shape.ctextra_max = 1 + sum(max(0, len(e.fields.ctcheck) - 1) for e in entries)
    if "ctstate" in used:
        c.ctstate = [bits(i for i, f in live_entries if all(m >> slot & 1 for m in f.ctstate))
                     for slot in range(ct_slots())]
        c.fast_slots, c.fast_counter = fast_path(entries)
    if "icmp" in used:
        c.icmp = icmp_table(live, live_entries)
        shape.icmp_max = len(c.icmp)
    if min_shape is not None:
        c.shape = min_shape.union(shape)
        if -(-needed // c.shape.steps) > MAX_CHUNKS:   # fewer steps with min_shape's fields
            raise NotSupported(f"more than {MAX_CHUNKS * c.shape.steps - nwords - 2} "
                               "non-terminating rules in one chain in the eBPF data path")
        check_stateful_calls(c.shape, c.shape.steps)
        fill_unused(c)
    if keep is not None:
        rec = _flat.get(hook)
        if rec is not None:
            rec.tables = keep
            c.serial = rec.serial = next(_serials)
            c.edit = edit
    return c


@dataclass
class _Flat:
    """The last compile of a hook chain that inlined to one plain entry per
    rule (Walked.flat: ACCEPT, DROP or no target; no user chain, RETURN,
    REJECT, LOG, stateful, conntrack or set match, no hot-drop guard
    entry), kept so that one rule added, removed or replaced (-A, -D, -I,
    -R) patches it instead of walking every rule again: entries after the
    edit move by one (their ``next`` and counter slot too), and every
    counter slot by the move of the chain's first slot (an edit of an
    earlier chain). Rules are told apart by identity (compile_chain's
    ``trust_identity``). The policy entry is not kept (made per compile)."""

    rules: list[Rule]                    # the chain's rules as compiled
    base: int                            # their first counter slot
    nf: bool                             # made for --mode netfilter's conntrack layout
    entries: list[Entry]                 # one per rule, next resolved
    live_index: list[int]                # entries not statically false
    live_fields: list[EntryFields]
    uses: dict[frozenset[str], int]      # fields in use -> live entries (the policy's too)
    nonterminal: int                     # entries a scan may pass by
    live: int                            # bits(live_index)
    l4: "int | None" = None              # the live entries with ports (f.l4), once asked
    # the last compile's derivable field tables (Derived), taken out by
    # _patched with the edit that turns them into this compile's: a
    # compile that fails between the two leaves none (full build next)
    tables: "Derived | None" = None
    edit: "Edit | None" = None
    serial: int = 0                      # the last compile's Compiled.serial


# hook -> its last flat compile
_flat: dict[str, _Flat] = {}
_serials = count(1)


def _remember_flat(table: Table, hook: str, slots: dict[tuple[str, int], int],
                   entries: list[Entry], live_index: list[int], live_fields: list[EntryFields],
                   uses: dict[frozenset[str], int], nonterminal: int, live: int) -> None:
    # (the policy, the last entry, is always live and never passed by)
    n = len(entries) - 1
    _flat[hook] = _Flat(list(table.chains[hook].rules), slots.get((hook, 0), 0), nf_conntrack(),
                        entries[:-1], live_index[:-1], live_fields[:-1], uses, nonterminal,
                        live & ~(1 << n))


def _l4_of(hook: str, flat: "_Flat | None", live_entries: list[tuple[int, EntryFields]]) -> int:
    """The live entries with ports, from the patched record when it knows
    them; kept in the hook's record for the next patch."""
    if flat is not None and flat.l4 is not None:
        return flat.l4
    l4 = bits(i for i, f in live_entries if f.l4)
    rec = _flat.get(hook)
    if rec is not None and rec.l4 is None:
        rec.l4 = l4   # (the policy has no ports)
    return l4


def _shift_in(x: int, k: int, bit: bool) -> int:
    """Bit ``bit`` inserted at ``k`` into the bitvector ``x``."""
    return ((x >> k) << (k + 1)) | (x & ((1 << k) - 1)) | (int(bit) << k)


def _shift_out(x: int, k: int) -> int:
    """Bit ``k`` removed from the bitvector ``x``."""
    return ((x >> (k + 1)) << k) | (x & ((1 << k) - 1))


def single_edit(old: list, new: list) -> "tuple[str, int] | None":
    """How ``new`` differs from ``old`` by identity: ("same", 0), ("insert",
    k), ("delete", k) or ("replace", k); None: more than one rule. (C-level
    passes: ~0.1 ms at 10k rules.)"""
    n, m = len(old), len(new)
    if abs(n - m) > 1:
        return None
    k = first_difference(old, new, min(n, m))
    if m == n + 1:
        return ("insert", k) if all(map(is_, islice(old, k, None), islice(new, k + 1, None))) \
            else None
    if m == n - 1:
        return ("delete", k) if all(map(is_, islice(old, k + 1, None), islice(new, k, None))) \
            else None
    if k == n:
        return ("same", 0)
    return ("replace", k) if all(map(is_, islice(old, k + 1, None), islice(new, k + 1, None))) \
        else None


def _flat_entry(rule: Rule, hook: str, counter: int, index: int) -> Entry | None:
    """``rule``'s entry at ``index`` in a flat chain; None: it needs the walk."""
    target = rule.target
    if target.data is not None or target.goto:
        return None
    verdict = VERDICTS.get(target.name)
    if verdict is None:
        if target.name != "":
            return None   # a user chain, RETURN
        verdict = VERDICT_CONTINUE
    cache = _fields_cache.setdefault(hook, FieldsCache())
    hit = cache.by_id.get(id(rule))
    if hit is not None and hit[0] is rule:
        d = hit[2]
    else:
        key = rule_key(rule)
        d = cache.by_rule.get(key) or decomposed([rule], hook)
        # (the next full walk finds it by identity)
        cache.by_id[id(rule)] = (rule, key, d)
    if not d.plain or d.fields.sets:
        return None
    return Entry(d.fields, counter, verdict, index + 1, d.tcp)


def _renumber(entries: list[Entry], lo: int, hi: int, slots: int, index: int) -> None:
    """Entries [lo, hi) move ``slots`` counter slots and ``index`` places."""
    if index:
        for e in islice(entries, lo, hi):
            e.counter += slots
            e.next += index   # type: ignore[operator]
    elif slots:
        for e in islice(entries, lo, hi):
            e.counter += slots


def _passed_by(e: Entry) -> bool:
    """Whether a scan may go on past ``e`` (_compile_chain's nonterminal)."""
    f = e.fields
    checks = f.checks
    return (e.verdict == VERDICT_CONTINUE or bool(e.need or e.limit or e.hashlimit or e.recent
            or e.set_mask) or bool(checks if checks is not None else f.has_checks()))


def _count(rec: _Flat, e: Entry, k: int, sign: int) -> None:
    """Entry ``e`` at ``k`` enters (sign 1) or leaves (-1) the live lists and counts;
    the live indices from ``k`` on move by ``sign``."""
    li = rec.live_index
    pos = bisect_left(li, k)
    f = e.fields
    live = not f.never
    if sign > 0:
        li[pos:] = ([k] if live else []) + list(map((1).__add__, islice(li, pos, None)))
        if live:
            rec.live_fields.insert(pos, f)
        rec.live = _shift_in(rec.live, k, live)
        if rec.l4 is not None:
            rec.l4 = _shift_in(rec.l4, k, live and f.l4)
    else:
        li[pos:] = list(map((-1).__add__, islice(li, pos + live, None)))
        if live:
            del rec.live_fields[pos]
        rec.live = _shift_out(rec.live, k)
        if rec.l4 is not None:
            rec.l4 = _shift_out(rec.l4, k)
    if live:
        u = f.used
        if u is None:
            u = frozenset(f.uses())
        left = rec.uses.get(u, 0) + sign
        if left:
            rec.uses[u] = left
        else:
            del rec.uses[u]
    if _passed_by(e):
        rec.nonterminal += sign


def _patched(table: Table, hook: str, slots: dict[tuple[str, int], int]) -> _Flat | None:
    """The last flat compile of ``hook`` patched to the chain's rules now,
    when they differ by at most one rule that itself fits a flat chain; None:
    walk (the record is then dropped)."""
    rec = _flat.get(hook)
    if rec is None or rec.nf != nf_conntrack():
        return None
    rules = table.chains[hook].rules
    edit = single_edit(rec.rules, rules)
    if edit is None or len(rules) >= MAX_ENTRIES:
        return None
    kind, k = edit
    base = slots.get((hook, 0), rec.base)   # (an empty chain: nothing to number)
    moved = base - rec.base
    entries = rec.entries
    new = None
    if kind in ("insert", "replace"):
        new = _flat_entry(rules[k], hook, base + k, k)
        if new is None:
            return None
    # (nothing can fail from here on)
    gone = entries[k] if kind in ("delete", "replace") else None
    rec.edit = Edit(kind, k, gone, new, rec.tables, moved, rec.serial)
    rec.tables = None
    if kind == "insert":
        assert new is not None
        _renumber(entries, 0, k, moved, 0)
        _renumber(entries, k, len(entries), moved + 1, 1)
        entries.insert(k, new)
        _count(rec, new, k, 1)
    elif kind == "delete":
        gone = entries.pop(k)
        _renumber(entries, 0, k, moved, 0)
        _renumber(entries, k, len(entries), moved - 1, -1)
        _count(rec, gone, k, -1)
    else:
        _renumber(entries, 0, len(entries), moved, 0)
        if new is not None:
            _count(rec, entries[k], k, -1)
            entries[k] = new
            _count(rec, new, k, 1)
    rec.rules = list(rules)
    rec.base = base
    return rec


def fast_path(entries: list[Entry]) -> tuple[int, int]:
    """(slots, counter) when the first entry accepts on its conntrack slot
    alone (``-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`` first
    in the chain): the first matching entry for every packet with such a
    slot, so the classifier may accept those packets before looking up any
    other field (counted in the rule's own slot). (0, 0): no fast path."""
    if not entries or nf_conntrack():
        return 0, 0   # (--mode netfilter: no fast path, its slots need more than 64 bits)
    e = entries[0]
    f = e.fields
    if (f.never or f.uses() != {"ctstate"} or e.verdict != VERDICTS["ACCEPT"] or e.tcp
            or e.limit or e.hashlimit or e.recent or e.need or e.set_mask or f.src.residual
            or f.dst.residual or f.mark):
        return 0, 0
    slots = (1 << CTSTATES) - 1
    for m in f.ctstate:
        slots &= m
    return slots, e.counter


def check_stateful_calls(shape: Shape, steps: int) -> None:
    """Each -m hashlimit or -m recent candidate costs two tail calls (to its
    program, xdp_hashlimit or xdp_recent, and back; the resumed scan starts
    a fresh invocation): they come out of the same 31 as the scan's
    continuations (a packet meets each such entry at most once). The same
    sum (Shape.invocations) decides whether a loaded program covers a rule
    set and how far the verifier's E2BIG retries may cut the steps."""
    if shape.stateful and shape.invocations(steps) > MAX_CHUNKS:
        scan = -(-shape.scan_steps // steps)
        raise NotSupported(f"{shape.stateful} rules with `hashlimit' or `recent' (after inlining) "
                           "in one chain in the eBPF data path (at most "
                           f"{max(0, (MAX_CHUNKS - scan) // 2)} here: each costs "
                           "two of the kernel's 33 tail calls)")


def shared_limits(table: Table) -> None:
    """Refuse a limit rule in a user chain that more than one of INPUT,
    FORWARD and OUTPUT reaches: the kernel keeps one bucket per rule, the
    data path one per rule and classifier."""
    reach: dict[str, set[str]] = {}
    for hook in ("INPUT", "FORWARD", "OUTPUT"):
        if hook not in table.chains:
            continue
        seen: set[str] = set()
        todo = [hook]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(r.target.name for r in table.chains[name].rules
                        if r.target.is_standard and r.target.name in table.chains)
        for name in seen:
            reach.setdefault(name, set()).add(hook)
    for name, hooks in reach.items():
        if len(hooks) > 1 and any(m.name == "limit" for r in table.chains[name].rules
                                  for m in r.matches):
            both = " and ".join(sorted(hooks))
            raise NotSupported(f"match `limit' in chain `{name}', which {both} both reach, "
                               "in the eBPF data path (one bucket per hook there)")


CONNTRACK_MATCHES = ("conntrack", "state")


def uses_conntrack(table: Table, skip: "set[str] | frozenset[str]" = frozenset()) -> bool:
    """Whether any rule of the table matches on conntrack: then the
    namespace tracks connections (as netfilter registers its tracker in a
    namespace once a rule needs it), in every hook. ``skip``: chains known
    not to (inline's Walked: their rules' decompositions said so)."""
    # (loops, not a generator: ~10k rules per update)
    for name, chain in table.chains.items():
        if name in skip:
            continue
        for r in chain.rules:
            for m in r.matches:
                if m.name in CONNTRACK_MATCHES:
                    return True
    return False


def uses_addrtype(table: Table) -> bool:
    return any(m.name == "addrtype"
               for chain in table.chains.values() for r in chain.rules for m in r.matches)


def fill_unused(c: Compiled) -> None:
    """Fields compiled into a reused program that this rule set does not
    use: one all-entries bitvector, so they do not constrain anything."""
    live = c.live
    if "src" in c.shape.fields and c.src_iv is None:
        c.src_iv = _intervals([(0, 0)], [live])
    if "dst" in c.shape.fields and c.dst_iv is None:
        c.dst_iv = _intervals([(0, 0)], [live])
    if "proto" in c.shape.fields and not c.proto:
        c.proto = {PROTO_DEFAULT: live}
    if "iif" in c.shape.fields and not c.iif:
        c.iif = {0: live}
    if "oif" in c.shape.fields and not c.oif:
        c.oif = {0: live}
    if "frag" in c.shape.fields and not c.frag:
        c.frag = [live, live]
    if "flags" in c.shape.fields and not c.flags:
        c.flags = [live] * (TCP_FLAGS_EVIL + 1)
    if ("sport" in c.shape.fields and not c.sport) or ("dport" in c.shape.fields and not c.dport):
        # (only then: a pass over every entry, and fit() runs at every update)
        l4 = bits(i for i, e in enumerate(c.entries) if not e.fields.never and e.fields.l4)
        if "sport" in c.shape.fields and not c.sport:
            c.sport_bounds, c.sport = [0], [live, live & ~l4, live]
        if "dport" in c.shape.fields and not c.dport:
            c.dport_bounds, c.dport = [0], [live, live & ~l4, live]
    if "length" in c.shape.fields and not c.length:
        c.length_bounds, c.length = [0], [live]
    if "ports" in c.shape.fields and not c.ports_s:
        c.ports_s, c.ports_d = [live] * len(c.sport), [live] * len(c.dport)
    if "mac" in c.shape.fields and not c.mac:
        c.mac = {MAC_OTHER: live, MAC_NONE: live}
    if "pkttype" in c.shape.fields and not c.pkttype:
        c.pkttype = [live] * PKTTYPES
    if "ctstate" in c.shape.fields and not c.ctstate:
        c.ctstate = [live] * ct_slots()
    if "tos" in c.shape.fields and not c.tos:
        c.tos = [live] * 256
    if "ttl" in c.shape.fields and not c.ttl:
        c.ttl_bounds, c.ttl = [0], [live]
    if "icmp" in c.shape.fields and not c.icmp:
        c.icmp = {ICMP_OTHER: live, ICMP_NONE: live}
    if "atcheck" in c.shape.fields and not c.atype_lpm:
        # every lookup must find something (/0): no entry tests it
        c.atype_lpm = [(0, 0, addrtypes.RTN_UNICAST, addrtypes.ANY_DEVICE)]


def grouped(live_entries: list[tuple[int, object]], key: Callable[[object], object]
            ) -> list[tuple[object, int]]:
    """The entries as (key, bitvector of the entries with that key), in
    order of first appearance: a table computes each value's bitvector
    from the few distinct constraints instead of from every entry."""
    groups: dict[object, list[int]] = {}
    get = groups.get
    # (the keys by map(): an attrgetter key runs in C, ~10k entries)
    for (i, _), k in zip(live_entries, map(key, [f for _, f in live_entries])):
        members = get(k)
        if members is None:
            groups[k] = [i]
        else:
            members.append(i)
    return [(k, bits(members)) for k, members in groups.items()]


def union(groups: list[tuple[object, int]], holds: Callable[[object], bool]) -> int:
    """The entries of the groups whose key satisfies ``holds``."""
    v = 0
    for k, vec in groups:
        if holds(k):
            v |= vec
    return v


# grouping keys (fields.py builds proto_not and negative as tuples only)
_PROTO_KEY = attrgetter("proto", "proto_not")
_RANGE_KEY = attrgetter("positive", "negative")


def proto_table(live: int, live_entries: list[tuple[int, EntryFields]]) -> dict[int, int]:
    groups = grouped(live_entries, _PROTO_KEY)
    protos = {PROTO_DEFAULT}
    for (proto, nots), _ in groups:
        if proto is not None:
            protos.add(proto)
        protos.update(nots)
    return {p: union(groups, lambda k: k[0] in (None, p) and p not in k[1]) & live
            for p in protos}


def iif_table(live: int, live_entries: list[tuple[int, EntryFields]],
              interfaces: dict[str, int],
              patterns: Callable[[EntryFields], list[tuple[str, bool]]] = lambda f: f.iif
              ) -> dict[int, int]:
    """ifindex -> entries whose interface patterns (-i, or ``patterns``:
    FORWARD's -o) hold for that interface's name."""
    def holds(pats: tuple[tuple[str, bool], ...], name: str | None) -> bool:
        # name None: an interface unknown at compile time matches no pattern
        return all((name is not None and iface_matches(pat, name)) != inv for pat, inv in pats)

    groups = grouped(live_entries, lambda f: tuple(patterns(f)))
    table = {0: union(groups, lambda k: holds(k, None))}
    for name, index in interfaces.items():
        table[index] = union(groups, lambda k: holds(k, name))
    return table


def frag_table(live_entries: list[tuple[int, EntryFields]]) -> list[int]:
    """[not a fragment, a non-first fragment] -> entries."""
    groups = grouped(live_entries, lambda f: f.fragment)
    return [union(groups, lambda k: k is not True), union(groups, lambda k: k is not False)]


def flags_table(live: int, live_entries: list[tuple[int, EntryFields]]) -> list[int]:
    groups = grouped(live_entries, lambda f: tuple(f.flags))
    out = [union(groups, lambda k: all(((flags & m) == cmp) != inv for m, cmp, inv in k))
           for flags in range(TCP_FLAGS_NONE)]
    # no TCP header: only entries without a flags test (the others need tcp anyway)
    out.append(union(groups, lambda k: not k))
    out.append(live)  # offset-1 TCP fragment: tcp entries hot-drop before any test
    return out


def icmp_table(live: int, live_entries: list[tuple[int, EntryFields]]) -> dict[int, int]:
    """type << 8 | code -> entries, for every code of every listed type;
    ICMP_OTHER for the other types, ICMP_NONE without an ICMP header (only
    entries without an icmp constraint)."""
    groups = grouped(live_entries, lambda f: tuple(f.icmp))
    types = sorted({t for k, _ in groups for t, _, _, _ in k if t != ICMP_ANY})

    def holds(tests, itype: int, code: int) -> bool:
        return all((t == ICMP_ANY or (t == itype and lo <= code <= hi)) != inv
                   for t, lo, hi, inv in tests)

    table = {ICMP_OTHER: union(groups, lambda k: holds(k, -1, 0)),
             ICMP_NONE: union(groups, lambda k: not k)}
    for t in types:
        for code in range(256):
            table[t << 8 | code] = union(groups, lambda k: holds(k, t, code))
    return table


def tos_table(live_entries: list[tuple[int, EntryFields]]) -> list[int]:
    """One bitvector per TOS byte value (xt_tos, xt_dscp)."""
    groups = grouped(live_entries, lambda f: tuple(f.tos))
    return [union(groups, lambda k: all(((tos & m) == v) != inv for m, v, inv in k))
            for tos in range(256)]


def mac_table(live_entries: list[tuple[int, EntryFields]]) -> dict[int, int]:
    """Source MAC -> entries, for every listed MAC; MAC_OTHER for the other
    addresses, MAC_NONE for a device without an Ethernet header (xt_mac
    is false there, even inverted: only entries without a mac test)."""
    def holds(tests, mac: int) -> bool:
        return all((mac == a) != inv for a, inv in tests)

    groups = grouped(live_entries, lambda f: tuple(f.mac))
    # the same insertion order as listing every entry's addresses (the
    # set's iteration order is the hash map's key order)
    macs = {a for k, _ in groups for a, _ in k}
    table = {MAC_OTHER: union(groups, lambda k: holds(k, -1)),
             MAC_NONE: union(groups, lambda k: not k)}
    for m in macs:
        table[m] = union(groups, lambda k: holds(k, m))
    return table


def pkttype_table(live_entries: list[tuple[int, EntryFields]]) -> list[int]:
    groups = grouped(live_entries, lambda f: tuple(f.pkttype))
    return [union(groups, lambda k: all((t == slot) != inv for t, inv in k))
            for slot in range(PKTTYPES)]


# --- field tables of a single edit, derived from the previous compile's ---
#
# A patched single edit (_patched) inserts and/or removes one entry at
# position k: every table of the previous compile becomes "its bitvectors
# with bit k inserted (the new entry's, per row: whether its constraint
# holds there) or removed", plus, for interval tables, the cuts the new
# entry brings (the interval it splits copied first) or the cuts only the
# removed entry made (the two intervals, equal once its bit is gone,
# merged). Derived keeps what that needs beside the tables themselves: how
# many live entries cut at each boundary, and which protocols entries name.
# The result equals range_table / proto_table of the whole chain
# (tests/test_datapath_derive.py).


@dataclass
class Edit:
    """What _patched changed: ``gone`` left and/or ``new`` came at ``k``
    ("same": neither), and the tables of the compile before it."""

    kind: str
    k: int
    gone: "Entry | None"
    new: "Entry | None"
    tables: "Derived | None"
    moved: int = 0     # every counter slot's move (an edit of an earlier chain)
    serial: int = 0    # the Compiled.serial of the compile before it


@dataclass
class RangeState:
    """range_table's result and, per boundary, the live entries cutting there
    (with multiplicity: an entry cutting twice at b counts twice)."""

    bounds: list[int]
    vectors: list[int]
    cuts: dict[int, int]


@dataclass
class Derived:
    """The derivable tables of one compile (field name -> its state); the
    protocol table with, per protocol named, the live entries naming it."""

    ranges: dict[str, RangeState] = field(default_factory=dict)
    proto: "dict[int, int] | None" = None
    proto_refs: dict[int, int] = field(default_factory=dict)
    addresses: "dict[str, AddressState]" = field(default_factory=dict)


def _range_holds(r: RangeField, v: int) -> bool:
    """Whether ``r`` holds on the interval starting at ``v`` (cut at every
    boundary of ``r``: holding at its start is holding on all of it)."""
    pos = r.positive
    if pos and not pos[0] <= v <= pos[1]:
        return False
    return not any(lo <= v <= hi for lo, hi in r.negative)


def range_state(live: int, per_entry: list[tuple[int, RangeField]], top: int) -> RangeState:
    """range_table (no extra cuts) with its boundary counts."""
    groups = grouped(per_entry, _RANGE_KEY)
    cuts: dict[int, int] = {}
    for (positive, negative), vec in groups:
        count = vec.bit_count()
        for c in range_cuts(positive, negative, top):
            cuts[c] = cuts.get(c, 0) + count
    bounds, vectors = range_table(live, per_entry, top, groups=groups)
    return RangeState(bounds, vectors, cuts)


def derive_range(prev: RangeState, edit: Edit, name: str, top: int) -> RangeState:
    """``prev`` after ``edit`` (a new list; ``prev`` is left as it was)."""
    k = edit.k
    bounds, vectors, cuts = prev.bounds, prev.vectors, prev.cuts
    gone, new = edit.gone, edit.new
    if gone is not None:
        vectors = [_shift_out(v, k) for v in vectors]
        if not gone.fields.never:
            cuts = dict(cuts)
            merged = []
            gone_r = getattr(gone.fields, name)
            for c in range_cuts(gone_r.positive, gone_r.negative, top):
                left = cuts[c] - 1
                if left:
                    cuts[c] = left
                else:
                    del cuts[c]
                    if c:   # (0 is always a boundary)
                        merged.append(c)
            if merged:
                bounds = list(bounds)
                for c in set(merged):
                    at = bisect_left(bounds, c)
                    # no live entry tells the two intervals apart any more
                    assert bounds[at] == c
                    del bounds[at], vectors[at]
    if new is not None:
        f = new.fields
        if f.never:
            vectors = [_shift_in(v, k, False) for v in vectors]
        else:
            r = getattr(f, name)
            mine = range_cuts(r.positive, r.negative, top)
            if mine:
                if cuts is prev.cuts:
                    cuts = dict(cuts)
                for c in mine:
                    had = cuts.get(c, 0)
                    cuts[c] = had + 1
                    if not had and c:
                        at = bisect_left(bounds, c)
                        if at == len(bounds) or bounds[at] != c:
                            # a new boundary splits the interval holding c
                            if bounds is prev.bounds:
                                bounds = list(bounds)
                            if vectors is prev.vectors:
                                vectors = list(vectors)
                            bounds.insert(at, c)
                            vectors.insert(at, vectors[at - 1])
            if not mine:
                # no constraint: the entry holds everywhere
                vectors = [_shift_in(v, k, True) for v in vectors]
            else:
                vectors = [_shift_in(v, k, _range_holds(r, b)) for v, b in zip(vectors, bounds)]
    return RangeState(bounds, vectors, cuts)


def proto_refs_of(live_entries: list[tuple[int, EntryFields]]) -> dict[int, int]:
    """Per protocol number an entry names (proto or ! proto), the live
    entries naming it (with multiplicity)."""
    refs: dict[int, int] = {}
    for (proto, nots), vec in grouped(live_entries, _PROTO_KEY):
        count = vec.bit_count()
        for p in ([proto] if proto is not None else []) + list(nots):
            refs[p] = refs.get(p, 0) + count
    return refs


def _proto_names(f: EntryFields) -> list[int]:
    return ([f.proto] if f.proto is not None else []) + list(f.proto_not)


def derive_proto(prev: dict[int, int], refs: dict[int, int], edit: Edit
                 ) -> tuple[dict[int, int], dict[int, int]]:
    """proto_table after ``edit`` and its refs (new dicts). A protocol no
    entry names has PROTO_DEFAULT's row (PROTO_DEFAULT is no protocol:
    no entry names it), so one named first copies that row; one no longer
    named leaves (its row is then PROTO_DEFAULT's again)."""
    k = edit.k
    table, refs = dict(prev), dict(refs)
    gone, new = edit.gone, edit.new
    if gone is not None:
        table = {p: _shift_out(v, k) for p, v in table.items()}
        if not gone.fields.never:
            for p in _proto_names(gone.fields):
                left = refs[p] - 1
                if left:
                    refs[p] = left
                else:
                    del refs[p], table[p]
    if new is not None:
        f = new.fields
        if f.never:
            table = {p: _shift_in(v, k, False) for p, v in table.items()}
        else:
            for p in _proto_names(f):
                if p not in refs:
                    table[p] = table[PROTO_DEFAULT]
                refs[p] = refs.get(p, 0) + 1
            proto, nots = f.proto, f.proto_not
            table = {p: _shift_in(v, k, proto in (None, p) and p not in nots)
                     for p, v in table.items()}
    return table, refs


@dataclass
class AddressState:
    """What prefix_rows made an address table's tree from (no entry negates
    a prefix): the live entries with a positive prefix (ascending) and
    their prefixes' codes, the same entries as an int, per prefix the
    entries naming it, the prefixes (with 0/0) and their layout."""

    nwords: int
    pos_e: "Any"
    pos_code: "Any"
    posbits: int
    refs: dict
    keys: set
    layout: "_Layout"


def derive_address(prev: AddressState, edit: Edit, name: str, live: int, nwords: int
                   ) -> "tuple[Intervals, AddressState] | None":
    """The address table after ``edit`` from ``prev`` (left as it was): the
    entry lists renumbered, the edited entry's prefix counted in or out
    (the layout looked up again only when the set of prefixes changed),
    the tree made from them as prefix_rows makes it. None (a full build):
    another width, or the new entry negates a prefix."""
    import numpy as np

    if nwords != prev.nwords:
        return None
    k = edit.k
    pos_e, code, posbits, refs, keys = prev.pos_e, prev.pos_code, prev.posbits, prev.refs, prev.keys
    gone, new = edit.gone, edit.new
    changed: list[tuple[tuple[int, int], bool]] = []   # prefixes removed / added, in turn
    if gone is not None:
        f = gone.fields
        p = None if f.never else getattr(f, name).positive
        if p is not None:
            i = int(np.searchsorted(pos_e, k))
            pos_e, code = np.delete(pos_e, i), np.delete(code, i)
            refs = dict(refs)
            left = refs[p] - 1
            if left:
                refs[p] = left
            else:
                del refs[p]
                if p != ROOT:
                    keys = keys - {p}
                    changed.append((p, False))
        pos_e = pos_e - (pos_e > k)
        posbits = _shift_out(posbits, k)
    if new is not None:
        f = new.fields
        pf = None if f.never else getattr(f, name)
        if pf is not None and pf.negative:
            return None
        p = pf.positive if pf is not None else None
        pos_e = pos_e + (pos_e >= k)
        posbits = _shift_in(posbits, k, p is not None)
        if p is not None:
            i = int(np.searchsorted(pos_e, k))
            pos_e, code = np.insert(pos_e, i, k), np.insert(code, i, p[0] << 6 | p[1])
            if refs is prev.refs:
                refs = dict(refs)
            refs[p] = refs.get(p, 0) + 1
            if p not in keys:
                keys = keys | {p}
                changed.append((p, True))
    layout = prev.layout if keys is prev.keys else _layout_after(prev.layout, keys, changed)
    at = np.searchsorted(layout.codes, code)
    tree = _tree_rows(layout, at, pos_e, int_words(live & ~posbits, nwords), nwords)
    return _address_iv(layout, None, tree), AddressState(nwords, pos_e, code, posbits, refs,
                                                         keys, layout)
