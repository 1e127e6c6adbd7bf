"""-m conntrack: connection-tracking state, tuple, status, expiry and
direction (libxt_conntrack revision 3, kernel xt_conntrack).

iptables 1.8.9 resolves ``-m conntrack`` to revision 3 of the kernel match;
its data is struct xt_conntrack_mtinfo3: a match-flags word, an invert-flags
word, the four tuple addresses with their masks, four port ranges, state and
status masks and an expiry range. ``ConntrackData`` holds exactly those
fields (all zero when not given) so that rule equality for ``-C``/``-D`` is
the kernel's byte comparison.

``-m state`` is an alias of the same kernel match (see state.py); the pieces
both need live here.

No NAT exists in bpf-iptables: ``--ctstate SNAT,DNAT`` is accepted and
printed exactly as iptables does, but a packet's conntrack entry never has
the SRC_NAT/DST_NAT status bits, so those state bits never match."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import XtablesError
from ..netaddr import int_to_ip, ip_to_int, ipaddr_to_anyname, ipmask_to_numeric, mask_to_cidr
from ..numbers import strtoul
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..reference.packet import Conntrack, CtTuple, Packet

# match_flags / invert_flags bits (linux/netfilter/xt_conntrack.h)
F_STATE = 1 << 0
F_PROTO = 1 << 1
F_ORIGSRC = 1 << 2
F_ORIGDST = 1 << 3
F_REPLSRC = 1 << 4
F_REPLDST = 1 << 5
F_STATUS = 1 << 6
F_EXPIRES = 1 << 7
F_ORIGSRC_PORT = 1 << 8
F_ORIGDST_PORT = 1 << 9
F_REPLSRC_PORT = 1 << 10
F_REPLDST_PORT = 1 << 11
F_DIRECTION = 1 << 12
F_STATE_ALIAS = 1 << 13
# XT_INV_PROTO (0x40) is what libxt_conntrack tests for "! --ctproto 0", but
# in invert_flags that bit is XT_CONNTRACK_STATUS; iptables really checks it.
XT_INV_PROTO = 0x40

# state_mask bits: XT_CONNTRACK_STATE_BIT(ctinfo) = 1 << (ctinfo % 3 + 1)
S_INVALID = 1 << 0
S_ESTABLISHED = 1 << 1
S_RELATED = 1 << 2
S_NEW = 1 << 3
S_SNAT = 1 << 6
S_DNAT = 1 << 7
S_UNTRACKED = 1 << 8

# Parse order is the order libxt_conntrack tries names in (prefix matches
# take the first hit); print order is print_state()'s.
CTSTATE_NAMES = (("INVALID", S_INVALID), ("NEW", S_NEW), ("ESTABLISHED", S_ESTABLISHED),
                 ("RELATED", S_RELATED), ("UNTRACKED", S_UNTRACKED), ("SNAT", S_SNAT),
                 ("DNAT", S_DNAT))
STATE_PRINT_ORDER = (("INVALID", S_INVALID), ("NEW", S_NEW), ("RELATED", S_RELATED),
                     ("ESTABLISHED", S_ESTABLISHED), ("UNTRACKED", S_UNTRACKED),
                     ("SNAT", S_SNAT), ("DNAT", S_DNAT))
# -m state knows no NAT states
STATE_ALIAS_NAMES = CTSTATE_NAMES[:5]

# ct->status bits (IPS_*)
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
CTSTATUS_NAMES = (("NONE", 0), ("EXPECTED", IPS_EXPECTED), ("SEEN_REPLY", IPS_SEEN_REPLY),
                  ("ASSURED", IPS_ASSURED), ("CONFIRMED", IPS_CONFIRMED))


def ncase_prefix(token: str, name: str) -> bool:
    """strncasecmp(token, name, strlen(token)) == 0: token is a
    case-insensitive prefix of name (the empty token matches anything)."""
    return len(token) <= len(name) and name[:len(token)].lower() == token.lower()


def parse_name_list(arg: str, names: tuple[tuple[str, int], ...], what: str) -> int:
    """conntrack_ps_states()/conntrack_ps_statuses(): comma-separated names,
    each a prefix of a known name; errors quote the rest of the list."""
    mask = 0
    rest = arg
    while "," in rest:
        head, _, tail = rest.partition(",")
        hit = next((bit for name, bit in names if ncase_prefix(head, name)), None) if head else None
        if hit is None:
            raise XtablesError(f'Bad {what} "{rest}"')
        mask |= hit
        rest = tail
    hit = next((bit for name, bit in names if ncase_prefix(rest, name)), None) if rest else None
    if hit is None:
        raise XtablesError(f'Bad {what} "{rest}"')
    return mask | hit


def state_text(mask: int) -> str:
    return ",".join(name for name, bit in STATE_PRINT_ORDER if mask & bit)


def status_text(mask: int) -> str:
    names = [name for name, bit in CTSTATUS_NAMES[1:] if mask & bit]
    return ",".join(names) if names else "NONE"


# --- XTTYPE_HOSTMASK as libxtables parses it (no masking of the address) -----

def _getaddrinfo_host(text: str) -> int:
    """xtopt_parse_host(): one IPv4 address via getaddrinfo()."""
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_INET)
    except socket.gaierror as exc:
        raise XtablesError(f"getaddrinfo: {exc.strerror}\n") from None
    except (UnicodeError, ValueError):
        raise XtablesError("getaddrinfo: Name or service not known\n") from None
    addrs = {ip_to_int(info[4][0]) for info in infos}
    if len(addrs) > 1:
        raise XtablesError(f"{text} resolves to more than one address\n")
    return addrs.pop()


def _parse_plen(ext: str, opt: str, text: str) -> int:
    """xtopt_parse_plenmask(): a prefix length 0-32 (any base) or a dotted
    mask; a non-contiguous mask ends up as /32 (hlen overflows to 255)."""
    length = strtoul(text, 0, 32)
    if length is None:
        try:
            infos = socket.getaddrinfo(text, None, socket.AF_INET, 0, 0, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError, ValueError):
            raise XtablesError(
                f'{ext}: bad value for option "--{opt}", neither a valid network mask '
                f"nor valid CIDR (0-32).\n") from None
        length = mask_to_cidr(ip_to_int(infos[0][4][0]))
        if length < 0:
            return 0xFFFFFFFF
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


def parse_hostmask(ext: str, opt: str, text: str) -> tuple[int, int]:
    if "/" not in text:
        return _getaddrinfo_host(text), 0xFFFFFFFF
    host, _, plen = text.partition("/")
    addr = _getaddrinfo_host(host)
    return addr, _parse_plen(ext, opt, plen)


# --- data ----------------------------------------------------------------------

@dataclass(frozen=True)
class ConntrackData:
    """struct xt_conntrack_mtinfo3 (addresses and masks as host-order ints)."""

    match_flags: int = 0
    invert_flags: int = 0
    origsrc: tuple[int, int] = (0, 0)
    origdst: tuple[int, int] = (0, 0)
    replsrc: tuple[int, int] = (0, 0)
    repldst: tuple[int, int] = (0, 0)
    l4proto: int = 0
    origsrc_port: tuple[int, int] = (0, 0)
    origdst_port: tuple[int, int] = (0, 0)
    replsrc_port: tuple[int, int] = (0, 0)
    repldst_port: tuple[int, int] = (0, 0)
    state_mask: int = 0
    status_mask: int = 0
    expires: tuple[int, int] = (0, 0)

    def has(self, flag: int) -> bool:
        return bool(self.match_flags & flag)

    def inv(self, flag: int) -> bool:
        return bool(self.invert_flags & flag)


_ADDR_OPTS = (("ctorigsrc", F_ORIGSRC, "origsrc"), ("ctorigdst", F_ORIGDST, "origdst"),
              ("ctreplsrc", F_REPLSRC, "replsrc"), ("ctrepldst", F_REPLDST, "repldst"))
_PORT_OPTS = (("ctorigsrcport", F_ORIGSRC_PORT, "origsrc_port"),
              ("ctorigdstport", F_ORIGDST_PORT, "origdst_port"),
              ("ctreplsrcport", F_REPLSRC_PORT, "replsrc_port"),
              ("ctrepldstport", F_REPLDST_PORT, "repldst_port"))


# --- rendering (conntrack_dump) ------------------------------------------------

def _dump_addr(net: tuple[int, int], numeric: bool) -> str:
    addr, mask = net
    if not numeric and addr == 0:
        return " anywhere"
    base = int_to_ip(addr) if numeric else ipaddr_to_anyname(addr)
    return f" {base}{ipmask_to_numeric(mask)}"


def _dump_ports(prefix: str, opt: str, rng: tuple[int, int]) -> str:
    lo, hi = rng
    if hi == 0 or lo == hi:
        return f" {prefix}{opt} {lo}"
    return f" {prefix}{opt} {lo}:{hi}"


def conntrack_dump(d: ConntrackData, prefix: str, numeric: bool) -> str:
    out: list[str] = []

    def bang(flag: int) -> None:
        if d.inv(flag):
            out.append(" !")

    if d.has(F_STATE):
        bang(F_STATE)
        name = "state" if d.has(F_STATE_ALIAS) else "ctstate"
        out.append(f" {prefix}{name} {state_text(d.state_mask)}")
    if d.has(F_PROTO):
        bang(F_PROTO)
        out.append(f" {prefix}ctproto {d.l4proto}")
    for opt, flag, attr in _ADDR_OPTS:
        if d.has(flag):
            bang(flag)
            out.append(f" {prefix}{opt}" + _dump_addr(getattr(d, attr), numeric))
    for opt, flag, attr in _PORT_OPTS:
        if d.has(flag):
            bang(flag)
            out.append(_dump_ports(prefix, opt, getattr(d, attr)))
    if d.has(F_STATUS):
        bang(F_STATUS)
        out.append(f" {prefix}ctstatus {status_text(d.status_mask)}")
    if d.has(F_EXPIRES):
        bang(F_EXPIRES)
        lo, hi = d.expires
        out.append(f" {prefix}ctexpire {lo}" if lo == hi else f" {prefix}ctexpire {lo}:{hi}")
    if d.has(F_DIRECTION):
        out.append(f" {prefix}ctdir {'REPLY' if d.inv(F_DIRECTION) else 'ORIGINAL'}")
    return "".join(out)


# --- reference semantics (xt_conntrack.c conntrack_mt, revision 3) -----------

_CT_STATE_BITS = {"NEW": S_NEW, "ESTABLISHED": S_ESTABLISHED, "RELATED": S_RELATED}
_CT_STATUS_BITS = {name: bit for name, bit in CTSTATUS_NAMES[1:]}


def _tuples(pkt: "Packet", ct: "Conntrack") -> tuple["CtTuple", "CtTuple"]:
    """The entry's original and reply tuples; when the input leaves them out,
    derive them from the packet and its direction (no NAT: reply = swap)."""
    from ..reference.packet import CtTuple

    here = CtTuple(pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport)
    back = CtTuple(pkt.dst, pkt.src, pkt.proto, pkt.dport, pkt.sport)
    if ct.direction == "REPLY":
        here, back = back, here
    return ct.original or here, ct.reply or back


def conntrack_matches(d: ConntrackData, pkt: "Packet") -> bool:
    ct = pkt.ct
    tracked = ct is not None and ct.state in _CT_STATE_BITS
    if tracked:
        statebit = _CT_STATE_BITS[ct.state]
        # IPS_SRC_NAT/IPS_DST_NAT never occur: there is no NAT, so the SNAT
        # and DNAT state bits are never added here.
    elif ct is not None and ct.state == "UNTRACKED":
        statebit = S_UNTRACKED
    else:
        statebit = S_INVALID

    if d.has(F_STATE):
        if bool(d.state_mask & statebit) == d.inv(F_STATE):
            return False
    if not tracked:
        return d.has(F_STATE)
    assert ct is not None

    if d.has(F_DIRECTION) and (ct.direction == "ORIGINAL") == d.inv(F_DIRECTION):
        return False
    orig, repl = _tuples(pkt, ct)
    for flag, attr, value in ((F_ORIGSRC, "origsrc", orig.src), (F_ORIGDST, "origdst", orig.dst),
                              (F_REPLSRC, "replsrc", repl.src), (F_REPLDST, "repldst", repl.dst)):
        if d.has(flag):
            addr, mask = getattr(d, attr)
            if (((value ^ addr) & mask) == 0) == d.inv(flag):
                return False
    if d.has(F_PROTO) and (orig.proto == d.l4proto) == d.inv(F_PROTO):
        return False
    for flag, attr, port in ((F_ORIGSRC_PORT, "origsrc_port", orig.sport),
                             (F_ORIGDST_PORT, "origdst_port", orig.dport),
                             (F_REPLSRC_PORT, "replsrc_port", repl.sport),
                             (F_REPLDST_PORT, "repldst_port", repl.dport)):
        if d.has(flag):
            lo, hi = getattr(d, attr)
            if (lo <= port <= hi) == d.inv(flag):
                return False
    if d.has(F_STATUS):
        status = 0
        for name in ct.status:
            status |= _CT_STATUS_BITS.get(name, 0)
        if bool(d.status_mask & status) == d.inv(F_STATUS):
            return False
    if d.has(F_EXPIRES):
        lo, hi = d.expires
        if (lo <= ct.expires <= hi) == d.inv(F_EXPIRES):
            return False
    return True


# --- the extension ---------------------------------------------------------------

class ConntrackDataMatch(MatchExtension):
    """Text and semantics of a ``ConntrackData``, shared by -m conntrack
    and -m state (which is the same kernel match with an alias flag)."""

    def save(self, data: ConntrackData) -> str:
        return conntrack_dump(data, "--", True)

    def print(self, data: ConntrackData, numeric: bool) -> str:
        return conntrack_dump(data, "", numeric)

    def matches(self, data: ConntrackData, packet: "Packet") -> bool:
        return conntrack_matches(data, packet)

    def lower(self, data: ConntrackData, rule: Any) -> list[Any]:
        """On the ctstate field (slot: the packet's state, direction and
        status bits after the tracker saw it, bpf/lib/conntrack_defs.h):
        --ctstate/--state, --ctdir and --ctstatus select slots.

        --ctproto, the tuple addresses and ports and --ctexpire compare the
        connection's tuples and lifetime (for RELATED: the flow the ICMP
        error quotes), and are skipped for a packet without a connection
        (INVALID, UNTRACKED: xt_conntrack returns after the state test).
        When --ctstate allows only NEW and ESTABLISHED in one direction, the
        tuple is the packet's own (no NAT), so they become ordinary
        protocol, address and port constraints; otherwise (and always for
        --ctexpire) a per-candidate check (fields.CtCheck, ctcheck_map).
        SNAT/DNAT states are refused: there is no NAT to give them."""
        from ..datapath import fields as dp  # only when compiling for the data path
        from ..errors import NotSupported

        if dp.nf_conntrack():
            return _lower_netfilter(data)
        if data.has(F_STATE) and data.state_mask & (S_SNAT | S_DNAT):
            raise NotSupported("--ctstate SNAT/DNAT (bpf-iptables has no NAT; "
                               "`bpf-iptables-datapath attach --mode netfilter' has)")
        slots = 0
        for slot in range(dp.CT_SLOTS):
            state, direction, status = slot & 3, (slot >> 2) & 1, (slot >> 3) << 1
            if slot_matches(data, state, direction, status):
                slots |= 1 << slot
        out: list[Any] = [dp.CtstateConstraint(slots)]
        tuple_flags = F_PROTO | _ADDR_FLAGS | _PORT_FLAGS
        if not data.match_flags & (tuple_flags | F_EXPIRES):
            return out
        fields = _as_fields(data, slots)
        if fields is not None:
            return out + fields
        return out + [ct_check(data)]


_SLOT_STATE_BITS = (S_INVALID, S_NEW, S_ESTABLISHED, S_RELATED)
# --mode netfilter's slot (fields.NF_CT_SLOTS): state 4 is UNTRACKED
_NF_STATE_BITS = (S_INVALID, S_NEW, S_ESTABLISHED, S_RELATED, S_UNTRACKED)
IPS_SRC_NAT, IPS_DST_NAT = 0x10, 0x20


def _lower_netfilter(data: ConntrackData) -> list[Any]:
    """--mode netfilter: the packet's slot comes from the kernel's own
    entry (state incl. UNTRACKED, direction, IPS_* bits incl. SNAT/DNAT),
    and the tuple and expiry tests read its tuples: always a per-candidate
    check (with NAT the tuples are not the packet's own addresses)."""
    from ..datapath import fields as dp

    slots = 0
    for slot in range(dp.NF_CT_SLOTS):
        if nf_slot_matches(data, slot):
            slots |= 1 << slot
    out: list[Any] = [dp.CtstateConstraint(slots)]
    if data.match_flags & (F_PROTO | _ADDR_FLAGS | _PORT_FLAGS | F_EXPIRES):
        out.append(ct_check(data))
    return out


def nf_slot_matches(d: ConntrackData, slot: int) -> bool:
    """xt_conntrack's conntrack_mt() (and xt_state's state_mt()) for a
    packet whose kernel conntrack facts are ``slot`` (fields.NF_CT_SLOTS),
    tuple and expiry tests aside."""
    state, direction, status = slot & 7, (slot >> 3) & 1, slot >> 4
    if state >= len(_NF_STATE_BITS):
        return False
    statebit = _NF_STATE_BITS[state]
    tracked = state in (1, 2, 3)
    if tracked:
        # the virtual states, from the entry's status (conntrack_mt)
        statebit |= (S_SNAT if status & IPS_SRC_NAT else 0) | (S_DNAT if status & IPS_DST_NAT else 0)
    if d.has(F_STATE) and bool(d.state_mask & statebit) == d.inv(F_STATE):
        return False
    if not tracked:
        return d.has(F_STATE)
    if d.has(F_DIRECTION) and (direction == 0) == d.inv(F_DIRECTION):
        return False
    if d.has(F_STATUS) and bool(d.status_mask & status) == d.inv(F_STATUS):
        return False
    return True
_ADDR_FLAGS = F_ORIGSRC | F_ORIGDST | F_REPLSRC | F_REPLDST
_PORT_FLAGS = F_ORIGSRC_PORT | F_ORIGDST_PORT | F_REPLSRC_PORT | F_REPLDST_PORT


def ct_check(data: ConntrackData) -> Any:
    """The tuple and expiry tests of ``data`` as a per-candidate check."""
    from ..datapath.fields import CtCheck

    keep = F_PROTO | _ADDR_FLAGS | _PORT_FLAGS | F_EXPIRES
    addrs = [getattr(data, attr) for _, _, attr in _ADDR_OPTS]
    ports = [getattr(data, attr) for _, _, attr in _PORT_OPTS]
    return CtCheck(flags=data.match_flags & keep, inv=data.invert_flags & keep,
                   addr=tuple(a & m for a, m in addrs), mask=tuple(m for _, m in addrs),
                   plo=tuple(lo for lo, _ in ports), phi=tuple(hi for _, hi in ports),
                   proto=data.l4proto, exp_lo=data.expires[0], exp_hi=data.expires[1])


def _as_fields(data: ConntrackData, slots: int) -> list[Any] | None:
    """The tuple tests as the packet's own protocol, address and port
    constraints, when every slot the match lets through is a NEW or
    ESTABLISHED packet of one direction (its connection's tuple is then
    its own, turned around in the reply direction) and no --ctexpire;
    None otherwise."""
    from ..datapath import fields as dp
    from ..netaddr import IPv4Net

    if data.has(F_EXPIRES):
        return None
    allowed = [s for s in range(dp.CT_SLOTS) if slots >> s & 1 and slot_occurs(s)]
    if any(s & 3 in (0, 3) for s in allowed):
        return None
    out: list[Any] = []
    if data.has(F_PROTO):
        out.append(dp.ProtoConstraint(data.l4proto, data.inv(F_PROTO)))
    if not data.match_flags & (_ADDR_FLAGS | _PORT_FLAGS):
        return out
    dirs = {(s >> 2) & 1 for s in allowed}
    if len(dirs) != 1:
        return None
    if data.match_flags & _PORT_FLAGS and (not data.has(F_PROTO) or data.inv(F_PROTO)
                                           or data.l4proto not in (6, 17)):
        return None   # other protocols' tuples hold identifiers, types there
    reply = dirs.pop() == 1
    # the packet's own field for each tuple end (original direction:
    # orig src = packet src; reply tuple = orig turned around)
    own = {F_ORIGSRC: "src", F_ORIGDST: "dst", F_REPLSRC: "dst", F_REPLDST: "src",
           F_ORIGSRC_PORT: "sport", F_ORIGDST_PORT: "dport", F_REPLSRC_PORT: "dport",
           F_REPLDST_PORT: "sport"}
    turn = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}
    for _, flag, attr in _ADDR_OPTS:
        if data.has(flag):
            addr, mask = getattr(data, attr)
            which = turn[own[flag]] if reply else own[flag]
            out.append(dp.AddrConstraint(which, IPv4Net(addr & mask, mask), data.inv(flag)))
    if data.match_flags & _PORT_FLAGS:
        out.append(dp.NeedsL4())
        for _, flag, attr in _PORT_OPTS:
            if data.has(flag):
                lo, hi = getattr(data, attr)
                which = turn[own[flag]] if reply else own[flag]
                out.append(dp.PortConstraint(which, lo, hi, data.inv(flag)))
    return out


def slot_occurs(slot: int) -> bool:
    """Whether the tracker can give a packet this slot: INVALID has no
    direction or status; NEW is the original direction before any reply;
    ESTABLISHED has seen a reply; RELATED belongs to a confirmed entry."""
    state, direction, status = slot & 3, (slot >> 2) & 1, (slot >> 3) << 1
    if state == 0:
        return direction == 0 and status == 0
    if state == 1:
        return direction == 0 and not status & (IPS_SEEN_REPLY | IPS_ASSURED)
    if state == 2:
        return bool(status & IPS_SEEN_REPLY) and bool(status & IPS_CONFIRMED)
    return bool(status & IPS_CONFIRMED)


def slot_matches(d: ConntrackData, state: int, direction: int, status: int = 0) -> bool:
    """conntrack_matches() for a packet whose only known facts are its
    ctstate (0 INVALID, 1 NEW, 2 ESTABLISHED, 3 RELATED), direction and
    status bits (tuple checks aside)."""
    statebit = _SLOT_STATE_BITS[state]
    if d.has(F_STATE) and bool(d.state_mask & statebit) == d.inv(F_STATE):
        return False
    if state == 0:
        return d.has(F_STATE)
    if d.has(F_DIRECTION) and (direction == 0) == d.inv(F_DIRECTION):
        return False
    if d.has(F_STATUS) and bool(d.status_mask & status) == d.inv(F_STATUS):
        return False
    return True


class ConntrackMatch(XtOptionsExtension, ConntrackDataMatch):
    name = "conntrack"
    help_text = (
        "conntrack match options:\n"
        "[!] --ctstate {INVALID|ESTABLISHED|NEW|RELATED|UNTRACKED|SNAT|DNAT}[,...]\n"
        "                               State(s) to match\n"
        '[!] --ctproto proto            Protocol to match; by number or name, e.g. "tcp"\n'
        "[!] --ctorigsrc address[/mask]\n"
        "[!] --ctorigdst address[/mask]\n"
        "[!] --ctreplsrc address[/mask]\n"
        "[!] --ctrepldst address[/mask]\n"
        "                               Original/Reply source/destination address\n"
        "[!] --ctorigsrcport port\n"
        "[!] --ctorigdstport port\n"
        "[!] --ctreplsrcport port\n"
        "[!] --ctrepldstport port\n"
        "                               TCP/UDP/SCTP orig./reply source/destination port\n"
        "[!] --ctstatus {NONE|EXPECTED|SEEN_REPLY|ASSURED|CONFIRMED}[,...]\n"
        "                               Status(es) to match\n"
        "[!] --ctexpire time[:time]     Match remaining lifetime in seconds against\n"
        "                               value or range of values (inclusive)\n"
        "    --ctdir {ORIGINAL|REPLY}   Flow direction of packet\n")
    xt_options = (
        XtOption("ctstate", T.STRING, invert=True),
        XtOption("ctproto", T.PROTOCOL, invert=True),
        XtOption("ctorigsrc", T.STRING, invert=True),
        XtOption("ctorigdst", T.STRING, invert=True),
        XtOption("ctreplsrc", T.STRING, invert=True),
        XtOption("ctrepldst", T.STRING, invert=True),
        XtOption("ctstatus", T.STRING, invert=True),
        XtOption("ctexpire", T.UINT32RC, invert=True),
        XtOption("ctorigsrcport", T.PORTRC, invert=True),
        XtOption("ctorigdstport", T.PORTRC, invert=True),
        XtOption("ctreplsrcport", T.PORTRC, invert=True),
        XtOption("ctrepldstport", T.PORTRC, invert=True),
        XtOption("ctdir", T.STRING),
    )

    def init(self) -> XtState:
        state = XtState()
        state.values["_fields"] = {"match_flags": 0, "invert_flags": 0}
        return state

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        f: dict[str, Any] = state.values["_fields"]
        text = arg or ""
        flag = 0
        if opt.name == "ctstate":
            f["state_mask"] = f.get("state_mask", 0) | parse_name_list(text, CTSTATE_NAMES, "ctstate")
            flag = F_STATE
        elif opt.name == "ctproto":
            f["l4proto"] = value
            if value == 0 and f["invert_flags"] & XT_INV_PROTO:
                raise XtablesError("conntrack: rule would never match protocol")
            flag = F_PROTO
        elif opt.name in ("ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst"):
            flag, attr = next((fl, at) for o, fl, at in _ADDR_OPTS if o == opt.name)
            f[attr] = parse_hostmask(self.name, opt.name, text)
        elif opt.name == "ctstatus":
            f["status_mask"] = f.get("status_mask", 0) | parse_name_list(text, CTSTATUS_NAMES, "ctstatus")
            flag = F_STATUS
        elif opt.name == "ctexpire":
            f["expires"] = (value[0], value[1] if len(value) >= 2 else value[0])
            flag = F_EXPIRES
        elif opt.name.endswith("port"):
            flag, attr = next((fl, at) for o, fl, at in _PORT_OPTS if o == opt.name)
            f[attr] = value
        elif opt.name == "ctdir":
            if text.lower() == "original":
                f["invert_flags"] &= ~F_DIRECTION
            elif text.lower() == "reply":
                f["invert_flags"] |= F_DIRECTION
            else:
                raise XtablesError(f'conntrack: Bad value for "--ctdir" option: "{text}"')
            f["match_flags"] |= F_DIRECTION
            return
        f["match_flags"] |= flag
        if invert:
            f["invert_flags"] |= flag

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not state.flags:
            raise XtablesError("conntrack: At least one option is required")

    def build(self, state: XtState, ctx: ParseContext) -> ConntrackData:
        return ConntrackData(**state.values["_fields"])


EXTENSIONS = [ConntrackMatch()]
