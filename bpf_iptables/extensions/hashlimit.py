"""-m hashlimit: token buckets per hashed key (libxt_hashlimit rev 3, xt_hashlimit).

The rule's data is ``struct xt_hashlimit_mtinfo3`` up to ``hinfo`` (what
iptables compares for -C/-D). The buckets are run-time state in a table per
``--hashlimit-name``, shared by every rule naming it, whose configuration is
that of the rule that created it (htable_find_get() in the kernel).

Reference semantics cover packet and byte rates (``--hashlimit-upto/above
N/unit``, ``Nkb/s``); ``--hashlimit-rate-match`` is refused there
(NotSupported). The eBPF data path enforces them as a per-candidate check
(``bpf/lib/hashlimit.h``, ``compiler.rule_hashlimit``, the namespace's
tables in ``datapath/hashlimit_tables.py``); rate-match is refused there
too (exit 2)."""
from __future__ import annotations

import errno
import hashlib
import math
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import NotSupported, TableOpError, XtablesError
from ..numbers import UINT64_MAX, parse_prefix, strtoul
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState
from .limit import HZ, jiffies

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

# mode bits (XT_HASHLIMIT_*)
HASH_DIP, HASH_DPT, HASH_SIP, HASH_SPT = 1, 2, 4, 8
INVERT, BYTES, RATE_MATCH = 16, 32, 64
HASH_ALL = HASH_DIP | HASH_DPT | HASH_SIP | HASH_SPT
SCALE = 1_000_000                 # XT_HASHLIMIT_SCALE_v2
BYTE_SHIFT = 4
BURST_DEFAULT = 5
BURST_MAX = 1_000_000
GCINTERVAL = 1000                 # ms
BYTE_EXPIRE = 15
BYTE_EXPIRE_BURST = 60
NAME_SIZE = 255                   # char name[NAME_MAX], NUL included
MAX_SIZE = 1 << 20                # HASHLIMIT_MAX_SIZE
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
# xt_hashlimit's 64-bit credits (revisions 2 and 3)
MAX_CPJ = U64 // (HZ * 60 * 60 * 24)
CREDITS_PER_JIFFY = 1 << (MAX_CPJ.bit_length() - 1)
_RATES = (("day", SCALE * 24 * 60 * 60), ("hour", SCALE * 60 * 60),
          ("min", SCALE * 60), ("sec", SCALE))
_UNITS = (("m", 1024 * 1024), ("k", 1024), ("", 1))
_MODE_WORDS = (("srcip", HASH_SIP), ("srcport", HASH_SPT), ("dstip", HASH_DIP),
               ("dstport", HASH_DPT))
_PORT_PROTOS = frozenset((6, 17, 33, 132, 136))   # tcp udp dccp sctp udplite
# (the kernel's proto_ports_offset() also reads ESP's and AH's SPI as the
# "ports"; the reference packet has no such bytes, the data path reads them)
HTABLE_DEFAULT_SIZE = 8192        # htable_create() on machines with > 1 GiB


def c_atoll(text: str) -> int:
    """glibc atoll(): leading space, a sign, decimal digits; saturates."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not (ch.isascii() and ch.isdigit()):
            break
        digits += ch
    value = sign * int(digits) if digits else 0
    return max(-(1 << 63), min((1 << 63) - 1, value))


def cost_to_bytes(cost: int) -> int:
    r = U32 // cost if cost else U32
    return ((r - 1) << BYTE_SHIFT) & U64


def bytes_to_cost(nbytes: int) -> int:
    r = (nbytes >> BYTE_SHIFT) & U32
    return U32 // (r + 1)


def _factor(ch: str) -> int:
    return {"m": 1024 * 1024, "k": 1024}.get(ch, 1)


def parse_plen(text: str, option: str) -> int:
    """xtopt_parse_plen(): a prefix length 0-32, else a numeric address taken
    as a netmask (a non-contiguous one gives 255, which the kernel refuses)."""
    value = strtoul(text, 0, 32) if text else None
    if value is not None:
        return value
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_INET, 0, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        raise XtablesError(f'hashlimit: bad value for option "--{option}", neither a valid '
                           "network mask nor valid CIDR (0-32).\n") from None
    mask = int.from_bytes(socket.inet_aton(infos[0][4][0]), "big")
    length = 32 - ((~mask) & U32).bit_length()
    return length if mask == _prefix_mask(length) else 255


def parse_burst(text: str) -> int:
    value, end = parse_prefix(text, 1, UINT64_MAX)
    if value is None or (end == len(text) and value > BURST_MAX):
        raise XtablesError('bad value for option "--hashlimit-burst", '
                           f"or out of range (1-{BURST_MAX}).")
    return (value * _factor(text[end:end + 1])) & U64


def parse_bytes(rate: str) -> int | None:
    """A byte rate "N[k|m]b/s" as its cost, None if it is not one."""
    pos = rate.find("b/s")
    if pos <= 0:
        return None
    r = c_atoll(rate) & U64
    if r == 0:
        return None
    tmp = (r * _factor(rate[pos - 1])) & U64
    cost = bytes_to_cost(tmp)
    if cost == 0:
        raise XtablesError(f'Rate too high "{rate}"')
    return cost


def parse_rate(rate: str) -> tuple[int, int] | None:
    """A packet rate as (avg, seconds per unit), None if bad."""
    mult = 1
    if "/" in rate:
        unit = rate[rate.index("/") + 1:]
        if not unit:
            return None
        for name, seconds in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
            if len(unit) <= len(name) and name[:len(unit)].lower() == unit.lower():
                mult = seconds
                break
        else:
            return None
    r = c_atoll(rate) & U64
    if r == 0:
        return None
    avg = (SCALE * mult) // r
    if avg == 0:
        raise XtablesError(f'Rate too fast "{rate}"')
    return avg, mult


def rate_text(period: int) -> tuple[str, int]:
    """print_rate(): text and the unit's length in ms (the default expire)."""
    if period == 0:
        return f" {math.inf:f}", 0
    i = 1
    while i < len(_RATES):
        mult = _RATES[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = _RATES[i - 1]
    return f" {mult // period}/{name}", mult // SCALE * 1000


def bytes_text(avg: int, burst: int, prefix: str) -> tuple[str, int]:
    """print_bytes()."""
    r = cost_to_bytes(avg)
    i = 0
    while i < len(_UNITS) - 1:
        name, thresh = _UNITS[i]
        if r >= thresh and bytes_to_cost(r & ~(thresh - 1)) == avg:
            break
        i += 1
    out = f" {r // _UNITS[i][1]}{_UNITS[i][0]}b/s"
    if burst == 0:
        return out, BYTE_EXPIRE * 1000
    r = (r * burst) & U64
    i = 0
    while i < len(_UNITS) - 1 and not r >= _UNITS[i][1]:
        i += 1
    return out + f" {prefix}burst {r // _UNITS[i][1]}{_UNITS[i][0]}b", BYTE_EXPIRE_BURST * 1000


def mode_text(mode: int, sep: str) -> str:
    return " " + sep.join(word for word, bit in _MODE_WORDS if mode & bit)


def user2credits(user: int) -> int:
    """xt_hashlimit's user2credits() for revision 3 (u64, constants first)."""
    cpj = HZ * CREDITS_PER_JIFFY
    if SCALE >= cpj:
        return (user & U64) // (SCALE // cpj)
    return ((user & U64) * (cpj // SCALE)) & U64


@dataclass(frozen=True)
class HashlimitData:
    """``struct xt_hashlimit_mtinfo3`` (IPv4): cfg and name."""

    mode: int = 0
    avg: int = 0
    burst: int = BURST_DEFAULT
    size: int = 0
    max: int = 0
    gc_interval: int = GCINTERVAL
    expire: int = 0
    srcmask: int = 32
    dstmask: int = 32
    interval: int = 0
    name: str = ""


@dataclass
class _Bucket:
    credit: int
    prev: int
    expires: int
    cap: int        # rateinfo.credit_cap (bytes: refills left)
    cost: int


@dataclass
class _Table:
    cfg: HashlimitData
    buckets: dict[tuple[int, ...], _Bucket]


def _prefix_mask(length: int) -> int:
    return (U32 << (32 - length)) & U32 if length else 0


class HashlimitMatch(XtOptionsExtension, MatchExtension):
    name = "hashlimit"
    help_text = (
        "hashlimit match options:\n"
        "  --hashlimit-upto <avg>           max average match rate\n"
        "                                   [Packets per second unless followed by \n"
        "                                   /sec /minute /hour /day postfixes]\n"
        "  --hashlimit-above <avg>          min average match rate\n"
        "  --hashlimit-mode <mode>          mode is a comma-separated list of\n"
        "                                   dstip,srcip,dstport,srcport (or none)\n"
        "  --hashlimit-srcmask <length>     source address grouping prefix length\n"
        "  --hashlimit-dstmask <length>     destination address grouping prefix length\n"
        "  --hashlimit-name <name>          name for /proc/net/ipt_hashlimit\n"
        "  --hashlimit-burst <num>\t    number to match in a burst, default 5\n"
        "  --hashlimit-htable-size <num>    number of hashtable buckets\n"
        "  --hashlimit-htable-max <num>     number of hashtable entries\n"
        "  --hashlimit-htable-gcinterval    interval between garbage collection runs\n"
        "  --hashlimit-htable-expire        after which time are idle entries expired?\n"
        "  --hashlimit-rate-match           rate match the flow without rate-limiting it\n"
        "  --hashlimit-rate-interval        interval in seconds for hashlimit-rate-match\n"
        "\n")
    xt_options = (
        XtOption("hashlimit-upto", T.STRING, invert=True, excl=("hashlimit-above",)),
        XtOption("hashlimit-above", T.STRING, invert=True, excl=("hashlimit-upto",)),
        XtOption("hashlimit", T.STRING, invert=True, id="hashlimit-upto",
                 excl=("hashlimit-above",)),
        XtOption("hashlimit-srcmask", T.STRING),     # XTTYPE_PLEN
        XtOption("hashlimit-dstmask", T.STRING),
        XtOption("hashlimit-burst", T.STRING),
        XtOption("hashlimit-htable-size", T.UINT32),
        XtOption("hashlimit-htable-max", T.UINT32),
        XtOption("hashlimit-htable-gcinterval", T.UINT32),
        XtOption("hashlimit-htable-expire", T.UINT32),
        XtOption("hashlimit-mode", T.STRING),
        XtOption("hashlimit-name", T.STRING, mand=True, min=1, size=NAME_SIZE),
        XtOption("hashlimit-rate-match"),
        XtOption("hashlimit-rate-interval", T.STRING),
    )
    # the C enum's order (O_UPTO, O_ABOVE, O_LIMIT, O_MODE, O_SRCMASK, ...)
    xt_id_order = ("hashlimit-upto", "hashlimit-above", "hashlimit-mode",
                   "hashlimit-srcmask", "hashlimit-dstmask", "hashlimit-name",
                   "hashlimit-burst", "hashlimit-htable-size", "hashlimit-htable-max",
                   "hashlimit-htable-gcinterval", "hashlimit-htable-expire",
                   "hashlimit-rate-match", "hashlimit-rate-interval")

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        v = state.values
        v.setdefault("mode", 0)
        text = arg or ""
        if opt.key in ("hashlimit-srcmask", "hashlimit-dstmask"):
            v[opt.key] = parse_plen(text, opt.key)
        elif opt.key == "hashlimit-burst":
            v["burst"] = parse_burst(text)
        elif opt.key in ("hashlimit-upto", "hashlimit-above"):
            if invert == (opt.key == "hashlimit-upto"):
                v["mode"] |= INVERT
            cost = parse_bytes(text)
            if cost is not None:
                v["mode"] |= BYTES
                v["avg"], v["mult"] = cost, BYTE_EXPIRE
            else:
                parsed = parse_rate(text)
                if parsed is None:
                    raise XtablesError(f'hashlimit: Bad value for "--{opt.key}" option: "{text}"')
                v["avg"], v["mult"] = parsed
        elif opt.key == "hashlimit-mode":
            for token in (t for t in text.replace("|", ",").split(",") if t):
                bit = dict(_MODE_WORDS).get(token)
                if bit is None:
                    raise XtablesError(
                        f'hashlimit: Bad value for "--hashlimit-mode" option: "{text}"')
                v["mode"] |= bit
        elif opt.key == "hashlimit-rate-match":
            v["mode"] |= RATE_MATCH
        elif opt.key == "hashlimit-rate-interval":
            r = c_atoll(text)
            r = (r & U32) - (1 << 32) if r & 0x80000000 else r & U32   # atoi() -> int
            if r <= 0:
                raise XtablesError(
                    f'hashlimit: Bad value for "--hashlimit-rate-interval" option: "{text}"')
            v["interval"] = r

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        """hashlimit_mt_check(): runs before the mandatory-option check."""
        v = state.values
        flags = state.flags
        if not flags & {"hashlimit-upto", "hashlimit-above"}:
            raise XtablesError("You have to specify --hashlimit")
        mult = v.get("mult", 1)
        if "hashlimit-htable-expire" not in flags:
            v["expire"] = mult * 1000
        burst = v.get("burst", BURST_DEFAULT)
        mode = v.get("mode", 0)
        if mode & BYTES:
            per = cost_to_bytes(v["avg"])
            nburst = 0
            if "hashlimit-burst" in flags:
                if burst < per:
                    raise XtablesError(f"burst cannot be smaller than {per}b")
                nburst = (burst // per + (1 if burst % per else 0)) & U32
                if "hashlimit-htable-expire" not in flags:
                    v["expire"] = BYTE_EXPIRE_BURST * 1000
            burst = nburst
        elif burst > BURST_MAX:
            raise XtablesError('bad value for option "--hashlimit-burst", '
                               f"or out of range (1-{BURST_MAX}).")
        v["burst"] = burst
        if "hashlimit-rate-match" in flags:
            if not mode & BYTES:
                v["avg"] //= mult
            if not v.get("interval"):
                v["interval"] = 1 if mode & BYTES else mult

    def build(self, state: XtState, ctx: ParseContext) -> HashlimitData:
        v = state.values
        return HashlimitData(
            mode=v.get("mode", 0), avg=v["avg"], burst=v["burst"],
            # the kernel clamps both to HASHLIMIT_MAX_SIZE in the rule it stores
            size=min(v.get("hashlimit-htable-size", 0), MAX_SIZE),
            max=min(v.get("hashlimit-htable-max", 0), MAX_SIZE),
            gc_interval=v.get("hashlimit-htable-gcinterval", GCINTERVAL),
            expire=v.get("hashlimit-htable-expire", v.get("expire", 0)),
            srcmask=v.get("hashlimit-srcmask", 32), dstmask=v.get("hashlimit-dstmask", 32),
            interval=v.get("interval", 0), name=v["hashlimit-name"])

    def _common(self, d: HashlimitData, prefix: str, print_period: bool) -> tuple[str, int]:
        out = ""
        if d.mode & BYTES:
            text, quantum = bytes_text(d.avg, d.burst, prefix if prefix else "")
            out += text
        else:
            period = d.avg
            if print_period and d.interval:
                period = (period * d.interval) & U64
            text, quantum = rate_text(period)
            out += text + f" {prefix}burst {d.burst}"
        if d.mode & HASH_ALL:
            out += f" {prefix}mode" + mode_text(d.mode, "," if prefix else "-")
        return out, quantum

    def _tail(self, d: HashlimitData, quantum: int, p: str) -> str:
        out = ""
        if d.size:
            out += f" {p}htable-size {d.size}"
        if d.max:
            out += f" {p}htable-max {d.max}"
        if d.gc_interval != GCINTERVAL:
            out += f" {p}htable-gcinterval {d.gc_interval}"
        if d.expire != quantum:
            out += f" {p}htable-expire {d.expire}"
        if d.srcmask != 32:
            out += f" {p}srcmask {d.srcmask}"
        if d.dstmask != 32:
            out += f" {p}dstmask {d.dstmask}"
        if d.mode & RATE_MATCH:
            out += f" {p}rate-match"
            if d.interval != 1:
                out += f" {p}rate-interval {d.interval}"
        return out

    def save(self, d: HashlimitData) -> str:
        out = " --hashlimit-above" if d.mode & INVERT else " --hashlimit-upto"
        text, quantum = self._common(d, "--hashlimit-", False)
        return out + text + f" --hashlimit-name {d.name}" + self._tail(d, quantum, "--hashlimit-")

    def print(self, d: HashlimitData, numeric: bool) -> str:
        out = " limit: above" if d.mode & INVERT else " limit: up to"
        text, quantum = self._common(d, "", True)
        return out + text + self._tail(d, quantum, "")

    def kernel_check(self, d: HashlimitData, rule: "Rule", hooks: frozenset[str]) -> bool:
        """hashlimit_mt_check_common() (revision 3, IPv4)."""
        if d.gc_interval == 0 or d.expire == 0 or d.srcmask > 32 or d.dstmask > 32:
            return False
        if d.mode & BYTES:
            if user2credits_byte(d.avg) == 0:
                return False
        elif d.burst == 0 or user2credits(d.avg * d.burst) < user2credits(d.avg):
            raise TableOpError(errno.ERANGE)
        # the table is a /proc/net/ipt_hashlimit entry: no "/" in its name
        return "/" not in d.name

    def lower(self, d: HashlimitData, rule: "Rule") -> list[Any]:
        """No field constraint: the bucket is a per-candidate check the
        compiler attaches to the rule's entry (compiler.rule_hashlimit,
        which refuses a hashlimit that is not the rule's last match)."""
        if d.mode & RATE_MATCH:
            raise NotSupported("--hashlimit-rate-match in the eBPF data path")
        return []

    def matches(self, d: HashlimitData, pkt: "Packet") -> bool:
        """hashlimit_mt_common() (revision 3) for packet and byte rates:
        the table's configuration (its creator's) keys, starts and refills
        the bucket; this rule's decides whether the cost is per packet or
        per byte, and the sense (--hashlimit-above)."""
        table = self.tables.get(d.name)
        if table is None:
            table = self.tables[d.name] = _Table(d, {})
        cfg = table.cfg          # the creating rule's configuration
        if cfg.mode & RATE_MATCH or d.mode & RATE_MATCH:
            raise NotSupported("--hashlimit-rate-match in the reference semantics")
        key = self._key(cfg, pkt)
        now = jiffies(pkt.time)
        bucket = table.buckets.get(key)
        expire = math.ceil(cfg.expire * HZ / 1000)
        if bucket is not None and now >= bucket.expires:
            # the garbage collector frees idle entries (approximately: it
            # runs every gc_interval ms, this drops them as soon as expired)
            del table.buckets[key]
            bucket = None
        if bucket is None and len(table.buckets) >= table_max(cfg):
            # dsthash_alloc_init(): "max count reached", the packet is dropped
            from ..reference.evaluate import HotDrop
            raise HotDrop()
        if bucket is None:
            # rateinfo_init()
            if cfg.mode & BYTES:
                bucket = _Bucket(BYTES_FULL, now, now + expire, cfg.burst,
                                 user2credits_byte(cfg.avg))
            else:
                cap = user2credits(cfg.avg * cfg.burst)
                bucket = _Bucket(cap, now, now + expire, cap, user2credits(cfg.avg))
            table.buckets[key] = bucket
        else:
            bucket.expires = now + expire
            _recalc(bucket, now, cfg.mode)
        cost = bucket.cost
        if d.mode & BYTES:
            cost = _byte_cost(pkt.length, bucket)
        if bucket.credit >= cost:
            bucket.credit -= cost
            return not d.mode & INVERT
        return bool(d.mode & INVERT)

    @staticmethod
    def _key(cfg: HashlimitData, pkt: "Packet") -> tuple[int, ...]:
        key = []
        if cfg.mode & HASH_DIP:
            key.append(pkt.dst & _prefix_mask(cfg.dstmask))
        if cfg.mode & HASH_SIP:
            key.append(pkt.src & _prefix_mask(cfg.srcmask))
        ports = pkt.proto in _PORT_PROTOS
        if cfg.mode & HASH_DPT:
            key.append(pkt.dport if ports else 0)
        if cfg.mode & HASH_SPT:
            key.append(pkt.sport if ports else 0)
        return tuple(key)


def table_id(name: str) -> int:
    """The table's key in the data path's maps: 64 bits of a hash of the
    name (tables are found by name alone, as htable_find_get() does), never
    0 (an entry without hashlimit)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogateescape"),
                                          digest_size=8).digest(), "little") | 1


def default_size() -> int:
    """htable_create()'s bucket count for --hashlimit-htable-size 0: 8192
    above 1 GiB of RAM, else RAM / 16 KiB / 8 (at least 16)."""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return HTABLE_DEFAULT_SIZE
    if kb * 1024 > 1 << 30:
        return HTABLE_DEFAULT_SIZE
    return max(16, kb * 1024 // 16384 // 8)


def table_max(d: HashlimitData) -> int:
    """The table's entry limit as htable_create() sets it: 8 * size when
    not given, never below size."""
    size = d.size or default_size()
    if d.max == 0:
        return 8 * size
    return max(d.max, size)


def _recalc(b: "_Bucket", now: int, mode: int) -> None:
    """rateinfo_recalc() (revision 3; the table's mode), u64 credits."""
    delta = now - b.prev
    if delta == 0:
        return
    b.prev = now
    if mode & BYTES:
        tmp = b.credit
        b.credit = (b.credit + CPJ_BYTES * delta) & U64
        if tmp >= b.credit:      # overflow
            b.credit = BYTES_FULL
            return
        cap = BYTES_FULL
    else:
        b.credit = (b.credit + delta * CREDITS_PER_JIFFY) & U64
        cap = b.cap
    b.credit = min(b.credit, cap)


def _byte_cost(length: int, b: "_Bucket") -> int:
    """hashlimit_byte_cost(): 16-byte chunks of skb->len (the IP datagram
    at these hooks) times the cost, at most a second's credit; a bucket
    without enough credit refills once from its burst (credit_cap, which
    only ever goes down until the entry expires)."""
    tmp = ((length & U32) >> BYTE_SHIFT) + 1
    tmp = min(tmp * b.cost, BYTES_FULL)
    if b.credit < tmp and b.cap:
        b.cap -= 1
        b.credit = BYTES_FULL
    return tmp & U32


def user2credits_byte(user: int) -> int:
    """xt_hashlimit's user2credits_byte(): (u32)((user * HZ * CPJ_BYTES) >> 32),
    ``user`` a u32."""
    max_cpj_bytes = U32 // HZ
    cpj_bytes = 1 << (max_cpj_bytes.bit_length() - 1)   # POW2_BELOW32(MAX_CPJ_BYTES)
    return ((((user & U32) * HZ * cpj_bytes) & U64) >> 32) & U32


# CREDITS_PER_JIFFY_BYTES = POW2_BELOW32(0xFFFFFFFF / HZ), and a second's worth
CPJ_BYTES = 1 << ((U32 // HZ).bit_length() - 1)
BYTES_FULL = CPJ_BYTES * HZ

EXTENSIONS = [HashlimitMatch()]
