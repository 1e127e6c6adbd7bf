"""-m limit: a token bucket per rule (libxt_limit, kernel xt_limit).

The rule's data is what iptables compares for -C/-D (struct xt_rateinfo up
to ``prev``: avg and burst). The bucket itself is mutable run-time state,
kept apart in ``LimitBuckets`` keyed by the identity of the rule's data,
exactly as the kernel keeps it in a private per-rule allocation. (Rules
that share one data object, e.g. those expanded from "-s a,b", therefore
share a bucket here, where the kernel would give each its own.)"""
from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TableOpError, XtablesError
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

XT_LIMIT_SCALE = 10000
DEFAULT_AVG = "3/hour"
DEFAULT_BURST = 5
U32 = 0xFFFFFFFF

# The kernel counts time in jiffies; CONFIG_HZ=250 is the Debian kernel's
# (and this machine's) setting. CREDITS_PER_JIFFY = POW2_BELOW32(MAX_CPJ).
HZ = 250
MAX_CPJ = U32 // (HZ * 60 * 60 * 24)
CREDITS_PER_JIFFY = 1 << (MAX_CPJ.bit_length() - 1)

_RATE_UNITS = (("second", 1), ("minute", 60), ("hour", 60 * 60), ("day", 24 * 60 * 60))
_PRINT_RATES = (("day", XT_LIMIT_SCALE * 24 * 60 * 60), ("hour", XT_LIMIT_SCALE * 60 * 60),
                ("min", XT_LIMIT_SCALE * 60), ("sec", XT_LIMIT_SCALE))


def c_atoi(text: str) -> int:
    """glibc atoi() = (int)strtol(s, NULL, 10), as uint32_t."""
    i = 0
    while i < len(text) and text[i] in " \t\n\r\f\v":
        i += 1
    sign = 1
    if i < len(text) and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    start = i
    while i < len(text) and text[i].isascii() and text[i].isdigit():
        i += 1
    value = int(text[start:i]) * sign if i > start else 0
    value = max(-(1 << 63), min((1 << 63) - 1, value))   # strtol saturates
    return value & U32


def parse_rate(rate: str) -> int | None:
    """parse_rate(): "N[/second|minute|hour|day]" (unit by prefix) to the
    kernel's avg (seconds * XT_LIMIT_SCALE between packets); None if bad."""
    mult = 1
    if "/" in rate:
        unit = rate[rate.index("/") + 1:]
        if not unit:
            return None
        for name, seconds in _RATE_UNITS:
            if len(unit) <= len(name) and name[:len(unit)].lower() == unit.lower():
                mult = seconds
                break
        else:
            return None
    r = c_atoi(rate)
    if r == 0:
        return None
    avg = (XT_LIMIT_SCALE * mult) // r
    if avg == 0:
        raise XtablesError(f'Rate too fast "{rate}"')
    return avg


def rate_text(period: int) -> str:
    """print_rate(): the coarsest unit that still shows the rate exactly enough."""
    if period == 0:
        return f" {math.inf:f}"
    i = 1
    while i < len(_PRINT_RATES):
        mult = _PRINT_RATES[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = _PRINT_RATES[i - 1]
    return f" {mult // period}/{name}"


def user2credits(user: int) -> int:
    """xt_limit's user2credits(), in u32 arithmetic."""
    user &= U32
    if user > U32 // (HZ * CREDITS_PER_JIFFY):
        return ((user // XT_LIMIT_SCALE) * HZ * CREDITS_PER_JIFFY) & U32
    return ((user * HZ * CREDITS_PER_JIFFY) & U32) // XT_LIMIT_SCALE


@dataclass(frozen=True)
class LimitData:
    avg: int
    burst: int

    @property
    def credit_cap(self) -> int:
        return user2credits(self.avg * self.burst)

    @property
    def cost(self) -> int:
        return user2credits(self.avg)


@dataclass
class Bucket:
    credit: int
    prev: int   # jiffies of the last update


class LimitBuckets:
    """Per-rule token buckets, keyed by the identity of the rule's data
    (the data object is kept referenced so its id cannot be reused)."""

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[LimitData, Bucket]] = {}

    def get(self, data: LimitData, now: int) -> Bucket:
        entry = self._buckets.get(id(data))
        if entry is None:
            # limit_mt_check(): the bucket starts full when the rule is
            # loaded; here, when the rule first sees a packet.
            entry = (data, Bucket(data.credit_cap, now))
            self._buckets[id(data)] = entry
        return entry[1]

    def clear(self) -> None:
        self._buckets.clear()


def jiffies(seconds: float) -> int:
    return math.floor(seconds * HZ)


class LimitMatch(XtOptionsExtension, MatchExtension):
    name = "limit"
    help_text = (
        "limit match options:\n"
        "--limit avg\t\t\tmax average match rate: default 3/hour\n"
        "                                [Packets per second unless followed by \n"
        "                                /sec /minute /hour /day postfixes]\n"
        "--limit-burst number\t\tnumber to match in a burst, default 5\n")
    xt_options = (
        XtOption("limit", T.STRING),
        XtOption("limit-burst", T.UINT32, min=0, max=10000),
    )

    def __init__(self) -> None:
        self.buckets = LimitBuckets()

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        if opt.name == "limit":
            avg = parse_rate(arg or "")
            if avg is None:
                raise XtablesError(f"bad rate \"{arg}\"'")
            state.values["avg"] = avg
        # "limit does not support invert" is unreachable: the generic parser
        # already refuses "!" before either option.

    def build(self, state: XtState, ctx: ParseContext) -> LimitData:
        avg = state.values.get("avg")
        if avg is None:
            avg = parse_rate(DEFAULT_AVG)
        return LimitData(avg or 0, state.values.get("limit-burst", DEFAULT_BURST))

    def save(self, data: LimitData) -> str:
        out = " --limit" + rate_text(data.avg)
        if data.burst != DEFAULT_BURST:
            out += f" --limit-burst {data.burst}"
        return out

    def print(self, data: LimitData, numeric: bool) -> str:
        return f" limit: avg{rate_text(data.avg)} burst {data.burst}"

    def kernel_check(self, data: LimitData, rule: "Rule", hooks: frozenset[str]) -> bool:
        # limit_mt_check(): a zero burst or an avg*burst that overflows is
        # refused with ERANGE ("Numerical result out of range").
        if data.burst == 0 or data.credit_cap < data.cost:
            raise TableOpError(errno.ERANGE)
        return True

    def lower(self, data: LimitData, rule: "Rule") -> list[Any]:
        """No field constraint: the bucket is a per-candidate check the
        compiler attaches to the rule's entry (compiler.rule_limit, which
        refuses a limit that is not the rule's last match)."""
        return []

    def matches(self, data: LimitData, packet: "Packet") -> bool:
        """limit_mt(): refill CREDITS_PER_JIFFY per elapsed jiffy up to the
        cap, then take ``cost`` if there is enough."""
        now = jiffies(packet.time)
        bucket = self.buckets.get(data, now)
        elapsed = (now - bucket.prev) & 0xFFFFFFFFFFFFFFFF
        bucket.prev = now
        # u32 arithmetic as in the kernel (wraps after ~37 idle hours)
        credit = (bucket.credit + ((elapsed * CREDITS_PER_JIFFY) & U32)) & U32
        credit = min(credit, data.credit_cap)
        if credit >= data.cost:
            bucket.credit = credit - data.cost
            return True
        bucket.credit = credit
        return False


EXTENSIONS = [LimitMatch()]
