"""Rule and Policy, as python-iptables has them, over bpf-iptables' model rule.

The IP part (addresses, interfaces, protocol, fragment) is set directly on
a model rule with python-iptables' checks and read back in its string forms
("1.2.3.0/255.255.255.0", "!eth0", "tcp"); matches and the target are
``module.Match``/``module.Target``. ``model()`` assembles the model rule
that the table stores."""
from __future__ import annotations

import socket
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..model import Counters
from ..model import Rule as ModelRule
from ..model import Target as ModelTarget
from ..netaddr import IPv4Net, int_to_ip
from . import build
from .module import Match, Target

if TYPE_CHECKING:
    from .table import Chain

_IFNAMSIZ = 16
NFPROTO_IPV4 = 2


class Policy:
    """A built-in chain's policy; ``Policy("DROP")`` is one shared object."""

    ACCEPT = "ACCEPT"
    DROP = "DROP"
    QUEUE = "QUEUE"
    RETURN = "RETURN"

    _cache: "weakref.WeakValueDictionary[str, Policy]" = weakref.WeakValueDictionary()

    def __new__(cls, name: str) -> "Policy":
        obj = Policy._cache.get(name)
        if obj is None:
            obj = object.__new__(cls)
            Policy._cache[name] = obj
        return obj

    def __init__(self, name: str):
        self.name = name


def _parse_net(text: str) -> tuple[IPv4Net, bool]:
    """python-iptables' set_src/set_dst: "[!]addr[/len|/mask]", numeric only."""
    invert = text[0] == "!"
    if invert:
        text = text[1:]
    addr, _, netm = text.partition("/")
    if not netm:
        netm = "255.255.255.255"
    try:
        a = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
    except OSError:
        raise ValueError(f"invalid address {addr}") from None
    if not netm.isdigit():
        try:
            mask = int.from_bytes(socket.inet_pton(socket.AF_INET, netm), "big")
        except OSError:
            raise ValueError(f"invalid netmask {netm}") from None
    else:
        bits = int(netm)
        if bits > 32 or bits < 0:
            raise ValueError(f"invalid netmask {netm}")
        mask = ((1 << bits) - 1) << (32 - bits)
    return IPv4Net(a & mask, mask), invert


def _show_net(net: IPv4Net, invert: bool) -> str:
    return f"{'!' if invert else ''}{int_to_ip(net.addr)}/{int_to_ip(net.mask)}"


def _parse_iface(intf: str) -> tuple[str, bool]:
    invert = intf[0] == "!"
    if invert:
        intf = intf[1:]
    if len(intf) >= _IFNAMSIZ:
        raise ValueError(f"interface name {intf} too long")
    return intf, invert


def _show_iface(name: str, invert: bool) -> str | None:
    # python-iptables reads the mask: none for an unset interface or a bare "+"
    if name in ("", "+"):
        return None
    return ("!" if invert else "") + name


class Rule:
    """A rule: IP part, matches, target, counters."""

    protocols = {0: "all", socket.IPPROTO_AH: "ah", socket.IPPROTO_DSTOPTS: "dstopts",
                 socket.IPPROTO_EGP: "egp", socket.IPPROTO_ESP: "esp",
                 socket.IPPROTO_FRAGMENT: "fragment", socket.IPPROTO_GRE: "gre",
                 socket.IPPROTO_HOPOPTS: "hopopts", socket.IPPROTO_ICMP: "icmp",
                 socket.IPPROTO_ICMPV6: "icmpv6", socket.IPPROTO_IDP: "idp",
                 socket.IPPROTO_IGMP: "igmp", socket.IPPROTO_IP: "ip",
                 socket.IPPROTO_IPIP: "ipip", socket.IPPROTO_IPV6: "ipv6",
                 socket.IPPROTO_NONE: "none", socket.IPPROTO_PIM: "pim",
                 socket.IPPROTO_PUP: "pup", socket.IPPROTO_RAW: "raw",
                 socket.IPPROTO_ROUTING: "routing", 132: "sctp",
                 socket.IPPROTO_TCP: "tcp", socket.IPPROTO_TP: "tp",
                 socket.IPPROTO_UDP: "udp"}

    def __init__(self, entry: ModelRule | None = None, chain: "Chain | None" = None):
        """``entry`` is a model rule (python-iptables: the raw ipt_entry)."""
        self.nfproto = NFPROTO_IPV4
        self._matches: list[Match] = []
        self._target: Target | None = None
        self.chain = chain
        self._ip = ModelRule()
        self._counters = (0, 0)
        if entry is not None:
            self._ip = replace(entry, matches=(), target=ModelTarget(), counters=Counters())
            self._counters = (entry.counters.packets, entry.counters.bytes)
            for m in entry.matches:
                self.add_match(Match(self, match=m))
            self._target = Target(self, target=entry.target)

    # -- comparison (python-iptables' __eq__: matches in any order) ------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        if self._target != other._target:
            return False
        if len(self._matches) != len(other._matches):
            return False
        if set(other._matches) != {x for x in other._matches if x in self._matches}:
            return False
        return (self.src == other.src and self.dst == other.dst
                and self.protocol == other.protocol and self.fragment == other.fragment
                and self.in_interface == other.in_interface
                and self.out_interface == other.out_interface)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    # -- matches and target -----------------------------------------------------

    def _get_tables(self) -> list:
        from .table import Table, is_table_available

        return [Table(t) for t in ("filter",) if is_table_available(t)]

    tables = property(_get_tables)

    def final_check(self) -> None:
        if self._target is not None:
            self._target.final_check()
        for m in self._matches:
            m.final_check()

    def create_match(self, name: str, revision: int | None = None) -> Match:
        match = Match(self, name=name, revision=revision)
        self.add_match(match)
        return match

    def create_target(self, name: str, revision: int | None = None, goto: bool = False) -> Target:
        target = Target(self, name=name, revision=revision, goto=goto)
        self.target = target
        return target

    def add_match(self, match: Match) -> None:
        match.rule = self
        self._matches.append(match)

    def remove_match(self, match: Match) -> None:
        self._matches.remove(match)

    def _get_matches(self) -> list[Match]:
        return self._matches[:]

    matches = property(_get_matches)

    def _get_target(self) -> Target | None:
        return self._target

    def _set_target(self, target: Target) -> None:
        target.rule = self
        self._target = target

    target = property(_get_target, _set_target)

    def _changed(self) -> None:
        """A match or target parameter changed (nothing cached here yet)."""

    # -- the IP part ----------------------------------------------------------------

    def get_src(self) -> str:
        return _show_net(self._ip.src, self._ip.src_inv)

    def set_src(self, src: str) -> None:
        net, inv = _parse_net(src)
        self._ip = replace(self._ip, src=net, src_inv=inv)

    src = property(get_src, set_src)

    def get_dst(self) -> str:
        return _show_net(self._ip.dst, self._ip.dst_inv)

    def set_dst(self, dst: str) -> None:
        net, inv = _parse_net(dst)
        self._ip = replace(self._ip, dst=net, dst_inv=inv)

    dst = property(get_dst, set_dst)

    def get_in_interface(self) -> str | None:
        return _show_iface(self._ip.in_iface, self._ip.in_inv)

    def set_in_interface(self, intf: str) -> None:
        name, inv = _parse_iface(intf)
        self._ip = replace(self._ip, in_iface=name, in_inv=inv)

    in_interface = property(get_in_interface, set_in_interface)

    def get_out_interface(self) -> str | None:
        return _show_iface(self._ip.out_iface, self._ip.out_inv)

    def set_out_interface(self, intf: str) -> None:
        name, inv = _parse_iface(intf)
        self._ip = replace(self._ip, out_iface=name, out_inv=inv)

    out_interface = property(get_out_interface, set_out_interface)

    def get_fragment(self) -> bool:
        return self._ip.fragment != self._ip.frag_inv

    def set_fragment(self, frag: Any) -> None:
        self._ip = replace(self._ip, fragment=bool(frag), frag_inv=False)

    fragment = property(get_fragment, set_fragment)

    def get_protocol(self) -> str:
        name = self.protocols.get(self._ip.proto, str(self._ip.proto))
        return ("!" if self._ip.proto_inv else "") + name

    def set_protocol(self, proto: Any) -> None:
        proto = str(proto)
        inv = proto[0] == "!"
        if inv:
            proto = proto[1:]
        if proto.isdigit():
            self._ip = replace(self._ip, proto=int(proto), proto_inv=inv)
            return
        for num, name in self.protocols.items():
            if proto.lower() == name:
                self._ip = replace(self._ip, proto=num, proto_inv=inv)
                return
        raise ValueError(f"invalid protocol {proto}")

    protocol = property(get_protocol, set_protocol)

    def get_counters(self) -> tuple[int, int]:
        return self._counters

    def set_counters(self, counters: Any) -> None:
        self._counters = (int(counters[0]), int(counters[1]))

    counters = property(get_counters, set_counters)

    def get_ip(self) -> ModelRule:
        return self._ip

    def _proto_argv(self) -> list[str]:
        """The protocol as the parser's context for match options (what
        python-iptables passes the extension parsers: the entry)."""
        if not self._ip.proto:
            return []
        return (["!"] if self._ip.proto_inv else []) + ["-p", str(self._ip.proto)]

    # -- to the model ------------------------------------------------------------

    def model(self) -> ModelRule:
        """The model rule this stands for; XTablesError when a match or the
        target is incomplete or wrong (python-iptables: final_check)."""
        if self._target is None:
            raise ValueError("invalid rule")
        if any(m._data is None for m in self._matches) or (
                self._target._ext is not None and self._target._data is None):
            self._parse_all()
        return replace(self._ip, matches=tuple(m.model() for m in self._matches),
                       target=self._target.model(),
                       counters=Counters(*self._counters))

    def _parse_all(self) -> None:
        """One parse of every match and the target, in rule order (a match
        may depend on one before it, as on the command line)."""
        from .build import param_argv

        argv = self._proto_argv()
        for m in self._matches:
            argv += ["-m", m._name, *param_argv(m._ext, m._params)]
        t = self._target
        assert t is not None
        if t._ext is not None:
            argv += ["-j", t._name, *param_argv(t._ext, t._params)]
        parsed = build.parse_rule(argv)
        for m, data in zip(self._matches, parsed.match_data):
            object.__setattr__(m, "_data", data.data)
        if t._ext is not None:
            object.__setattr__(t, "_data", parsed.target_data)
