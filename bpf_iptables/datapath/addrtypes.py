"""Address types (``-m addrtype``) from the namespace's routing tables.

xt_addrtype asks ``inet_dev_addr_type()`` for the type of an address: 0/8
and 255.255.255.255 are BROADCAST, 224/4 MULTICAST; anything else is the
type of the route a lookup of the address finds in the local table
(RT_TABLE_LOCAL). While the namespace has no policy-routing rules of its
own the kernel keeps the local and main tables as one trie (``fib_new_table``
aliases them), so that lookup sees the main table's routes too (a
``local`` route added to main makes its addresses LOCAL: checked against
iptables-legacy). The most specific route wins; a route whose type is an
error for a lookup (blackhole, unreachable, prohibit, throw, nat,
xresolve) makes the lookup fail, and a failed lookup (or none) gives
UNICAST. Routes with a TOS are skipped (the lookup's TOS is 0).

So the type is a function of the address alone (without
``--limit-iface-in/out``), a partition of the address space this module
reads by netlink (RTM_GETROUTE, RTM_GETRULE dumps: no pyroute2 import,
~1 ms for a namespace's few routes) and turns into address constraints
(``address_types``, ``as_prefixes``). With a limit, a route on another
device than the packet's gives UNICAST: the compiler decides that for a
device the rule names, and otherwise the data path tests it per packet
against the routes as an LPM trie (``lpm_items``).

The first addrtype match a process lowers takes a snapshot; from then on
every compile of the process reads the routes again and drops cached
decompositions when they changed (``compiler._compile_chain``); the
interface watcher re-runs the update when addresses or routes change
(``watch.py``). Not modelled: VRF devices (a device enslaved to one looks
up the VRF's table) and a multipath route's dead first next hop."""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from ..netaddr import IPv4Net, cidr_blocks

RTN_UNSPEC, RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST = range(6)
# fib_props[type].error < 0: fib_table_lookup() fails on these
LOOKUP_ERRORS = frozenset(range(6, 12))
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
TOP = 0xFFFFFFFF

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETROUTE, RTM_GETRULE = 26, 34
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 6, 9, 15
FRA_PRIORITY, FRA_TABLE = 6, 15
RTNH_F_DEAD = 1
# the three rules of a namespace without policy routing: (priority, table)
DEFAULT_RULES = frozenset({(0, RT_TABLE_LOCAL), (32766, RT_TABLE_MAIN), (32767, 253)})


@dataclass(frozen=True)
class Route:
    table: int
    addr: int          # host order
    length: int
    type: int          # RTN_*
    priority: int
    oif: int           # the first next hop's device (0: none)


def _dump(msg_type: int, body: bytes) -> list[tuple[bytes, dict[int, bytes]]]:
    """One rtnetlink dump of family AF_INET: per message its fixed header
    (12 bytes: struct rtmsg / fib_rule_hdr) and attributes."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        req = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        sock.send(req + body)
        out = []
        while True:
            data = sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(err, f"rtnetlink dump: {os.strerror(err)}")
                fixed = data[off + 16:off + 28]
                attrs: dict[int, bytes] = {}
                a = off + 28
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    attrs[atype & 0x3FFF] = data[a + 4:a + alen]
                    a += (alen + 3) & ~3
                out.append((fixed, attrs))
                off += (length + 3) & ~3
    finally:
        sock.close()


def _u32(attrs: dict[int, bytes], key: int, default: int = 0) -> int:
    v = attrs.get(key)
    return struct.unpack("=I", v[:4])[0] if v and len(v) >= 4 else default


def read_routes() -> tuple[tuple[Route, ...], bool]:
    """The IPv4 routes of the local and main tables, and whether the two
    are merged (no policy-routing rules beyond the default three)."""
    rtmsg = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    routes = []
    for fixed, attrs in _dump(RTM_GETROUTE, rtmsg):
        _, dst_len, _, tos, table, _, _, rtype, flags = struct.unpack("=BBBBBBBBI", fixed)
        table = _u32(attrs, RTA_TABLE, table)
        if table not in (RT_TABLE_LOCAL, RT_TABLE_MAIN) or tos or flags & RTNH_F_DEAD:
            continue   # lookups skip routes with a TOS (theirs is 0) and dead ones
        dst = attrs.get(RTA_DST)
        addr = struct.unpack("!I", dst[:4])[0] if dst else 0
        oif = _u32(attrs, RTA_OIF)
        mp = attrs.get(RTA_MULTIPATH)
        if not oif and mp and len(mp) >= 8:   # struct rtnexthop: len, flags, hops, ifindex
            oif = struct.unpack_from("=i", mp, 4)[0]
        routes.append(Route(table, addr, dst_len, rtype, _u32(attrs, RTA_PRIORITY), oif))
    rules = set()
    for fixed, attrs in _dump(RTM_GETRULE, rtmsg):
        table = _u32(attrs, FRA_TABLE, fixed[4])
        rules.add((_u32(attrs, FRA_PRIORITY), table))
    return tuple(sorted(routes, key=lambda r: (r.addr, r.length, r.table, r.priority))), \
        rules == DEFAULT_RULES


@dataclass(frozen=True)
class AddressTypes:
    """The type of every IPv4 address: disjoint inclusive intervals
    (lo, hi, RTN_*) covering 0..2^32-1 in order."""

    intervals: tuple[tuple[int, int, int], ...]

    def type_of(self, addr: int) -> int:
        for lo, hi, t in self.intervals:
            if lo <= addr <= hi:
                return t
        raise ValueError(addr)

    def ranges(self, mask: int) -> list[tuple[int, int]]:
        """The address ranges whose type's bit is set in ``mask`` (merged)."""
        out: list[tuple[int, int]] = []
        for lo, hi, t in self.intervals:
            if mask >> t & 1:
                if out and out[-1][1] + 1 == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out


def _paint(intervals: list[tuple[int, int, int]], lo: int, hi: int, t: int
           ) -> list[tuple[int, int, int]]:
    """``intervals`` with [lo, hi] set to type t."""
    out = []
    for a, b, u in intervals:
        if b < lo or a > hi:
            out.append((a, b, u))
            continue
        if a < lo:
            out.append((a, lo - 1, u))
        if b > hi:
            out.append((hi + 1, b, u))
    out.append((lo, hi, t))
    return sorted(out)


def _winners(routes: tuple[Route, ...], merged: bool) -> dict[tuple[int, int], Route]:
    """Per prefix (addr, length), the route a lookup meets first: the
    local table's (checked against iptables-legacy: whatever the metrics),
    then the lowest priority."""
    best: dict[tuple[int, int], Route] = {}
    for r in routes:
        if r.table != RT_TABLE_LOCAL and not merged:
            continue
        key = (r.addr, r.length)
        rank = (r.table != RT_TABLE_LOCAL, r.priority)
        have = best.get(key)
        if have is None or rank < (have.table != RT_TABLE_LOCAL, have.priority):
            best[key] = r
    return best


def address_types(routes: tuple[Route, ...], merged: bool, dev: int | None = None
                  ) -> AddressTypes:
    """__inet_dev_addr_type() for every address, without a device (None)
    or for device ``dev`` (--limit-iface-in/out: a route whose first next
    hop is on another device gives UNICAST)."""
    best = _winners(routes, merged)
    # the most specific route decides: walk the (nesting) prefixes in
    # address order, longest last, with a stack of the open ones
    out: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int]] = [(TOP, RTN_UNICAST)]   # (end, type)
    pos = 0

    def emit(hi: int, t: int) -> None:
        nonlocal pos
        if pos <= hi:
            if out and out[-1][2] == t and out[-1][1] + 1 == pos:
                out[-1] = (out[-1][0], hi, t)
            else:
                out.append((pos, hi, t))
            pos = hi + 1

    for (addr, length), r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        end = addr + (1 << (32 - length)) - 1
        while stack[-1][0] < addr:
            emit(*stack.pop())
        emit(addr - 1, stack[-1][1])
        own = dev is None or r.oif == dev
        stack.append((end, RTN_UNICAST if r.type in LOOKUP_ERRORS or not own else r.type))
    while stack:
        emit(*stack.pop())
    intervals = out
    intervals = _paint(intervals, 0, 0x00FFFFFF, RTN_BROADCAST)         # ipv4_is_zeronet
    intervals = _paint(intervals, 0xE0000000, 0xEFFFFFFF, RTN_MULTICAST)
    intervals = _paint(intervals, TOP, TOP, RTN_BROADCAST)              # ipv4_is_lbcast
    return AddressTypes(tuple(intervals))


ANY_DEVICE = 0xFFFFFFFF   # an lpm_items() type that holds on every device
LPM_MAX = 4096            # atype_lpm's size (filter.c): routes + 4


def lpm_items(routes: tuple[Route, ...], merged: bool) -> list[tuple[int, int, int, int]]:
    """The routes as the data path's LPM trie for --limit-iface-in/out
    (filter.c FIELD_ATCHECK): (length, addr, type, device), the device
    being the route's first next hop, whose packets see ``type`` (others
    UNICAST), or ANY_DEVICE. The special ranges come first in the kernel
    (``__inet_dev_addr_type``), so routes inside them are left out and
    the ranges themselves put in; a lookup error (or no route) is UNICAST."""
    specials = {(0, 8): RTN_BROADCAST, (0xE0000000, 4): RTN_MULTICAST, (TOP, 32): RTN_BROADCAST}
    items = {(0, 0): (RTN_UNICAST, ANY_DEVICE)}
    for (addr, length), r in _winners(routes, merged).items():
        if any(length >= n and addr >> (32 - n) == a >> (32 - n) for a, n in specials):
            continue
        items[(addr, length)] = ((RTN_UNICAST, ANY_DEVICE) if r.type in LOOKUP_ERRORS
                                 else (r.type, r.oif))
    for key, t in specials.items():
        items[key] = (t, ANY_DEVICE)
    if len(items) > LPM_MAX:
        from ..errors import NotSupported

        raise NotSupported(f"-m addrtype --limit-iface-in/out with more than {LPM_MAX - 4} "
                           "routes in the eBPF data path")
    return [(length, addr, t, dev) for (addr, length), (t, dev) in sorted(items.items())]


prefixes_of = cidr_blocks   # [lo, hi] as the fewest (addr, length) blocks


def as_prefixes(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int] | None,
                                                         list[tuple[int, int]]] | None:
    """A set of addresses (merged ranges) as one positive prefix (None:
    any address) and negative prefixes: the smallest block holding the
    set, less the blocks of the block not in the set. None: the empty set."""
    if not ranges:
        return None
    lo, hi = ranges[0][0], ranges[-1][1]
    length = 0
    while length < 32 and (lo >> (31 - length)) == (hi >> (31 - length)):
        length += 1
    base = (lo >> (32 - length) << (32 - length)) if length else 0
    end = base + (1 << (32 - length)) - 1
    holes: list[tuple[int, int]] = []
    nxt = base
    for a, b in ranges:
        if a > nxt:
            holes += prefixes_of(nxt, a - 1)
        nxt = b + 1
    if nxt <= end:
        holes += prefixes_of(nxt, end)
    return ((base, length) if length else None), holes


def net(addr: int, length: int) -> IPv4Net:
    return IPv4Net(addr, (TOP << (32 - length)) & TOP)


# -- the snapshot a compile uses ------------------------------------------------

_current: AddressTypes | None = None
_current_key: tuple | None = None
_per_device: dict[str, AddressTypes] = {}
# whether this process lowered an addrtype match: only then does a compile
# read the routes again (``compiler._compile_chain``), so rule sets without
# addrtype pay nothing
used = False


def refresh() -> bool:
    """Read the namespace's routes again; True when the types changed
    since the last refresh of this process (decompositions made with the
    old ones are stale)."""
    global _current, _current_key
    routes, merged = read_routes()
    key = (routes, merged)
    if key == _current_key:
        return False
    _current, _current_key = address_types(routes, merged), key
    _per_device.clear()
    return True


def current() -> AddressTypes:
    """The snapshot taken by the last ``refresh()`` (one first if none)."""
    global used
    used = True
    if _current is None:
        refresh()
    assert _current is not None
    return _current


def current_for(device: str) -> AddressTypes:
    """The snapshot's types as seen from interface ``device`` (one that
    does not exist owns no route)."""
    types = _per_device.get(device)
    if types is None:
        current()
        assert _current_key is not None
        try:
            index = socket.if_nametoindex(device)
        except OSError:
            index = -1
        types = _per_device[device] = address_types(*_current_key, dev=index)
    return types


def current_lpm() -> list[tuple[int, int, int, int]]:
    """``lpm_items()`` of the snapshot."""
    current()
    assert _current_key is not None
    return lpm_items(*_current_key)


def forget() -> None:
    """Drop the snapshot (tests: the namespace they read is gone)."""
    global _current, _current_key, used
    _current, _current_key, used = None, None, False
    _per_device.clear()


def digest() -> tuple:
    """What the types depend on, for the watcher to compare."""
    return read_routes()
