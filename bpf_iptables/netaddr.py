"""IPv4 address, mask, protocol, service and interface parsing and printing.

Mirrors the libxtables helpers so that the same inputs are accepted, the same
errors are raised and the same text is printed."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from functools import lru_cache

from .errors import XtablesError
from .numbers import UINT8_MAX, strtoui

IFNAMSIZ = 16


@dataclass(frozen=True, order=True)
class IPv4Net:
    """An address with a (possibly non-contiguous) mask, as in ipt_ip."""

    addr: int = 0
    mask: int = 0

    def contains(self, ip: int) -> bool:
        return (ip & self.mask) == self.addr

    @property
    def cidr(self) -> int:
        return mask_to_cidr(self.mask)


ANY = IPv4Net(0, 0)


def int_to_ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def ip_to_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def mask_to_cidr(mask: int) -> int:
    """Prefix length of a contiguous mask, -1 if it is not contiguous."""
    bits = 0xFFFFFFFF
    for length in range(32, -1, -1):
        if bits == mask:
            return length
        bits = (bits << 1) & 0xFFFFFFFF
    return -1


def cidr_to_mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


_PLAIN_DOTTED = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                           r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def cidr_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """The inclusive address range [lo, hi] as the fewest CIDR blocks
    (addr, prefix length), lowest first."""
    out = []
    while lo <= hi:
        # the largest aligned block starting at lo that stays within hi
        size = lo & -lo if lo else 1 << 32
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, 33 - size.bit_length()))
        lo += size
    return out


def numeric_to_ipaddr(dotted: str, is_mask: bool = False) -> int | None:
    """__numeric_to_ipaddr: 1-4 dotted parts, short forms pad with zeros."""
    if _PLAIN_DOTTED.fullmatch(dotted):
        # the common case: four decimal bytes without leading zeros (which
        # strtoul would read as octal) parse the same either way
        a, b, c, d = dotted.split(".")
        return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
    dotted = dotted[:19]
    parts = dotted.split(".", 3)
    out = [0, 0, 0, 0]
    for i in range(3):
        if i >= len(parts) - 1:
            if is_mask:
                return None
            byte = strtoui(parts[i], 0, UINT8_MAX)
            if byte is None:
                return None
            out[i] = byte
            return int.from_bytes(bytes(out), "big")
        byte = strtoui(parts[i], 0, UINT8_MAX)
        if byte is None:
            return None
        out[i] = byte
    byte = strtoui(parts[3], 0, UINT8_MAX)
    if byte is None:
        return None
    out[3] = byte
    return int.from_bytes(bytes(out), "big")


def parse_ipmask(text: str | None) -> int:
    if text is None:
        return 0xFFFFFFFF
    if len(text) <= 2 and text.isdigit() and text.isascii() and (text[0] != "0" or text == "0"):
        length = int(text)  # the common "/24": decimal, so strtoul agrees
        if length <= 32:
            return cidr_to_mask(length)
    dotted = numeric_to_ipaddr(text, is_mask=True)
    if dotted is not None:
        return dotted
    bits = strtoui(text, 0, 32)
    if bits is None:
        raise XtablesError(f"invalid mask `{text}' specified")
    return cidr_to_mask(bits)


def _network_to_ipaddr(name: str) -> int | None:
    # getnetbyname() reads /etc/networks; few systems define entries there.
    try:
        with open("/etc/networks", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and name in (fields[0], *fields[2:]):
                    value = numeric_to_ipaddr(fields[1])
                    if value is not None:
                        # n_net is the network number: "127" means 0.0.0.127
                        parts = fields[1].split(".")
                        net = 0
                        for p in parts:
                            net = (net << 8) | int(p, 0)
                        return net
    except OSError:
        pass
    return None


def _host_to_ipaddrs(name: str) -> list[int]:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_RAW)
    except (socket.gaierror, UnicodeError, ValueError):
        return []
    return [ip_to_int(info[4][0]) for info in infos]


def parse_hostnetwork(name: str) -> list[int]:
    value = numeric_to_ipaddr(name)
    if value is None:
        value = _network_to_ipaddr(name)
    if value is not None:
        return [value]
    addrs = _host_to_ipaddrs(name)
    if addrs:
        return addrs
    raise XtablesError(f"host/network `{name}' not found")


def ipparse_multiple(text: str) -> list[IPv4Net]:
    """xtables_ipparse_multiple: "a[/m][,b[/m]...]" -> one net per address."""
    out: list[IPv4Net] = []
    for piece in text.split(","):
        piece = piece.lstrip(" \t\n\r\f\v")
        if len(piece) > 255:
            raise XtablesError("Hostname too long")
        if "/" in piece:
            host, _, masktext = piece.rpartition("/")
            mask = parse_ipmask(masktext)
        else:
            host, mask = piece, parse_ipmask(None)
        if mask == 0:
            host = "0.0.0.0"
        for addr in parse_hostnetwork(host):
            out.append(IPv4Net(addr & mask, mask))
    return out


def ipparse_any(text: str) -> tuple[list[int], int]:
    """xtables_ipparse_any: one name (maybe several addresses), one mask."""
    buf = text[:255]
    if "/" in buf:
        host, _, masktext = buf.rpartition("/")
        mask = parse_ipmask(masktext)
    else:
        host, mask = buf, parse_ipmask(None)
    if mask == 0:
        host = "0.0.0.0"
    addrs: list[int] = []
    for a in parse_hostnetwork(host):
        a &= mask
        if a not in addrs:
            addrs.append(a)
    return addrs, mask


def mask_to_save_text(mask: int) -> str:
    """mask_to_str() in save output: prefix length, else dotted quad."""
    if mask == 0xFFFFFFFF:
        return "32"
    length = mask_to_cidr(mask)
    return str(length) if length >= 0 else int_to_ip(mask)


def save_addr(letter: str, net: IPv4Net, invert: bool) -> str:
    if net.mask == 0 and not invert and net.addr == 0:
        return ""
    return f"{' !' if invert else ''} -{letter} {int_to_ip(net.addr)}/{mask_to_save_text(net.mask)}"


def ipmask_to_numeric(mask: int) -> str:
    length = mask_to_cidr(mask)
    if length == -1:
        return "/" + int_to_ip(mask)
    if length == 32:
        return ""
    return f"/{length}"


@lru_cache(maxsize=4096)
def ipaddr_to_anyname(addr: int) -> str:
    try:
        host, _ = socket.getnameinfo((int_to_ip(addr), 0), 0)
        return host
    except (socket.gaierror, OSError):
        return int_to_ip(addr)


def addr_to_string(net: IPv4Net, numeric: bool) -> str:
    """ipv4_addr_to_string() used by -L."""
    if net.mask == 0 and not numeric:
        return "anywhere"
    base = int_to_ip(net.addr) if numeric else ipaddr_to_anyname(net.addr)
    return base + ipmask_to_numeric(net.mask)


# --- protocols ---------------------------------------------------------------

CHAIN_PROTOS: tuple[tuple[str, int], ...] = (
    ("tcp", 6), ("sctp", 132), ("udp", 17), ("udplite", 136), ("icmp", 1),
    ("ipv6-icmp", 58), ("icmpv6", 58), ("esp", 50), ("ah", 51),
    ("mobility-header", 135), ("ipv6-mh", 135), ("mh", 135), ("all", 0),
)


def parse_protocol(text: str) -> int:
    value = strtoui(text, 0, UINT8_MAX)
    if value is not None:
        return value
    for name, num in CHAIN_PROTOS:
        if name == text:
            return num
    try:
        return socket.getprotobyname(text)
    except OSError:
        raise XtablesError(f'unknown protocol "{text}" specified') from None


@lru_cache(maxsize=256)
def _getprotobynumber(num: int) -> str | None:
    try:
        with open("/etc/protocols", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1] == str(num):
                    return fields[0]
    except OSError:
        pass
    return None


def proto_to_name(proto: int, nolookup: bool) -> str | None:
    for name, num in CHAIN_PROTOS:
        if num == proto:
            return name
    if proto and not nolookup:
        return _getprotobynumber(proto)
    return None


# --- services ----------------------------------------------------------------

def service_to_port(name: str, proto: str | None) -> int:
    try:
        return socket.getservbyname(name, proto) if proto else socket.getservbyname(name)
    except OSError:
        return -1


def parse_port(text: str, proto: str | None) -> int:
    """xtables_parse_port: a number 0-65535 or a service name."""
    value = strtoui(text, 0, 0xFFFF)
    if value is not None:
        return value
    port = service_to_port(text, proto)
    if port >= 0:
        return port
    raise XtablesError(f"invalid port/service `{text}' specified")


@lru_cache(maxsize=4096)
def port_to_service(port: int, proto: str) -> str | None:
    try:
        return socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return None


# --- interfaces --------------------------------------------------------------

def parse_interface(text: str) -> str:
    """xtables_parse_interface: validates; the model keeps the text as given."""
    if len(text) + 1 > IFNAMSIZ:
        raise XtablesError(f"interface name `{text}' must be shorter than IFNAMSIZ ({IFNAMSIZ - 1})")
    if text and not text.endswith("+") and ("/" in text or " " in text):
        import sys

        sys.stderr.write(
            f"Warning: weird character in interface `{text}' "
            "('/' and ' ' are not allowed by the kernel).\n")
    return text


def save_iface(letter: str, name: str, invert: bool) -> str:
    """save_iface(): nothing for "" or a bare "+" (the mask is empty)."""
    if name == "" or name == "+":
        return ""
    return f"{' !' if invert else ''} -{letter} {name}"


def iface_matches(pattern: str, name: str) -> bool:
    """Kernel ifname compare under the mask built by xtables_parse_interface."""
    if pattern == "":
        return True
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern
