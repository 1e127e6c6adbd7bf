"""A model of netfilter's connection tracker (nf_conntrack, IPv4).

What a packet's ctstate is, and how the entry table changes, as
nf_conntrack_in() and the protocol trackers decide it; the eBPF tracker
(bpf/lib/conntrack.h) implements the same rules and the property test
compares the two packet by packet.

- TCP: netfilter's transition table (nf_conntrack_proto_tcp.c
  tcp_conntracks[][][]), flag validity (tcp_error), pickup of mid-stream
  flows with nf_conntrack_tcp_loose=1, ignored packets (sIG: state kept),
  reopening a closed/time-wait entry by a SYN, a RST before any reply kills
  the entry, ASSURED on an ACK in ESTABLISHED after SYN_RECV.
- UDP: NEW until a reply, then ESTABLISHED; the stream timeout (and
  ASSURED) once traffic is seen both ways more than 2 s after creation.
- ICMP: echo/timestamp/info/address-mask requests create entries, replies
  find them; other types are INVALID; errors (3, 4, 5, 11, 12) quoting a
  tracked flow are RELATED (the error must go to the quoted packet's
  source); an error quoting nothing known is INVALID.
- Other protocols: the generic tracker (one entry per address pair and
  protocol, 600 s).
- Entries are created only when the packet is accepted (confirm()), as
  netfilter confirms a new entry at the end of the hook; a known entry is
  updated when it is looked up, whatever the verdict (as in netfilter,
  whose tracker runs before the filter table).

Not modelled (documented differences): TCP sequence/window tracking
(tcp_in_window: out-of-window segments are INVALID in netfilter, RST
validity checks, the SYN/ACK that resynchronises an ignored SYN, the
retransmission/unacknowledged timeouts), checksums, and the state
machines of SCTP, DCCP, GRE and UDP-Lite (generic tracking here).
Fragments are not reassembled: a fragment gets state INVALID and is not
tracked (netfilter tracks the reassembled packet)."""
from __future__ import annotations

from dataclasses import dataclass, field

TCP, UDP, ICMP = 6, 17, 1

# TCP states (enum tcp_conntrack); IV = TCP_CONNTRACK_MAX, IG = IGNORE
NONE, SS, SR, ES, FW, CW, LA, TW, CL, S2, IV, IG = range(12)
TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                   "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
# flag classes (get_conntrack_index)
I_SYN, I_SYNACK, I_FIN, I_ACK, I_RST, I_NONE = range(6)
ORIGINAL, REPLY = 0, 1

# tcp_conntracks[dir][index][old state]; columns NONE SS SR ES FW CW LA TW CL S2
TCP_TABLE = (
    (  # ORIGINAL
        (SS, SS, IG, IG, IG, IG, IG, SS, SS, S2),   # syn
        (IV, IV, SR, IV, IV, IV, IV, IV, IV, SR),   # synack
        (IV, IV, FW, FW, LA, LA, LA, TW, CL, IV),   # fin
        (ES, IV, ES, ES, CW, CW, TW, TW, CL, IV),   # ack
        (IV, CL, CL, CL, CL, CL, CL, CL, CL, CL),   # rst
        (IV,) * 10,                                 # none
    ),
    (  # REPLY
        (IV, S2, IV, IV, IV, IV, IV, SS, IV, S2),   # syn
        (IV, SR, IG, IG, IG, IG, IG, IG, IG, SR),   # synack
        (IV, IV, FW, FW, LA, LA, LA, TW, CL, IV),   # fin
        (IV, IG, SR, ES, CW, CW, TW, TW, CL, IG),   # ack
        (IV, CL, CL, CL, CL, CL, CL, CL, CL, CL),   # rst
        (IV,) * 10,                                 # none
    ),
)

F_FIN, F_SYN, F_RST, F_PSH, F_ACK, F_URG = 1, 2, 4, 8, 16, 32
# tcp_valid_flags[]: the combinations of FIN SYN RST ACK URG (PSH, ECE, CWR
# ignored) that tcp_error() lets through; the others are INVALID
TCP_VALID_FLAGS = frozenset({
    F_SYN, F_SYN | F_URG, F_SYN | F_ACK, F_RST, F_RST | F_ACK, F_FIN | F_ACK,
    F_FIN | F_ACK | F_URG, F_ACK, F_ACK | F_URG})

# ICMP query types and their answers (icmp_invert_tuple's invmap)
ICMP_QUERY = {8: 0, 13: 14, 15: 16, 17: 18}
ICMP_ANSWER = {v: k for k, v in ICMP_QUERY.items()}
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})

# ct->status bits (IPS_*), as --ctstatus names them
IPS_EXPECTED, IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1, 2, 4, 8

# the nf_conntrack_*_timeout sysctls this tracker uses, netfilter's defaults (s)
DEFAULT_TIMEOUTS = {
    "nf_conntrack_tcp_timeout_syn_sent": 120,
    "nf_conntrack_tcp_timeout_syn_recv": 60,
    "nf_conntrack_tcp_timeout_established": 432000,
    "nf_conntrack_tcp_timeout_fin_wait": 120,
    "nf_conntrack_tcp_timeout_close_wait": 60,
    "nf_conntrack_tcp_timeout_last_ack": 30,
    "nf_conntrack_tcp_timeout_time_wait": 120,
    "nf_conntrack_tcp_timeout_close": 10,
    "nf_conntrack_tcp_timeout_unacknowledged": 300,
    "nf_conntrack_udp_timeout": 30,
    "nf_conntrack_udp_timeout_stream": 120,
    "nf_conntrack_icmp_timeout": 30,
    "nf_conntrack_generic_timeout": 600,
}
# slot of each timeout in the eBPF config map (conntrack.h CT_T_*): TCP
# states by their number (SYN_SENT2 uses syn_sent), then the others
TIMEOUT_SLOTS = (
    None, "nf_conntrack_tcp_timeout_syn_sent", "nf_conntrack_tcp_timeout_syn_recv",
    "nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_tcp_timeout_close_wait", "nf_conntrack_tcp_timeout_last_ack",
    "nf_conntrack_tcp_timeout_time_wait", "nf_conntrack_tcp_timeout_close",
    "nf_conntrack_tcp_timeout_syn_sent", "nf_conntrack_tcp_timeout_unacknowledged",
    "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream",
    "nf_conntrack_icmp_timeout", "nf_conntrack_generic_timeout",
)
UDP_STREAM_AFTER = 2.0   # udp_packet(): stream_ts = creation + 2 s


@dataclass(frozen=True)
class Flow:
    """The five fields of a packet the tracker keys on. ICMP queries: sport
    is the identifier, dport is type << 8 | code."""
    src: int
    dst: int
    proto: int
    sport: int = 0
    dport: int = 0


def flow_key(f: Flow) -> tuple[tuple[int, int, int, int, int], int] | None:
    """(key, direction of f) for the table, or None for what cannot be
    tracked (ICMP types that are neither queries nor answers).

    One key per connection: TCP, UDP and generic flows order their two
    endpoints (lower address, port first), an ICMP query keys on the
    request's (src, dst, id, request type/code)."""
    if f.proto == ICMP:
        itype, code = f.dport >> 8, f.dport & 0xFF
        if itype in ICMP_QUERY:
            return (f.src, f.dst, f.sport, f.dport, ICMP), ORIGINAL
        if itype in ICMP_ANSWER:
            return (f.dst, f.src, f.sport, ICMP_ANSWER[itype] << 8 | code, ICMP), REPLY
        return None
    ports = f.proto in (TCP, UDP)
    sport, dport = (f.sport, f.dport) if ports else (0, 0)
    a, b = (f.src, sport), (f.dst, dport)
    if a <= b:
        return (f.src, f.dst, sport, dport, f.proto), ORIGINAL
    return (f.dst, f.src, dport, sport, f.proto), REPLY


@dataclass
class Entry:
    """One connection. ``swapped``: the original direction is the key's
    second endpoint to its first (so ``flow_key``'s direction of a packet
    is flipped to get the connection's)."""
    key: tuple[int, int, int, int, int]
    swapped: bool
    expires: float
    tcp_state: int = NONE
    status: int = 0
    close_init: bool = False     # a FIN_WAIT transition was seen (IP_CT_TCP_FLAG_CLOSE_INIT)
    last_index: int = I_NONE
    last_dir: int = ORIGINAL
    stream_ts: float = 0.0       # UDP: when the stream timeout starts to apply

    @property
    def proto(self) -> int:
        return self.key[4]

    def original(self) -> Flow:
        a, b, pa, pb, proto = self.key
        return Flow(b, a, proto, pb, pa) if self.swapped else Flow(a, b, proto, pa, pb)

    def reply(self) -> Flow:
        o = self.original()
        if o.proto == ICMP:
            return Flow(o.dst, o.src, ICMP, o.sport, ICMP_QUERY[o.dport >> 8] << 8 | (o.dport & 0xFF))
        return Flow(o.dst, o.src, o.proto, o.dport, o.sport)


@dataclass
class Seen:
    """What the tracker says about one packet: its ctstate (NEW,
    ESTABLISHED, RELATED, INVALID), its direction, and the connection (an
    entry of the table, or ``pending``: created when the packet is
    accepted)."""
    state: str
    direction: int = ORIGINAL
    entry: Entry | None = None
    pending: Entry | None = None


def tcp_index(flags: int) -> int:
    if flags & F_RST:
        return I_RST
    if flags & F_SYN:
        return I_SYNACK if flags & F_ACK else I_SYN
    if flags & F_FIN:
        return I_FIN
    if flags & F_ACK:
        return I_ACK
    return I_NONE


def tcp_flags_valid(flags: int) -> bool:
    return (flags & (F_FIN | F_SYN | F_RST | F_ACK | F_URG)) in TCP_VALID_FLAGS


@dataclass
class Tracker:
    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    loose: bool = True
    table: dict[tuple, Entry] = field(default_factory=dict)

    # -- table -----------------------------------------------------------
    def lookup(self, key: tuple, now: float) -> Entry | None:
        e = self.table.get(key)
        if e is not None and e.expires <= now:
            del self.table[key]       # expired: gone, as after netfilter's gc
            return None
        return e

    def confirm(self, seen: Seen) -> None:
        """The packet was accepted: a new connection enters the table."""
        if seen.pending is not None:
            seen.pending.status |= IPS_CONFIRMED
            self.table[seen.pending.key] = seen.pending

    def timeout(self, name: str) -> int:
        return self.timeouts[name]

    # -- one packet ------------------------------------------------------
    def packet(self, flow: Flow, now: float, tcp_flags: int = 0, fragment: bool = False,
               inner: Flow | None = None) -> Seen:
        """The packet's ctstate; known entries are updated on the spot."""
        if fragment:
            return Seen("INVALID")
        if flow.proto == ICMP and (flow.dport >> 8) in ICMP_ERRORS:
            return self._icmp_error(flow, inner, now)
        if flow.proto == TCP and not tcp_flags_valid(tcp_flags):
            return Seen("INVALID")
        k = flow_key(flow)
        if k is None:
            return Seen("INVALID")
        key, kdir = k
        for _ in range(2):    # a reopened TCP connection is looked up again
            e = self.lookup(key, now)
            if e is None:
                return self._new(key, kdir, flow, now, tcp_flags)
            d = kdir ^ int(e.swapped)
            state = "ESTABLISHED" if d == REPLY or e.status & IPS_SEEN_REPLY else "NEW"
            if flow.proto == TCP:
                verdict = self._tcp(e, d, tcp_flags, now)
                if verdict == "repeat":
                    del self.table[key]
                    continue
                if verdict == "invalid":
                    return Seen("INVALID")
                if verdict == "killed":
                    self.table.pop(key, None)
            elif flow.proto == UDP:
                if e.status & IPS_SEEN_REPLY:
                    if now > e.stream_ts:
                        e.expires = now + self.timeout("nf_conntrack_udp_timeout_stream")
                        e.status |= IPS_ASSURED
                    else:
                        e.expires = now + self.timeout("nf_conntrack_udp_timeout")
                else:
                    e.expires = now + self.timeout("nf_conntrack_udp_timeout")
            elif flow.proto == ICMP:
                e.expires = now + self.timeout("nf_conntrack_icmp_timeout")
            else:
                e.expires = now + self.timeout("nf_conntrack_generic_timeout")
            if d == REPLY:
                e.status |= IPS_SEEN_REPLY
            return Seen(state, d, e)
        raise AssertionError("unreachable")

    def _new(self, key: tuple, kdir: int, flow: Flow, now: float, tcp_flags: int) -> Seen:
        e = Entry(key=key, swapped=kdir == REPLY, expires=now)
        if flow.proto == TCP:
            index = tcp_index(tcp_flags)
            new = TCP_TABLE[ORIGINAL][index][NONE]
            if new == IV or (new != SS and not self.loose):
                return Seen("INVALID")
            e.tcp_state = new
            e.last_index, e.last_dir = index, ORIGINAL
            t = self.timeout(TIMEOUT_SLOTS[new])
            if new == ES:   # picked up mid-stream, no reply yet
                t = min(t, self.timeout("nf_conntrack_tcp_timeout_unacknowledged"))
            e.expires = now + t
        elif flow.proto == UDP:
            e.expires = now + self.timeout("nf_conntrack_udp_timeout")
            e.stream_ts = now + UDP_STREAM_AFTER
        elif flow.proto == ICMP:
            if kdir != ORIGINAL:     # an answer with no query: not a new connection
                return Seen("INVALID")
            e.expires = now + self.timeout("nf_conntrack_icmp_timeout")
        else:
            e.expires = now + self.timeout("nf_conntrack_generic_timeout")
        return Seen("NEW", ORIGINAL, e, pending=e)

    def _tcp(self, e: Entry, d: int, flags: int, now: float) -> str:
        """tcp_packet() for a known connection, without window tracking:
        'ok', 'ignore' (accepted, entry unchanged but for last_*),
        'invalid', 'repeat' (entry killed, look up again) or 'killed'."""
        index = tcp_index(flags)
        old = e.tcp_state
        new = TCP_TABLE[d][index][old]
        if new == SS and old >= TW:
            if e.close_init or (e.last_dir == d and e.last_index == I_RST):
                return "repeat"
            new = IG
        if new == IG:
            e.last_index, e.last_dir = index, d
            return "ignore"
        if new == IV:
            return "invalid"
        e.last_index, e.last_dir = index, d
        e.tcp_state = new
        if old != new and new == FW:
            e.close_init = True
        t = self.timeout(TIMEOUT_SLOTS[new])
        if index == I_RST:
            t = self.timeout("nf_conntrack_tcp_timeout_close")
        if not e.status & IPS_SEEN_REPLY:
            if flags & F_RST:
                return "killed"
            if new == ES:
                t = min(t, self.timeout("nf_conntrack_tcp_timeout_unacknowledged"))
        elif not e.status & IPS_ASSURED and old in (SR, ES) and new == ES:
            e.status |= IPS_ASSURED
        e.expires = now + t
        return "ok"

    def _icmp_error(self, flow: Flow, inner: Flow | None, now: float) -> Seen:
        """An ICMP error is RELATED to the connection of the packet it quotes."""
        if inner is None:
            return Seen("INVALID")
        if inner.proto == ICMP and (inner.dport >> 8) not in ICMP_QUERY and \
                (inner.dport >> 8) not in ICMP_ANSWER:
            return Seen("INVALID")
        k = flow_key(inner)
        if k is None:
            return Seen("INVALID")
        key, kdir = k
        e = self.lookup(key, now)
        if e is None:
            return Seen("INVALID")
        # the error travels against the quoted packet
        d = kdir ^ int(e.swapped) ^ 1
        if flow.dst != inner.src:
            return Seen("INVALID")
        return Seen("RELATED", d, e)

    def remaining(self, e: Entry, now: float) -> int:
        """Seconds left, as ctnetlink and --ctexpire see it."""
        # rounded first: a deadline just set (now + 600.0) minus now is
        # 599.99999... in floating point, and the floor would lose a second
        return max(0, int(round(e.expires - now, 6)))
