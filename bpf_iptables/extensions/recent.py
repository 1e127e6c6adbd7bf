"""-m recent: per-name lists of recently seen addresses (libxt_recent rev 1, xt_recent).

ufw's rate limiting (``ufw limit``) is built on it. The rule's data is
``struct xt_recent_mtinfo_v1``; the address lists are run-time state shared
by every rule naming the same list, kept apart in ``RecentTables`` as the
kernel keeps them per network namespace (/proc/net/xt_recent/NAME).

In the eBPF data path the lists are the namespace's pinned tables
(``datapath/recent.py``, ``bpf/lib/recent.h``) and the match is a
per-candidate check: ``lower()`` adds no field constraint."""
from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import XtablesError
from ..netaddr import int_to_ip
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState
from .limit import HZ, jiffies

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

# XT_RECENT_* bits of check_set
CHECK, SET, UPDATE, REMOVE, TTL, REAP = 1, 2, 4, 8, 16, 32
NAME_LEN = 200                 # char name[XT_RECENT_NAME_LEN], NUL included
# xt_recent module parameter: entries per list (default 100)
IP_LIST_TOT = 100
# recent_mt_check() refuses a --hitcount of XT_RECENT_MAX_NSTAMPS or more
MAX_NSTAMPS = 1 << 16
_ANY_OP = ("set", "rcheck", "update", "remove")
_OPS = (("set", SET), ("rcheck", CHECK), ("update", UPDATE), ("remove", REMOVE))


@dataclass(frozen=True)
class RecentData:
    """``struct xt_recent_mtinfo_v1`` (IPv4)."""

    seconds: int = 0
    hit_count: int = 0
    check_set: int = 0
    invert: bool = False
    name: str = "DEFAULT"
    side_dest: bool = False
    mask: int = 0xFFFFFFFF


@dataclass
class RecentEntry:
    ttl: int
    stamps: list[int] = field(default_factory=list)   # jiffies, oldest first


class RecentTables:
    """The per-name address lists: LRU-ordered, at most IP_LIST_TOT entries,
    each keeping the stamps its most demanding rule needs (stamps_kept)."""

    def __init__(self) -> None:
        self.tables: dict[str, OrderedDict[int, RecentEntry]] = {}
        self.stamps: dict[str, int] = {}

    def table(self, name: str) -> OrderedDict[int, RecentEntry]:
        return self.tables.setdefault(name, OrderedDict())

    def clear(self) -> None:
        self.tables.clear()
        self.stamps.clear()

    def proc_text(self, name: str, now: int) -> str:
        """/proc/net/xt_recent/NAME, oldest entry first (recent_seq_show)."""
        lines = []
        for addr, e in self.table(name).items():
            stamps = ", ".join(str(s) for s in e.stamps)
            lines.append(f"src={int_to_ip(addr)} ttl: {e.ttl} last_seen: {e.stamps[-1]} "
                         f"oldest_pkt: {len(e.stamps)} {stamps}\n")
        return "".join(lines)


def ip_pkt_list_tot() -> int:
    """The module parameter (0 on this kernel: the stamps kept follow
    the largest --hitcount of the list's rules, at least 32)."""
    try:
        with open("/sys/module/xt_recent/parameters/ip_pkt_list_tot") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def stamps_kept(hit_count: int) -> int:
    """nstamps_max_mask + 1 as recent_mt_check() sizes it."""
    tot = ip_pkt_list_tot()
    if tot and hit_count < tot:
        return 1 << (tot - 1).bit_length()
    if hit_count:
        return 1 << (hit_count - 1).bit_length()
    return 32


class RecentMatch(XtOptionsExtension, MatchExtension):
    name = "recent"
    help_text = (
        "recent match options:\n"
        "[!] --set                       Add source address to list, always matches.\n"
        "[!] --rcheck                    Match if source address in list.\n"
        "[!] --update                    Match if source address in list, also update last-seen time.\n"
        "[!] --remove                    Match if source address in list, also removes that address from list.\n"
        "    --seconds seconds           For check and update commands above.\n"
        "                                Specifies that the match will only occur if source address last seen within\n"
        "                                the last 'seconds' seconds.\n"
        "    --reap                      Purge entries older then 'seconds'.\n"
        "                                Can only be used in conjunction with the seconds option.\n"
        "    --hitcount hits             For check and update commands above.\n"
        "                                Specifies that the match will only occur if source address seen hits times.\n"
        "                                May be used in conjunction with the seconds option.\n"
        "    --rttl                      For check and update commands above.\n"
        "                                Specifies that the match will only occur if the source address and the TTL\n"
        "                                match between this packet and the one which was set.\n"
        "                                Useful if you have problems with people spoofing their source address in order\n"
        "                                to DoS you via this module.\n"
        "    --name name                 Name of the recent list to be used.  DEFAULT used if none given.\n"
        "    --rsource                   Match/Save the source address of each packet in the recent list table (default).\n"
        "    --rdest                     Match/Save the destination address of each packet in the recent list table.\n"
        "    --mask netmask              Netmask that will be applied to this recent list.\n"
        "xt_recent by: Stephen Frost <sfrost@snowman.net>.\n")
    xt_options = (
        XtOption("set", invert=True, excl=_ANY_OP),
        XtOption("rcheck", invert=True, excl=_ANY_OP),
        XtOption("update", invert=True, excl=_ANY_OP),
        XtOption("remove", invert=True, excl=_ANY_OP),
        XtOption("seconds", T.UINT32, min=1),
        XtOption("reap", also=("seconds",)),
        XtOption("hitcount", T.UINT32),
        XtOption("rttl", excl=("set", "remove")),
        XtOption("name", T.STRING, size=NAME_LEN),
        XtOption("rsource"),
        XtOption("rdest"),
        XtOption("mask", T.STRING),       # XTTYPE_HOST: see parse_host()
    )

    def __init__(self) -> None:
        self.tables = RecentTables()

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        if opt.name in _ANY_OP and invert:
            state.values["invert"] = True
        if opt.name == "mask":
            state.values["mask"] = parse_host(arg or "")
        if opt.name in ("rsource", "rdest"):
            # the last of the two wins, as in recent_parse()
            state.values["side_dest"] = opt.name == "rdest"

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not any(op in state.flags for op in _ANY_OP):
            raise XtablesError("recent: you must specify one of `--set', `--rcheck' "
                               "`--update' or `--remove'")

    def build(self, state: XtState, ctx: ParseContext) -> RecentData:
        check_set = 0
        for opt, bit in _OPS:
            if opt in state.flags:
                check_set |= bit
        if "rttl" in state.flags:
            check_set |= TTL
        if "reap" in state.flags:
            check_set |= REAP
        return RecentData(state.values.get("seconds", 0), state.values.get("hitcount", 0),
                          check_set, state.values.get("invert", False),
                          state.values.get("name", "DEFAULT"),
                          state.values.get("side_dest", False),
                          state.values.get("mask", 0xFFFFFFFF))

    def _flags_text(self, d: RecentData, words: tuple[str, ...]) -> str:
        return "".join(f" {w}" for bit, w in zip((SET, CHECK, UPDATE, REMOVE), words)
                       if d.check_set & bit)

    def save(self, d: RecentData) -> str:
        out = " !" if d.invert else ""
        out += self._flags_text(d, ("--set", "--rcheck", "--update", "--remove"))
        if d.seconds:
            out += f" --seconds {_c_int(d.seconds)}"
        if d.check_set & REAP:
            out += " --reap"
        if d.hit_count:
            out += f" --hitcount {_c_int(d.hit_count)}"
        if d.check_set & TTL:
            out += " --rttl"
        out += f" --name {d.name} --mask {int_to_ip(d.mask)}"
        return out + (" --rdest" if d.side_dest else " --rsource")

    def print(self, d: RecentData, numeric: bool) -> str:
        out = (" !" if d.invert else "") + " recent:"
        out += self._flags_text(d, ("SET", "CHECK", "UPDATE", "REMOVE"))
        if d.seconds:
            out += f" seconds: {_c_int(d.seconds)}"
        if d.check_set & REAP:
            out += " reap"
        if d.hit_count:
            out += f" hit_count: {_c_int(d.hit_count)}"
        if d.check_set & TTL:
            out += " TTL-Match"
        out += f" name: {d.name} side: {'dest' if d.side_dest else 'source'}"
        return out + f" mask: {int_to_ip(d.mask)}"

    def kernel_check(self, d: RecentData, rule: "Rule", hooks: frozenset[str]) -> bool:
        """recent_mt_check()."""
        if d.hit_count >= MAX_NSTAMPS or (ip_pkt_list_tot() and d.hit_count > ip_pkt_list_tot()):
            return False
        if d.check_set & (SET | REMOVE) and (d.seconds or d.hit_count or d.check_set & (TTL | REAP)):
            return False
        if d.check_set & REAP and not d.seconds:
            return False
        # the list is a /proc/net/xt_recent entry: no "/" in its name
        if not d.name or "/" in d.name:
            return False
        # the rule holds its list, sized for the most demanding rule: a rule
        # needing more stamps than the list keeps flushes it (as the kernel
        # does when the rule is loaded; the model's lists then keep what
        # the kernel's keep from the first packet on)
        need = stamps_kept(d.hit_count)
        have = self.tables.stamps.get(d.name)
        if have is not None and need > have:
            self.tables.table(d.name).clear()
        self.tables.stamps[d.name] = max(have or 0, need)
        return True

    def lower(self, d: RecentData, rule: "Rule") -> list[Any]:
        """No field constraint: the list is consulted per candidate, once
        every other match of the rule held (compiler.rule_stateful refuses
        a recent match that is not the rule's last)."""
        return []

    def matches(self, d: RecentData, pkt: "Packet") -> bool:
        """recent_mt() for IPv4."""
        now = jiffies(pkt.time)
        addr = (pkt.dst if d.side_dest else pkt.src) & d.mask
        ttl = pkt.ttl
        if pkt.hook == "FORWARD":
            # a packet with an output device and no socket: the kernel
            # compares the TTL it arrived with (before the forwarding
            # decrement), so that --rttl lists agree across hooks
            ttl = (ttl + 1) & 0xFF
        table = self.tables.table(d.name)
        # a list keeps as many stamps as its most demanding rule needs
        self.tables.stamps[d.name] = max(self.tables.stamps.get(d.name, 0),
                                         stamps_kept(d.hit_count))
        ret = d.invert
        entry = table.get(addr)
        # recent_entry_lookup(): a TTL of 0 on either side matches any
        want = ttl if d.check_set & TTL else 0
        if entry is not None and not (want == entry.ttl or want == 0 or entry.ttl == 0):
            entry = None
        if entry is None:
            if not d.check_set & SET:
                return ret
            if len(table) >= IP_LIST_TOT:
                table.popitem(last=False)   # the least recently updated goes
            table[addr] = RecentEntry(ttl, [now])
            return not ret
        if d.check_set & SET:
            ret = not ret
        elif d.check_set & REMOVE:
            del table[addr]
            return not ret
        else:
            since = now - ((d.seconds * HZ) & 0xFFFFFFFF)   # u32 in the kernel
            hits = 0
            for stamp in entry.stamps:
                if d.seconds and since > stamp:
                    continue
                hits += 1
                if not d.hit_count or hits >= d.hit_count:
                    ret = not ret
                    break
            if d.check_set & REAP and table:
                # recent_entry_reap(): the table's oldest entry goes when its
                # newest stamp is older than the window (not this entry's)
                oldest = next(iter(table))
                if since > table[oldest].stamps[-1]:
                    del table[oldest]
                    if oldest == addr:
                        return ret
        if d.check_set & SET or (d.check_set & UPDATE and ret):
            keep = self.tables.stamps.get(d.name, 32)
            entry.stamps = (entry.stamps + [now])[-keep:]
            entry.ttl = ttl
            table.move_to_end(addr)
        return ret


def parse_host(text: str) -> int:
    """xtopt_parse_host(): getaddrinfo() for AF_INET, the first address."""
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_INET)
    except socket.gaierror as err:
        raise XtablesError(f"getaddrinfo: {err.strerror}\n") from None
    except (UnicodeError, ValueError):
        raise XtablesError("getaddrinfo: Name or service not known\n") from None
    return int.from_bytes(socket.inet_aton(infos[0][4][0]), "big")


def _c_int(value: int) -> int:
    """printf("%d") of a u32 field."""
    return value - (1 << 32) if value >= 1 << 31 else value


EXTENSIONS = [RecentMatch()]
