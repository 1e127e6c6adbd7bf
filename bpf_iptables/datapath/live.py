"""The data path of an attached namespace: attach, update, counters, repair, detach.

Root programs (bpf/root.c) are attached once per interface and stay
(links.py). Two generations of classifiers are pinned (generation.py);
the roots tail-call the one named by the active word. An update:

1. compiles the new rule set (``NotSupported``, exit 2: nothing changed);
2. prepares the inactive generation: map-only when its programs' shapes
   cover the new ones, else new programs compiled with bcc (a failure,
   exit 1, leaves the active generation and the stored rule set as they
   were: the inactive one is never seen by a packet);
3. fills the inactive generation's prog array slots and counters (what
   the active programs counted since this command read them is added);
4. attaches the roots to interfaces that appeared (and forgets vanished ones);
5. writes the record with ``pending`` (the previous record and the
   stored rule set's generation), flips the active word — every interface
   and hook switch at once —, stores the rule set, clears ``pending``.

A call that dies between steps leaves either an unused inactive
generation (rewritten in full by the next update; programs the record
does not name are unpinned) or a ``pending`` record, which the next call
resolves (``recover``): if the rule set was stored it flips forward,
otherwise back; either way data path, record and stored rule set agree
again, and the call says so on stderr.

Counters: every invocation shows the data path's counters (``load()``
overlays them on the stored rule set), so commands move, keep and zero
them exactly as they do stored counters (they follow their rule through
-I, -D, -R of other rules, -E, ...). The new generation starts from those
values, plus what the old one counted while the new one was being
prepared (read again just before the flip, when preparing took longer
than ``REREAD_AFTER``); what the old generation counts between that read
(or load()'s) and the flip is read after the flip and kept in the record
(``carry``), added by every read and folded in by the next update. A
quick update skips the read before the flip (one batch read of every
slot, ~3.5 ms at 10k rules): the carry then holds what was counted
since load(), a few slots unless traffic hit many rules meanwhile."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from ..errors import NotSupported, XtablesError, OTHER_PROBLEM
from ..model import Counters, RuleSet, Table
from . import attachment as A
from . import generation as G
from . import bridges
from . import counts as C
from . import hashlimit_tables as HL
from . import links
from . import support
from .sameness import first_difference
from .compiler import (FIRST_RULE_COUNTER, POLICY_COUNTER, Compiled, compile_chain,
                       uses_conntrack)

# --mode netfilter: no interfaces (nfmode.py links the roots at the hooks)
MODES = {**links.MODES, G.NETFILTER: 0}
# tests only: die (as a crash would) right after the named step of an update
DIE_AT = "BPF_IPTABLES_DATAPATH_DIE_AT"


class DatapathError(XtablesError):
    def __init__(self, message: str):
        super().__init__(message, OTHER_PROBLEM)


# tests only: "step:seconds:file", touch file and sleep there (so that a
# test can put packets into the window after that step)
PAUSE_AT = "BPF_IPTABLES_DATAPATH_PAUSE_AT"


# the last update's steps (name -> seconds, in order): the server logs them
STEPS: dict[str, float] = {}
# seconds since load() after which the counters are read again before the
# flip (the carry in the record then stays small after a slow update)
REREAD_AFTER = 0.25


class _Clock:
    """Times the steps of an update into STEPS (a perf_counter per step)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        STEPS[name] = STEPS.get(name, 0.0) + now - self.t
        self.t = now


def _maybe_die(step: str) -> None:
    if os.environ.get(DIE_AT) == step:
        os._exit(137)
    where, seconds, marker = (os.environ.get(PAUSE_AT, "") + "::").split(":")[:3]
    if where == step:
        Path(marker).touch()
        time.sleep(float(seconds))


# monotonic time at which the latest completed RCU grace period began
# (grace_period()): a long-lived process (the command server) waits for
# one while idle after a switch, so the next update need not
_grace_began = 0.0


def grace_period() -> None:
    """Wait for an RCU grace period now (membarrier, as G.quiesce does)."""
    global _grace_began
    began = time.monotonic()
    G._libc.syscall(G.SYS_MEMBARRIER, G.MEMBARRIER_CMD_GLOBAL, 0, 0)
    _grace_began = began


# the grace period the command server waits for after a switch, in a
# thread (grace_start), so that the next request's load, compile and
# images overlap it. Whatever writes the old generation's maps or takes
# its counters as final joins it first (grace_join: settle, quiesce).
_grace_thread: threading.Thread | None = None


def grace_start(done: Callable[[], None] | None = None) -> None:
    """Start waiting for a grace period in a thread (membarrier blocks in
    the kernel without the GIL); ``done`` is called by the thread when it
    ends (the server's wake-up). A grace already under way is joined first
    (it may have begun before the latest switch)."""
    global _grace_thread
    grace_join()
    u = _unsettled

    def run() -> None:
        try:
            grace_period()
            if u is not None:
                _read_final(u)
        except Exception:   # (OSError; settle then reads and computes them itself)
            pass
        finally:
            if done is not None:
                done()

    thread = threading.Thread(target=run, name="grace", daemon=True)
    thread.start()
    _grace_thread = thread


def grace_pending() -> bool:
    """Whether a grace period was started in a thread and not joined yet."""
    return _grace_thread is not None


def grace_running() -> bool:
    return _grace_thread is not None and _grace_thread.is_alive()


def grace_join() -> None:
    """Wait for the grace period under way (grace_start), if any; the wait
    is added to STEPS["grace:wait"] (0 when it had ended: no cost)."""
    global _grace_thread
    thread, _grace_thread = _grace_thread, None
    if thread is None:
        return
    began = time.perf_counter()
    thread.join()
    STEPS["grace:wait"] = STEPS.get("grace:wait", 0.0) + time.perf_counter() - began


def _read_final(u: "Unsettled") -> None:
    """In the grace thread, once no packet runs the old generation: its
    counters, which nothing changes any more (the next update writes
    that generation only after joining this thread, and the lock is
    held), read and then zeroed for the next update (settle, without the
    thread). Only the old generation's maps and ``u`` are touched: the
    main thread reads neither before grace_join."""
    u.final = _read_counts(u.directory, u.old)
    # (reads only ``u``'s values: the rule lists and slots of its update)
    u.carry = residual(u.now, u.final, u.old_to_new, u.hooks)
    u.zeroed = _zero_old(u)


def _zero_old(u: "Unsettled") -> bool:
    """Zero the old generation's counter maps for the next update, when no
    packet can run it any more (a grace period began after the switch and
    ended) and its record is final; whether it did. OSError: not zeroed."""
    if u.new.pending is not None or _grace_began <= u.new.switched_at:
        return False
    old = u.old.active
    G.zero_counters(u.directory, old, list(u.new.slots[old].get("hooks", {})))
    return True


def quiesce(att: A.Attachment) -> None:
    """G.quiesce, unless a grace period began after the last switch and
    ended: then no packet still runs the generation about to be rewritten."""
    grace_join()
    if _grace_began <= att.switched_at:
        G.quiesce(att)


def bpfsys_id(pin: Path) -> int:
    """The id of the program pinned at ``pin`` (0: none)."""
    from . import bpfsys
    return bpfsys.pinned_id(str(pin))


def interfaces_here() -> dict[str, int]:
    return {name: index for index, name in socket.if_nameindex()}


def needs(table: Table, hook: str, conntrack: Callable[[], bool] | None = None) -> bool:
    """Whether a hook chain can change a packet's fate or count anything:
    without rules and with policy ACCEPT it needs no program. When the rule
    set tracks connections every hook needs one: the tracker must see the
    packets of both directions (a server's replies leave through OUTPUT).
    ``conntrack``: uses_conntrack(table), remembered by the caller (a scan
    of every rule, made only for an empty chain)."""
    chain = table.chains.get(hook)
    if chain is None:
        return False
    if chain.rules or (chain.policy or "ACCEPT") != "ACCEPT":
        return True
    tracks = conntrack() if conntrack is not None else uses_conntrack(table)
    return tracks and (hook != "FORWARD" or forwarding())


def forwarding() -> bool:
    try:
        return open("/proc/sys/net/ipv4/ip_forward").read().strip() != "0"
    except OSError:
        return True


def store_generation(store) -> int:
    """The stored rule set's generation (state.Store's ``current``) and
    its journal's size: tells a pending update whether its rule set was
    stored before it died (the command server stores an append as a
    journal record, which leaves ``current`` as it was)."""
    try:
        gen = int((store.directory / "current").read_text())
    except (OSError, ValueError):
        return 0
    try:
        size = os.stat(store.directory / f"journal-{gen}").st_size
    except OSError:
        size = 0
    return gen << 32 | size


# -- counters ---------------------------------------------------------------------

Counts = dict[str, C.Flat]   # hook -> its program's counters (counts.py)


# the command server (a process that stays) sets this: an update's carry
# (below) is read once the client has its answer, still under the lock
DEFER_CARRY = False


@dataclass
class Unsettled:
    """An update whose carry is still to be read: what the old generation
    (``old``'s active one) counted since ``now`` (the read whose values the
    new generation started from), for the record ``new``.

    Why later: the read of every slot of the old generation (one batch
    lookup per program, ~2.5 ms each at 10k rules) is a third of what an
    update spends outside compiling. Nothing writes the old generation
    until the next update prepares it, which settles first; every read of
    the counters settles first too (read_live); the command server settles
    after answering its client, before it lets go of the xtables lock
    (server.py), after an RCU grace period: the packets that were
    running the old generation at the switch are counted as well. That
    grace period runs in a thread (grace_start), which also reads
    ``final`` and computes ``carry``; the server's next request may take
    the lock over meanwhile and settles (joining the thread) once its
    update has built its images."""

    directory: Path
    old: A.Attachment
    new: A.Attachment
    now: "Counts"
    old_to_new: Callable[[], dict[int, int]]
    hooks: list[str]
    # read by the grace thread once the grace period ended (grace_start):
    # the old generation's final counters, and whether it zeroed them
    final: "Counts | None" = None
    zeroed: bool = False
    carry: "dict[str, dict[str, list[int]]] | None" = None   # residual() of final


_unsettled: Unsettled | None = None
# (state directory, record serial): the inactive generation's counter maps
# hold zeros (settle(zero=True)) as of that record; the next update, if
# it is that record's successor, writes only the slots with counts (a
# batch of every slot per program is ~2 ms at 10k rules)
_zeroed: tuple[str, int] | None = None


def unsettled() -> bool:
    return _unsettled is not None


# the record whose carry was settled last (adopt_carry)
_last_settled: A.Attachment | None = None
# the slots the last settled carry held: a load() that reads only the
# policies (laid_base) may see the record before the carry is written
# into it (the server's next request overlaps the grace period)
_carry_slots = 0


def settle(zero: bool = False) -> A.Attachment | None:
    """Read the carry of the last update, if not yet, into its record
    (returned; a caller holding an older copy of that record takes its
    carry: adopt_carry). A grace period under way (grace_start) is waited
    for first: the packets still running the old generation count too.
    A failed read or write loses it (a few packets at most, as a process
    dying before this would). ``zero``: the old generation's counter maps,
    read now, are zeroed for the next update, if a grace period began
    after the switch and ended (no packet runs the old generation)."""
    global _unsettled, _zeroed, _carry_slots, _last_settled
    grace_join()
    u, _unsettled = _unsettled, None
    if u is None:
        return None
    _last_settled = u.new
    try:
        if u.carry is not None:
            u.new.carry = u.carry   # (computed by the grace thread)
        else:
            final = u.final if u.final is not None else read_live(u.directory, u.old)
            u.new.carry = residual(u.now, final, u.old_to_new, u.hooks)
        _carry_slots = sum(map(len, u.new.carry.values()))
        if u.new.carry and u.new.pending is None:
            A.write(u.directory, u.new)   # (pending: the update writes the record itself)
    except OSError:
        return None
    try:
        if u.zeroed or (zero and _zero_old(u)):
            _zeroed = (str(u.directory), u.new.serial)
    except OSError:
        pass
    return u.new


def read_live(directory: Path, att: A.Attachment, nslots: int | None = None) -> Counts:
    """The live generation's counters, plus the record's carry (what the
    previous generation counted between the last read and the switch);
    with ``nslots``, only the first ones (1: the policies)."""
    settle()
    adopt_carry(att)
    return _read_counts(directory, att, nslots)


def adopt_carry(att: A.Attachment) -> None:
    """``att`` read before the carry of its update was settled into the
    record (the server's request that overlapped the grace period): the
    carry settled since is its record's."""
    s = _last_settled
    if s is not None and s is not att and s.serial == att.serial and s.active == att.active:
        att.carry = s.carry


def _read_counts(directory: Path, att: A.Attachment, nslots: int | None = None) -> Counts:
    """read_live without settling first."""
    hooks = att.live_hooks()
    looped = att.slots[att.active].get("hooks", {}).get(G.LOOPED)
    if looped and looped["on"] and "INPUT" in hooks:
        hooks.append(G.LOOPED)
    out = G.read_counters(directory, att.active, hooks,
                          att.ncounters if nslots is None else min(nslots, att.ncounters))
    if G.LOOPED in out:
        # the looped copies' INPUT (TC) counts as INPUT: same rules, same slots
        out["INPUT"] = C.add(out["INPUT"], out.pop(G.LOOPED))
    for hook, slots in att.carry.items():
        v = out.get(hook)
        if v is not None:
            for slot, (p, b) in slots.items():
                i = 2 * int(slot)
                if i < len(v):
                    v[i] += p
                    v[i + 1] += b
    return out


def residual(before: Counts, after: Counts, old_to_new: Callable[[], dict[int, int]],
             hooks: list[str]) -> dict[str, dict[str, list[int]]]:
    """What the old generation counted between ``before`` (the read whose
    values went into the new generation) and ``after`` (read once it was
    switched away), in the new generation's slots: rules in INPUT's,
    policies in their hook's."""
    carry: dict[str, dict[str, list[int]]] = {}
    for hook, now in after.items():
        was = before.get(hook, C.zeros(0))
        for old in C.changed(now, was):   # none: the usual case
            p, b = C.get(now, old)
            if 2 * old < len(was):
                p, b = p - was[2 * old], b - was[2 * old + 1]
            if not (p or b):
                continue
            if old == POLICY_COUNTER:
                target, slot = hook, POLICY_COUNTER
            else:
                target, slot = "INPUT", old_to_new().get(old)
            if target in hooks and slot is not None:
                acc = carry.setdefault(target, {}).setdefault(str(slot), [0, 0])
                acc[0] += p
                acc[1] += b
    return carry


def totals(values: Counts) -> C.Flat:
    """Per slot, the sum over the hooks' programs."""
    return C.total(list(values.values()))


class SlotOf:
    """id(rule object) -> counter slot of the rules a load() saw, built when
    first asked (an update asks only when traffic moved counters while it
    was prepared, or for its carry): 10k dict entries cost ~1 ms."""

    def __init__(self, spans: list[tuple[list, int]] | None = None,
                 kept: "tuple[list[str], C.Flat] | None" = None):
        self.spans = spans or []   # (the chain's rules then, its first slot)
        self.map: dict[int, int] | None = None
        # (the spans' chain names, the per-slot sums the spans' rules hold
        # and keep through the command: a -A, -I or -D, laid_base), from
        # which initial_counters derives the new rules' counters
        self.kept = kept

    def get(self, key: int, default: int | None = None) -> int | None:
        if self.map is None:
            self.map = {}
            for rules, first in self.spans:
                self.map.update(zip(map(id, rules), range(first, first + len(rules))))
        return self.map.get(key, default)


# the counters this process last laid on a rule set it keeps (the command
# server's cached one: CachedStore) or wrote from it (update): (that rule
# set, the record's serial, the values per hook, their per-slot sums). Its
# rules' counters still
# hold those sums unless a command changed them since, and such a command
# stores the rule set (whose update lays them anew) or fails (the server
# then drops that rule set): the next overlay() need set only the slots
# that counted since (a held reference: the rule set's id stays its own).
_laid: "tuple[RuleSet, int, Counts, C.Flat] | None" = None


def overlay(ruleset: RuleSet, att: A.Attachment, values: Counts) -> SlotOf:
    """Put the data path's counters on the rule set's rules (summed over
    the programs: a user chain may be reached from INPUT and OUTPUT) and
    on the policies of the hooks it runs; returns id(rule object) -> slot,
    to follow rules through a command."""
    global _laid
    table = ruleset.table("filter")
    sums = totals(values)
    spans = spans_of(table, att)
    laid = _laid
    if laid is not None and laid[0] is ruleset and laid[1] == att.serial \
            and len(laid[3]) == len(sums):
        moved = C.changed(sums, laid[3])   # a few slots, or none
        starts = [first for _, first in spans]   # increasing (counter_layout)
        for slot in moved:
            at = bisect_right(starts, slot) - 1
            if at >= 0 and slot - starts[at] < len(spans[at][0]):
                c = spans[at][0][slot - starts[at]].counters
                c.packets, c.bytes = C.get(sums, slot)
    else:
        for rules, first in spans:
            for rule, (packets, nbytes) in zip(rules, C.pairs(sums, first, len(rules))):
                c = rule.counters
                c.packets = packets
                c.bytes = nbytes
    _laid = (ruleset, att.serial, values, sums)
    lay_policies(table, values)
    return SlotOf(spans)


def spans_of(table: Table, att: A.Attachment) -> list[tuple[list, int]]:
    """(the chain's rules, its first slot) per chain of the record's layout."""
    return [(table.chains[chain].rules[:count] if chain in table.chains else [], first)
            for chain, count, first in att.counters]


def lay_policies(table: Table, values: Counts) -> None:
    for hook, v in values.items():
        policy = table.chains[hook].counters
        policy.packets, policy.bytes = C.get(v, POLICY_COUNTER)


# at most this many carried slots for a load() that reads only the
# policies (laid_base): past it the next update reads every slot, which
# folds the carry into its counters (the record stays small)
CARRY_MAX = 512


def laid_base(ruleset: RuleSet, att: A.Attachment) -> Counts | None:
    """The values the rule set's rules hold (``_laid``), when they are
    this record's; None otherwise. For a command that neither shows nor
    uses rule counters (-A, -I, -D in the command server): its load()
    need not read every slot (~5 ms at 10k rules), as the update starts
    the new generation from these values, and what the old generation
    counted since is its carry (read from ``now`` = these values)."""
    laid = _laid
    if laid is None or laid[0] is not ruleset or laid[1] != att.serial:
        return None
    if max(sum(map(len, att.carry.values())), _carry_slots) > CARRY_MAX \
            or sorted(laid[2]) != sorted(att.live_hooks()):
        return None
    return laid[2]


def initial_counters(hooks: list[str], compiled: Compiled, table: Table,
                     carried: SlotOf, delta: Counts | None, nslots: int
                     ) -> dict[str, C.Flat]:
    """The new programs' counters (``nslots`` each): the rule set's (which
    carry the data path's as of load()), plus what each rule's old slot
    counted since. Rule counts start in the INPUT program (shown as the
    sum over programs), each program's policy slot holds its hook's
    policy counters."""
    out = {h: C.zeros(nslots) for h in hooks}
    moved = totals(delta) if delta is not None else None
    if moved is not None and not any(moved):
        moved = None   # nothing counted since load(): the usual case, no lookups
    rules = out["INPUT"]
    if moved is None and _laid_out_in_order(table, compiled):
        # every rule's slot is the next one: one list per value, not 10k
        # dict lookups and stores (~3 ms at 10k rules)
        end = 2 * (FIRST_RULE_COUNTER + len(compiled.counter_of))
        kept = kept_rule_counts(table, carried.spans, *carried.kept) \
            if carried.kept is not None else None
        # (in the server's step log: whether the laid values were used)
        STEPS["counters:kept#"] = int(kept is not None
                                      and len(kept) == end - 2 * FIRST_RULE_COUNTER)
        if STEPS["counters:kept#"]:
            rules[2 * FIRST_RULE_COUNTER:end] = kept   # (~0.2 ms rather than ~0.7)
        else:
            counters = [r.counters for chain in table.ordered_chains() for r in chain.rules]
            rules[2 * FIRST_RULE_COUNTER:end:2] = array("Q", [c.packets for c in counters])
            rules[2 * FIRST_RULE_COUNTER + 1:end:2] = array("Q", [c.bytes for c in counters])
        slots = {}
    else:
        slots = compiled.counter_of
    chains = {name: chain.rules for name, chain in table.chains.items()}
    for (chain, index), slot in slots.items():
        rule = chains[chain][index]
        c = rule.counters
        p, b = c.packets, c.bytes
        if moved is not None:
            old = carried.get(id(rule))
            if old is not None and 2 * old < len(moved):
                p, b = p + moved[2 * old], b + moved[2 * old + 1]
        if p or b:
            rules[2 * slot] = p
            rules[2 * slot + 1] = b
    for hook in hooks:
        pol = table.chains[hook].counters
        p, b = pol.packets, pol.bytes
        if delta is not None and hook in delta:
            dp, db = C.get(delta[hook], POLICY_COUNTER)
            p, b = p + dp, b + db
        out[hook][2 * POLICY_COUNTER] = p
        out[hook][2 * POLICY_COUNTER + 1] = b
    return out


def kept_rule_counts(table: Table, spans: list[tuple[list, int]], names: list[str],
                     sums: C.Flat) -> C.Flat | None:
    """Every rule's (packets, bytes) in ordered_chains() order, as a
    flat array: a rule that is in its chain's span at the same place from
    the chain's front or back (the same object: the rules around one
    edit) takes its slot's value in ``sums``, the others their counters.
    Equal to reading every rule's counters when the spans' rules still
    hold ``sums`` (a -A, -I or -D after laid_base: it leaves the counters
    of the rules it keeps alone); the kept runs are copied in C (~0.2 ms
    at 10k rules, against ~0.7 ms for a read of every rule's counters).
    None when the chains are not the spans' (then the caller reads)."""
    chains = table.ordered_chains()
    if [c.name for c in chains] != names or len(spans) != len(names):
        return None
    out = array("Q")
    for chain, (then, first) in zip(chains, spans):
        now = chain.rules
        n, m = len(then), len(now)
        if 2 * (first + n) > len(sums):
            return None
        # the first place from the front, then from the back, where the
        # objects differ
        k = min(n, m)
        head = first_difference(now, then, k)
        tail = 0
        if head < k or n != m:
            tail = min(first_difference(reversed(now), reversed(then), k), k - head)
        out += sums[2 * first:2 * (first + head)]
        for rule in now[head:m - tail]:
            c = rule.counters
            out.append(c.packets)
            out.append(c.bytes)
        out += sums[2 * (first + n - tail):2 * (first + n)]
    return out


def _laid_out_in_order(table: Table, compiled: Compiled) -> bool:
    """Whether the compiled counter slots are the rules in ordered_chains()
    order from FIRST_RULE_COUNTER on (compiler.counter_slots), checked at
    each chain's ends."""
    of = compiled.counter_of
    total = 0
    for name, count, first in counter_layout(table):
        if count and (of.get((name, 0)) != first or of.get((name, count - 1)) != first + count - 1):
            return False
        total += count
    return total == len(of)


def old_slots(rules: dict[str, list], counter_of: dict[tuple[str, int], int],
              carried: SlotOf) -> dict[int, int]:
    """Old counter slot -> new slot of every rule kept (``rules``: each
    chain's rules as compiled into ``counter_of``, INPUT's)."""
    out = {}
    for (chain, index), slot in counter_of.items():
        old = carried.get(id(rules[chain][index]))
        if old is not None:
            out[old] = slot
    return out


def counter_layout(table: Table) -> list[list]:
    """[chain, rules, first slot] per chain, in counter_slots() order."""
    out, slot = [], FIRST_RULE_COUNTER
    for chain in table.ordered_chains():
        out.append([chain.name, len(chain.rules), slot])
        slot += len(chain.rules)
    return out


# -- an update --------------------------------------------------------------------

def compile_all(table: Table, here: dict[str, int], mode: str = "") -> dict[str, Compiled]:
    """INPUT always (it holds the carried rule counters); FORWARD and
    OUTPUT when they have work to do. NotSupported (exit 2) before anything.
    In netfilter mode bridged frames (br_netfilter) pass the FORWARD hook
    the program is linked at, as iptables' FORWARD: no refusal for them."""
    def each() -> dict[str, Compiled]:
        # (trust_identity: the front end never changes a rule object in place)
        out = {"INPUT": compile_chain(table, "INPUT", here, trust_identity=True)}
        # a flat INPUT has no conntrack match: the scan for one (made only
        # for an empty ACCEPT chain, once) leaves its rules out (~2 ms at 10k)
        skip = {"INPUT"} if out["INPUT"].flat else set()
        conntrack = lru_cache(lambda: uses_conntrack(table, skip))
        for h in ("FORWARD", "OUTPUT"):
            if needs(table, h, conntrack):
                out[h] = compile_chain(table, h, here, trust_identity=True)
        return out
    if mode != G.NETFILTER:
        bridges.check_br_netfilter(table)
        return each()
    from .fields import netfilter_layout
    from .nfmode import refuse
    with netfilter_layout():   # conntrack matches read the kernel's entry
        compiled = each()
    refuse(compiled)
    return compiled


def _not_flat(items: dict, compiled: dict[str, Compiled]) -> dict:
    """``items`` but the hooks compiled flat (Compiled.flat: their rules have
    no REJECT and no stateful match), which scans over every rule or entry
    may skip (~2.5 ms at 10k rules)."""
    return {k: v for k, v in items.items() if not (k in compiled and compiled[k].flat)}


def refuse_mark_at_xdp(compiled: dict[str, Compiled], mode: str) -> None:
    """-m mark in a chain classified at XDP cannot be enforced: XDP has no
    skb and so no mark, while netfilter's INPUT sees the mark a packet
    kept on lo (SO_MARK) or got from tc. Testing mark 0 there would be
    exact for packets from a device and wrong for those: refused, with
    the mode that can do it named."""
    if mode in ("tc", G.NETFILTER):
        return
    hooks = [h for h in ("INPUT", "FORWARD") if h in compiled and "mark" in compiled[h].shape.fields]
    if hooks:
        raise NotSupported(f"-m mark in {'/'.join(hooks)} at XDP, which has no packet mark "
                           "(attach with `bpf-iptables-datapath attach --mode tc' to test "
                           "skb->mark),")


def sync_interfaces(directory: Path, mode: str, have: dict[str, list[int]],
                    here: dict[str, int]) -> dict[str, list[int]]:
    """Roots on every interface of ``here``: the ones in ``have`` kept,
    vanished ones forgotten (their links unpinned), new ones attached
    (all or nothing: a failure takes back what this call attached). In
    netfilter mode: the roots' links at the hooks (made when missing), and
    the interfaces recorded (flags 0) only so that the watcher resyncs
    (recompiles -i/-o names) when they change."""
    if mode == G.NETFILTER:
        from . import nfmode
        roots = {n: bpfsys_id(links.root_dir(directory) / n) for n, _ in nfmode.ROOTS.values()}
        try:
            nfmode.ensure_links(links.link_dir(directory), links.root_dir(directory), roots)
        except OSError as exc:
            raise DatapathError(f"cannot link the netfilter hooks: {exc}") from None
        return {name: [index, 0] for name, index in here.items()}
    kept = {n: v for n, v in have.items() if here.get(n) == v[0]}
    for name, (index, _) in have.items():
        if name not in kept:
            links.detach(directory, index)
    added: dict[str, list[int]] = {}
    try:
        for name, index in sorted(here.items(), key=lambda kv: kv[1]):
            if name not in kept:
                added[name] = [index, links.attach(directory, mode, name, index)]
    except links.AttachError as exc:
        for name, (index, _) in added.items():
            links.detach(directory, index)
        raise DatapathError(str(exc)) from None
    return {**kept, **added}


def update(store, att: A.Attachment, ruleset: RuleSet, carried: SlotOf,
           base: Counts | None, base_at: float = 0.0,
           policies_later: "dict[str, Counters] | None" = None) -> A.Attachment:
    """Put ``ruleset`` into the inactive generation and make it the live
    one (module doc). Returns the new record. ``policies_later``: ``base``
    holds the rules' counters only, the policies are read here
    (AttachedStore.load, during the previous update's grace period; hook ->
    the policy counters object load() saw, laid on if still the chain's)."""
    if not grace_pending():
        settle()   # (none left by an earlier update of this process, as a rule)
    # else: the previous update's grace period is still under way (the
    # command server): compile and images first, then wait for it (below)
    directory = store.directory
    clock = _Clock()
    table = ruleset.table("filter")
    here = interfaces_here()
    compiled = compile_all(table, here, att.mode)
    refuse_mark_at_xdp(compiled, att.mode)
    from .reject_output import check_tail_calls
    check_tail_calls(compiled)   # REJECT replies through OUTPUT: NotSupported
    from .recent import sync_pinned, table_needs
    # NotSupported here, before anything changed (a flat chain names no list)
    recent_needs = table_needs(SimpleNamespace(chains=_not_flat(table.chains, compiled)))
    clock("compile")
    # hooks whose compile patched the last one (compiler._Flat): the rest were built whole
    STEPS["compile:patched#"] = sum(c.edit is not None for c in compiled.values())
    gen = 1 - att.active
    looped = G.with_looped(compiled, att.mode)
    # the images of the maps the inactive generation's programs keep: pure
    # computation, so before the grace period is over (packets that read
    # the active word before the last switch may still run that
    # generation: nothing of it is written until then). New programs (a
    # shape that does not fit, rare in -A/-I/-D) are still loaded after
    # it, in prepare: a new program's own maps are seen by no packet
    # before the switch, but the looped copies' new program may take
    # INPUT's maps (shared_maps), which a straggler reads, and prepare
    # writes each new program's maps as it loads it
    images = G.images(att, gen, looped)
    clock("image")
    # what the old generation counted until no packet runs it: the carry
    # (settle), its counter maps zeroed; ``att`` takes the carry (read_live)
    settle(zero=True)
    adopt_carry(att)   # (the old generation's counters, read below and later, include it)
    if policies_later is not None and base is not None:
        policies = read_live(directory, att, nslots=1)
        base = {h: C.with_first(v, policies[h]) for h, v in base.items()}
        # as load() would have laid them: on the policy counters the
        # command left as they were; those it replaced (a commit restarts
        # them, tableops.reset_policy_counters) keep the command's values
        for hook, seen in policies_later.items():
            chain = table.chains.get(hook)
            if chain is not None and chain.counters is seen and hook in base:
                seen.packets, seen.bytes = C.get(base[hook], POLICY_COUNTER)
    clock("grace+settle")
    quiesce(att)
    clock("quiesce")
    try:
        hooks, _ = G.prepare(directory, att, gen, looped, att.mode, images)
        clock("prepare")
        for what, value in G.TIMES.items():   # the split, and elements written ("#")
            STEPS["prepare:" + what + ("#" if what == "elements" else "")] = value
        from .reject_output import rejecting
        G.fill_slots(directory, gen, hooks, att.mode,
                     rejecting(_not_flat(compiled, compiled)))   # (a flat chain rejects nothing)
    except G.LoadError as exc:
        raise DatapathError(f"cannot load the eBPF program: {exc}") from None
    except OSError as exc:
        raise DatapathError(f"cannot prepare the eBPF program: {exc}") from None
    try:
        # -m recent: the lists the new rules name exist (made, or flushed
        # when they need more stamps) before the switch, as xt_recent's
        # checks run before a table replace; lists no rule names any more
        # go after the switch
        sync_pinned(A.ns_pins(directory), recent_needs, remove=False)
    except OSError as exc:
        raise DatapathError(f"cannot prepare the recent tables: {exc}") from None
    if "ctstate" in compiled["INPUT"].shape.fields and att.mode != G.NETFILTER:
        # the tracker's maps may be new: the timeouts set for the namespace
        from ..conntrack import table as cttable
        cttable.apply_settings(directory, cttable.conntrack_dir(A.ns_pins(directory)))
    try:
        # -m hashlimit: the tables the new rule set names and that do not
        # exist yet, before the switch (as the kernel's checkentry)
        HL.ensure(A.ns_pins(directory), table)
    except OSError as exc:
        raise DatapathError(f"cannot create the hashlimit tables: {exc}") from None
    if att.mode == G.NETFILTER:
        _nf_reject(directory, compiled, before_switch=True)
    _maybe_die("prepared")
    # not on bridge ports: the bridge carries the roots (bridges.py)
    ifaces = sync_interfaces(directory, att.mode, att.interfaces, bridges.attachable())
    clock("slots+interfaces")
    route = "FORWARD" in compiled or forwarding()
    ncounters = FIRST_RULE_COUNTER + len(compiled["INPUT"].counter_of)
    new = A.Attachment(
        mode=att.mode, active=gen, interfaces=ifaces, roots=att.roots,
        slots=[dict(s) for s in att.slots], counters=counter_layout(table),
        ncounters=ncounters, entries=len(compiled["INPUT"].entries), serial=att.serial + 1)
    new.slots[gen] = {"route": route, "hooks": hooks}
    try:
        # counters last, right before the flip: what the old programs
        # counted since load() is carried over (see the module doc)
        delta, now = None, {}
        # (the command server reads the carry off its client's time: no reread)
        if base is not None and (DEFER_CARRY or time.perf_counter() - base_at <= REREAD_AFTER):
            now = base   # quick: what was counted since, by the carry alone
        elif base is not None:
            now = read_live(directory, att)
            delta = {h: C.sub(now[h], base[h]) for h in now if h in base}
        values = initial_counters(list(compiled), compiled["INPUT"], table, carried, delta,
                                  ncounters)
        clock("counters:values")   # (then "counters": the writes)
        if G.LOOPED in hooks:
            # zeroed: INPUT's program holds the counts so far
            values[G.LOOPED] = C.zeros(ncounters)
        global _zeroed
        # zeros still, unless a program (new maps: zeros too) or an update came between
        zeroed, _zeroed = _zeroed == (str(directory), att.serial), None
        G.write_counters(directory, gen, values, zeroed)
    except OSError as exc:
        raise DatapathError(f"cannot write the eBPF program's counters: {exc}") from None
    clock("counters")
    before = store_generation(store)
    # (a shallow copy: ``att`` is not changed from here on)
    new.pending = {"record": A.as_json(att), "store_generation": before}
    A.write(directory, new)
    clock("record")
    _maybe_die("pending")
    _maybe_die("counted")
    G.flip(directory, G.word(gen, route))
    new.switched_at = time.monotonic()
    try:
        sync_pinned(A.ns_pins(directory), recent_needs)
    except OSError:
        pass   # left for the next update, which frees them as well
    if now:
        # what the old generation counted since ``now``: carried in the record
        global _unsettled
        # (the chains' rules as they are now: the server's next request
        # changes the rule set in place before this carry is read, and
        # the grace thread may read it meanwhile; counter_of is not changed
        # once made, compiler.counter_slots)
        rules = {name: chain.rules[:] for name, chain in table.chains.items()}
        counter_of = compiled["INPUT"].counter_of
        _unsettled = Unsettled(directory, att, new, now,
                               lru_cache(lambda: old_slots(rules, counter_of, carried)),
                               list(compiled))
        if not DEFER_CARRY:
            settle()
    if att.mode == G.NETFILTER:
        _nf_reject(directory, compiled, before_switch=False)
    clock("flip+carry")
    _maybe_die("flipped")
    store.save(ruleset)
    clock("store")
    _maybe_die("stored")
    new.store_generation = store_generation(store)
    new.pending = None
    A.write(directory, new)
    global _laid
    # the rules' counters are what the new generation started from (not
    # so with ``delta``: it was added in the maps only)
    laid = {h: v for h, v in values.items() if h != G.LOOPED}   # (zeros: INPUT's as read)
    _laid = (ruleset, new.serial, laid, totals(laid)) if delta is None else None
    clock("record")
    try:
        # the tables no rule names any more, once no packet runs the old
        # generation (as the kernel's destroy after a table replace)
        HL.collect(A.ns_pins(directory), table, grace_period)
    except OSError:
        pass   # left to the next update
    return new


def _nf_reject(directory: Path, compiled: dict[str, Compiled], before_switch: bool) -> None:
    """--mode netfilter's REJECT hand-off (nfmode.py): in place before the
    switch to a rule set with REJECT, out after the switch to one without."""
    from . import nfmode
    from .program import BPF_DIR

    wanted = nfmode.has_reject(compiled)
    if wanted != before_switch:
        return
    where = Path(nfmode.reject_dir(str(A.ns_pins(directory) / "conntrack")))
    if wanted == nfmode.reject_pinned(where):
        return   # as it should be (no iptables-legacy run per update)
    if not wanted:
        # packets the old generation recorded just before the switch are
        # still to meet their x_tables rule (they run inside RCU sections)
        grace_period()
    try:
        nfmode.ensure_reject(where, BPF_DIR, wanted)
    except OSError as exc:
        if before_switch:
            raise DatapathError(f"cannot set up REJECT in --mode netfilter "
                                f"(iptables-legacy with xt_bpf): {exc}") from None


def recover(store, att: A.Attachment) -> A.Attachment:
    """Resolve what a call that died left (module doc); a consistent
    record comes back unchanged after one map read."""
    directory = store.directory
    if att.pending is not None:
        old = A.Attachment(**att.pending["record"])
        if store_generation(store) == att.pending["store_generation"]:
            # the new rule set was never stored: back to the old generation,
            # which nothing touched (the new one stays loaded for reuse)
            old.slots[att.active] = att.slots[att.active]
            old.switched_at = time.monotonic()
            fixed, what = old, "rolled back to the stored rule set"
        else:
            att.pending = None
            att.store_generation = store_generation(store)
            att.switched_at = time.monotonic()
            fixed, what = att, "completed (the new rule set was stored)"
        G.flip(directory, G.word(fixed.active, fixed.slots[fixed.active].get("route", False)))
        A.write(directory, fixed)
        sys.stderr.write(f"warning: an interrupted data path update was {what}\n")
        return fixed
    want = G.word(att.active, att.slots[att.active].get("route", False))
    if G.active_word(directory) != want:
        G.flip(directory, want)
        sys.stderr.write("warning: the data path's active generation did not match its "
                         "record; switched back to the recorded one\n")
    return att


# -- the store of an attached namespace ------------------------------------------------

class AttachedStore:
    """A state.Store whose rule set is also the attached data path's."""

    def __init__(self, inner, att: A.Attachment):
        self.inner = inner
        self.att = att
        self.directory = inner.directory
        self._carried = SlotOf()
        self._base: Counts | None = None
        self._base_at = 0.0   # perf_counter() of the read of _base
        # load() left the policies' counters to the update (policies_read)
        self._policies_later: "dict[str, Counters] | None" = None
        self._recovered = False

    def _recover(self) -> None:
        if not self._recovered:
            try:
                self.att = recover(self.inner, self.att)
            except OSError as exc:
                raise DatapathError(f"the data path's pins are not usable ({exc}); run "
                                    "`bpf-iptables-datapath detach' and attach again") from None
            self._recovered = True

    def load(self) -> RuleSet:
        clock = _Clock()
        self._recover()
        clock("load:recover")
        ruleset = self.inner.load()
        clock("load:rules")
        unused = getattr(self.inner, "counters_unused", None)
        laid = laid_base(ruleset, self.att) if unused is not None and unused() else None
        try:
            self._base_at = time.perf_counter()
            self._policies_later = None
            if laid is not None and grace_pending():
                chains = ruleset.table("filter").chains
                # (the policy counters the update lays what it reads on,
                # if the command leaves them)
                self._policies_later = {h: chains[h].counters for h in laid if h in chains}
                # the previous update's grace period is under way (the
                # command server): reading now would wait for it; the
                # update reads the policies once its compile and images
                # are built (policies_read). -A, -I and -D neither show nor
                # use them before saving.
                self._base = dict(laid)
            elif laid is not None:
                # the rules hold ``laid``; the policies are read now (a
                # commit restarts them from what it read, see tableops)
                policies = read_live(self.directory, self.att, nslots=1)
                self._base = {h: C.with_first(v, policies[h]) for h, v in laid.items()}
            else:
                self._base = read_live(self.directory, self.att)
        except OSError as exc:
            raise DatapathError(f"cannot read the data path's counters: {exc}; run "
                                "`bpf-iptables-datapath detach' and attach again") from None
        clock("load:counters")
        if laid is not None:
            table = ruleset.table("filter")
            if self._policies_later is None:
                lay_policies(table, self._base)
            assert _laid is not None   # (laid_base checked it is this rule set's)
            self._carried = SlotOf(spans_of(table, self.att),
                                   ([name for name, _, _ in self.att.counters], _laid[3]))
        else:
            self._carried = overlay(ruleset, self.att, self._base)
        clock("load:overlay")
        return ruleset

    def load_index(self, table: str):
        return None  # every change goes through save(): it must reach the data path

    def append(self, table, chain, rules):  # never reached (load_index is None)
        raise AssertionError("journal append while the data path is attached")

    def save(self, ruleset: RuleSet) -> None:
        """Also the resync of the interface watcher: with an unchanged rule
        set it attaches the roots to new interfaces and forgets vanished
        ones (and recompiles -i for them)."""
        self._recover()
        if self._base is None:
            # saved without load() (a resync of the stored rule set): its
            # stored counters are those of the last update; take the data
            # path's, by the live layout, so nothing counted since is lost
            try:
                self._base_at = time.perf_counter()
                self._base = read_live(self.directory, self.att)
            except OSError as exc:
                raise DatapathError(f"cannot read the data path's counters: {exc}") from None
            self._carried = overlay(ruleset, self.att, self._base)
        prestore = getattr(self.inner, "prestore", None)
        if prestore is not None:
            prestore(ruleset)   # the command server writes the snapshot meanwhile
        later, self._policies_later = self._policies_later, None
        self.att = update(self.inner, self.att, ruleset, self._carried, self._base,
                          self._base_at, policies_later=later)
        self._base, self._carried = None, SlotOf()


# -- attach / detach ------------------------------------------------------------------

def load_roots(directory: Path, mode: str) -> dict[str, int]:
    """Compile bpf/root.c, load the roots this mode uses, pin them with
    their maps (the active word starts at generation 0, whose slots are
    empty: everything passes until the first flip)."""
    from .program import Roots
    from . import bpfsys

    if mode == G.NETFILTER:
        from .nfmode import load_roots as nf_roots
        from .program import BPF_DIR
        try:
            return nf_roots(links.root_dir(directory), BPF_DIR)
        except Exception as exc:  # bcc, bpf(2)
            raise DatapathError(f"cannot load the eBPF root programs: {exc}") from None
    functions = links.root_functions(mode)
    try:
        roots = Roots(functions)
    except Exception as exc:  # bcc
        raise DatapathError(f"cannot load the eBPF root programs: {exc}") from None
    where = links.root_dir(directory)
    where.mkdir(parents=True, mode=0o700)
    for name, fd in {**roots.prog_fds(), **roots.map_fds()}.items():
        bpfsys.obj_pin(fd, str(where / name))
    return {name: bpfsys.obj_id(fd) for name, fd in roots.prog_fds().items()}


def attach(store, mode: str, ruleset: RuleSet | None = None) -> A.Attachment:
    """Load the roots, prepare generation 0 from the stored rule set (or
    from ``ruleset``, which is stored once it filters), flip to it, attach
    the roots to every interface."""
    support.check()   # no eBPF support: a clear error (exit 1) before anything is built
    if mode not in MODES:
        raise NotSupported(f"data path mode `{mode}'")
    A.ensure_bpffs()
    collect_stale_pins()
    try:
        current = A.read(store.directory)
    except A.DamagedRecord:
        current = None
    if current is not None or A.ns_pins(store.directory).exists():
        detach(store)
    if ruleset is None:
        ruleset = store.load()
    if mode == G.NETFILTER:
        from .nfmode import check_kernel
        check_kernel()
    compile_all(ruleset.table("filter"), interfaces_here(), mode)  # refusals before anything
    pins = A.ns_pins(store.directory)
    try:
        roots = load_roots(store.directory, mode)
        # generation 1 "active" with no programs: update() prepares 0 and flips
        empty = A.Attachment(mode=mode, active=1, roots=roots,
                             store_generation=store_generation(store))
        G.flip(store.directory, G.word(1, False))
        return update(store, empty, ruleset, SlotOf(), None)
    except BaseException:
        links.detach_all(store.directory)
        if mode == G.NETFILTER:
            from .nfmode import remove_reject
            remove_reject()
        shutil.rmtree(pins, ignore_errors=True)
        A.remove(store.directory)
        raise


def detach(store) -> A.Attachment | None:
    """Remove every attachment and pin; the rule set keeps the data path's
    counters. Works from whatever a failed call left (a damaged record, pins
    without a record)."""
    try:
        att = A.read(store.directory)
    except A.DamagedRecord as exc:
        sys.stderr.write(f"warning: {exc}: counters of the data path lost\n")
        att = None
    pins = A.ns_pins(store.directory)
    if att is not None:
        try:
            live = AttachedStore(store, att)
            ruleset = live.load()
            store.save(ruleset)
        except (OSError, XtablesError) as exc:
            sys.stderr.write(f"warning: counters of the data path lost: {exc}\n")
    elif not pins.exists():
        return None
    links.detach_all(store.directory)
    if att is None or att.mode == G.NETFILTER:
        from .nfmode import remove_reject, xtables_installed
        if xtables_installed():
            remove_reject()
    shutil.rmtree(pins, ignore_errors=True)
    A.remove(store.directory)
    return att or A.Attachment(mode="", active=0)


def collect_stale_pins() -> None:
    """Pins of namespaces whose state directory is gone (the namespace was
    deleted and its state collected) keep programs alive for nothing."""
    root = A.pin_root()
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name.startswith("netns-") and not (A.run_dir() / d.name).is_dir():
            links_dir = d / "link"
            if links_dir.is_dir():
                for pin in links_dir.iterdir():
                    links.remove_pin(pin)
            shutil.rmtree(d, ignore_errors=True)
