"""ipset's sets as bpf-iptables keeps them: hash:ip, hash:net, hash:ip,port
and bitmap:port (IPv4), with the element syntax, the listing text and the
error messages of ipset 7.17.

An element is a tuple of integers (``Elem``): (addr,) for hash:ip,
(addr, cidr) for hash:net, (addr, proto, port) for hash:ip,port and
(port,) for bitmap:port; addresses are host-order integers. Each member
keeps its expiry on CLOCK_MONOTONIC (``time.monotonic_ns()``, the clock
``bpf_ktime_get_ns()`` reads in the data path; 0: never) and, for
hash:net, the ``nomatch`` flag."""
from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field

from ..netaddr import cidr_blocks

Elem = tuple[int, ...]
HASH_TYPES = ("hash:ip", "hash:net", "hash:ip,port")
TYPES = HASH_TYPES + ("bitmap:port",)
REVISION = {"hash:ip": 6, "hash:net": 7, "hash:ip,port": 7, "bitmap:port": 3}
DIMENSION = {"hash:ip": 1, "hash:net": 1, "hash:ip,port": 2, "bitmap:port": 1}
DEFAULT_HASHSIZE = 1024
DEFAULT_MAXELEM = 65536
DEFAULT_BUCKETSIZE = 12
MAX_TIMEOUT = 2147483   # UINT_MAX / MSEC_PER_SEC / 2, as ipset checks it
NS = 1_000_000_000

TCP, UDP, ICMP, SCTP, UDPLITE = 6, 17, 1, 132, 136
# protocols whose elements carry a port (ipset's ip_set_proto_with_ports)
PORT_PROTOS = (TCP, UDP, SCTP, UDPLITE)

# ipset's ICMP type/code names (lib/icmp.c), in its order: the first name
# of a type/code is the one printed
ICMP_NAMES: tuple[tuple[str, int, int], ...] = (
    ("echo-reply", 0, 0), ("pong", 0, 0),
    ("network-unreachable", 3, 0), ("host-unreachable", 3, 1),
    ("protocol-unreachable", 3, 2), ("port-unreachable", 3, 3),
    ("fragmentation-needed", 3, 4), ("source-route-failed", 3, 5),
    ("network-unknown", 3, 6), ("host-unknown", 3, 7),
    ("network-prohibited", 3, 9), ("host-prohibited", 3, 10),
    ("TOS-network-unreachable", 3, 11), ("TOS-host-unreachable", 3, 12),
    ("communication-prohibited", 3, 13), ("host-precedence-violation", 3, 14),
    ("precedence-cutoff", 3, 15), ("source-quench", 4, 0),
    ("network-redirect", 5, 0), ("host-redirect", 5, 1),
    ("TOS-network-redirect", 5, 2), ("TOS-host-redirect", 5, 3),
    ("echo-request", 8, 0), ("ping", 8, 0),
    ("router-advertisement", 9, 0), ("router-solicitation", 10, 0),
    ("ttl-zero-during-transit", 11, 0), ("ttl-zero-during-reassembly", 11, 1),
    ("ip-header-bad", 12, 0), ("required-option-missing", 12, 1),
    ("timestamp-request", 13, 0), ("timestamp-reply", 14, 0),
    ("address-mask-request", 17, 0), ("address-mask-reply", 18, 0),
)


class IpsetError(Exception):
    """An ipset failure: ``message`` after "ipset v7.17: "; status 1 for
    what the kernel refuses and element syntax errors, 2 for command-line
    problems (then ipset adds the "Try `ipset help'" hint)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.message = message
        self.status = status


def parameter_error(message: str) -> IpsetError:
    return IpsetError(message, 2)


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass
class Member:
    expires: int = 0       # CLOCK_MONOTONIC ns; 0: never
    nomatch: bool = False

    def alive(self, now: int) -> bool:
        return self.expires == 0 or now < self.expires


@dataclass
class IpSet:
    name: str
    type: str
    id: int                                   # the data path's key (see maps.py)
    hashsize: int = DEFAULT_HASHSIZE
    maxelem: int = DEFAULT_MAXELEM
    bucketsize: int = DEFAULT_BUCKETSIZE
    initval: int = 0
    timeout: int | None = None                # default element timeout (s); None: no support
    first_port: int = 0                       # bitmap:port range
    last_port: int = 0
    members: dict[Elem, Member] = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return DIMENSION[self.type]

    def live_members(self, now: int | None = None) -> list[tuple[Elem, Member]]:
        now = now_ns() if now is None else now
        return [(e, m) for e, m in self.members.items() if m.alive(now)]

    def purge(self, now: int) -> list[Elem]:
        """Drop expired members (ipset's garbage collection); returns them."""
        dead = [e for e, m in self.members.items() if not m.alive(now)]
        for e in dead:
            del self.members[e]
        return dead

    # -- text ------------------------------------------------------------------

    def header(self) -> str:
        if self.type == "bitmap:port":
            out = f"range {self.first_port}-{self.last_port}"
            if self.timeout is not None:
                out += f" timeout {self.timeout}"
            return out
        out = f"family inet hashsize {self.hashsize} maxelem {self.maxelem}"
        if self.timeout is not None:
            out += f" timeout {self.timeout}"
        return out + f" bucketsize {self.bucketsize} initval 0x{self.initval:08x}"

    def memsize(self, count: int) -> int:
        """"Size in memory" as the kernel computes it, assuming every
        element sits in a bucket of its own (the kernel's placement
        depends on its random initval, so the real number is at most
        this; tests do not compare it)."""
        if self.type == "bitmap:port":
            n = self.last_port - self.first_port + 1
            size = 72 + ((n + 63) // 64) * 8
            return size + (n * 8 if self.timeout is not None else 0)
        bits = max(self.hashsize.bit_length() - 1, 0)
        locks = 1 if bits <= 10 else 1 << (bits - 10)
        base = (456 if self.type == "hash:net" else 216) + 24 * (locks - 1)
        per = 64 if self.timeout is not None else (40 if self.type == "hash:ip" else 48)
        return base + per * count

    def member_text(self, elem: Elem, member: Member, now: int) -> str:
        out = format_elem(self.type, elem)
        if self.timeout is not None:
            out += f" timeout {remaining(member, now)}"
        if member.nomatch:
            out += " nomatch"
        return out

    # -- persistence -----------------------------------------------------------

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "id": self.id,
                "hashsize": self.hashsize, "maxelem": self.maxelem,
                "bucketsize": self.bucketsize, "initval": self.initval,
                "timeout": self.timeout, "range": [self.first_port, self.last_port],
                "members": [[list(e), m.expires, int(m.nomatch)]
                            for e, m in self.members.items()]}

    @classmethod
    def from_json(cls, d: dict) -> "IpSet":
        s = cls(d["name"], d["type"], d["id"], d["hashsize"], d["maxelem"], d["bucketsize"],
                d["initval"], d["timeout"], d["range"][0], d["range"][1])
        s.members = {tuple(e): Member(exp, bool(nm)) for e, exp, nm in d["members"]}
        return s


def remaining(member: Member, now: int) -> int:
    """ip_set_timeout_get(): whole seconds left, at least 1; 0: permanent."""
    if member.expires == 0:
        return 0
    return max(1, (member.expires - now) // NS)


def new_initval() -> int:
    return random.getrandbits(32)


# -- element syntax ---------------------------------------------------------------

def ip_text(addr: int) -> str:
    return socket.inet_ntoa(addr.to_bytes(4, "big"))


def parse_ip(text: str) -> int:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        raise IpsetError(f"Syntax error: cannot parse {text}: resolving to IPv4 "
                         "address failed") from None


def parse_uint(text: str, lo: int, hi: int) -> int:
    if not text.isdigit():
        raise IpsetError(f"Syntax error: '{text}' is invalid as number")
    value = int(text)
    if not lo <= value <= hi:
        raise IpsetError(f"Syntax error: '{text}' is out of range {lo}-{hi}")
    return value


def mask_of(cidr: int) -> int:
    return (0xFFFFFFFF << (32 - cidr)) & 0xFFFFFFFF if cidr else 0


def parse_ip_range(text: str, net: bool) -> list[tuple[int, int]]:
    """IP, IP/cidr or IP-IP as CIDR blocks (hash:net keeps them, hash:ip
    expands them to addresses)."""
    if "-" in text:
        a, b = text.split("-", 1)
        lo, hi = parse_ip(a), parse_ip(b)
        if lo > hi:
            lo, hi = hi, lo
        return cidr_blocks(lo, hi)
    if "/" in text:
        a, c = text.split("/", 1)
        addr = parse_ip(a)
        if not c.isdigit():
            raise IpsetError(f"Syntax error: '{c}' is invalid as number")
        cidr = int(c)
        if cidr > 32:
            raise IpsetError(f"Syntax error: '{c}' is out of range 0-32")
        if cidr == 0:
            raise IpsetError("The value of the CIDR parameter of the IP address is invalid")
        return [(addr & mask_of(cidr), cidr)]
    return [(parse_ip(text), 32)]


def _protocols() -> dict[str, int]:
    names = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "sctp": SCTP, "udplite": UDPLITE}
    try:
        with open("/etc/protocols") as fh:
            for line in fh:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[1].isdigit():
                    names.setdefault(words[0], int(words[1]))
    except OSError:
        pass
    return names


_PROTOS: dict[str, int] | None = None


def protocols() -> dict[str, int]:
    global _PROTOS
    if _PROTOS is None:
        _PROTOS = _protocols()
    return _PROTOS


def proto_name(proto: int) -> str:
    for name, number in protocols().items():
        if number == proto:
            return name
    return str(proto)


def parse_port(text: str, proto: str) -> int:
    if text.isdigit():
        return parse_uint(text, 0, 65535)
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        # (libipset tries a number, the protocol's name as one, then the service)
        raise IpsetError(f"Syntax error: '{text}' is invalid as number\n"
                         f"Syntax error: '{proto}' is invalid as number\n"
                         f"cannot parse '{text}' as a {proto} port") from None


def parse_port_range(text: str, proto: str = "tcp") -> tuple[int, int]:
    if "-" in text:
        a, b = text.split("-", 1)
        lo, hi = parse_port(a, proto), parse_port(b, proto)
        return (lo, hi) if lo <= hi else (hi, lo)
    p = parse_port(text, proto)
    return p, p


def parse_icmp(text: str) -> int:
    for name, t, c in ICMP_NAMES:
        if name.lower().startswith(text.lower()) and text:
            return t << 8 | c
    if "/" in text:
        t, c = text.split("/", 1)
        return parse_uint(t, 0, 255) << 8 | parse_uint(c, 0, 255)
    raise IpsetError(f"Syntax error: cannot parse {text} as ICMP type/code")


def icmp_text(port: int) -> str:
    t, c = port >> 8, port & 0xFF
    for name, nt, nc in ICMP_NAMES:
        if (nt, nc) == (t, c):
            return name
    return f"{t}/{c}"


def parse_proto_port(text: str) -> list[tuple[int, int]]:
    """[proto:]port[-port] of hash:ip,port: (proto, port) pairs."""
    if ":" in text:
        pname, port_text = text.split(":", 1)
        proto = protocols().get(pname.lower())
        if proto is None:
            raise IpsetError(f"Syntax error: cannot parse {pname} as a protocol")
    else:
        pname, port_text, proto = "tcp", text, TCP
    if proto == ICMP:
        return [(ICMP, parse_icmp(port_text))]
    if proto in PORT_PROTOS:
        lo, hi = parse_port_range(port_text, pname if proto in (TCP, UDP) else "tcp")
        return [(proto, p) for p in range(lo, hi + 1)]
    port = parse_uint(port_text, 0, 65535)
    if port != 0:
        raise IpsetError(f"Syntax error: Protocol {pname} without port support: "
                         "port must be zero")
    return [(proto, 0)]


def parse_elems(settype: str, text: str) -> list[tuple[Elem, bool]]:
    """The elements an add/del/test argument stands for, each with whether
    it is a range expansion (hash:ip addresses from a CIDR or range)."""
    if settype == "bitmap:port":
        if ":" in text:
            pname, text = text.split(":", 1)
            if pname.lower() not in ("tcp", "udp"):
                raise IpsetError(f"Syntax error: cannot parse {pname} as a protocol")
        lo, hi = parse_port_range(text)
        return [((p,), lo != hi) for p in range(lo, hi + 1)]
    parts = text.split(",")
    want = 2 if settype == "hash:ip,port" else 1
    if len(parts) > want:
        sep = "none" if want == 1 else "one"
        raise IpsetError(f"Syntax error: Elem separator in {text}, but settype {settype} "
                         f"supports {sep}.")
    if len(parts) < want:
        raise IpsetError(f"Syntax error: Second element is missing from {text}.")
    blocks = parse_ip_range(parts[0], settype == "hash:net")
    if settype == "hash:net":
        return [((a, c), False) for a, c in blocks]
    addrs = [a for lo, c in blocks for a in range(lo, lo + (1 << (32 - c)))]
    many = len(addrs) > 1
    if settype == "hash:ip":
        return [((a,), many) for a in addrs]
    pps = parse_proto_port(parts[1])
    many = many or len(pps) > 1
    return [((a, proto, port), many) for a in addrs for proto, port in pps]


def format_elem(settype: str, elem: Elem) -> str:
    if settype == "bitmap:port":
        return str(elem[0])
    if settype == "hash:net":
        addr, cidr = elem
        return ip_text(addr) if cidr == 32 else f"{ip_text(addr)}/{cidr}"
    if settype == "hash:ip":
        return ip_text(elem[0])
    addr, proto, port = elem
    if proto == ICMP:
        return f"{ip_text(addr)},icmp:{icmp_text(port)}"
    return f"{ip_text(addr)},{proto_name(proto)}:{port}"
