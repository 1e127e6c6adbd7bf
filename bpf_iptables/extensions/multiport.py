"""-m multiport: up to 15 ports or port ranges (libxt_multiport, revision 1).

The kernel stores 15 port slots; a range "a:b" takes two of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import NotSupported, XtablesError
from ..netaddr import parse_port, port_to_service
from .base import MatchExtension, ParseContext, T, XtOption, XtOptionsExtension, XtState

MULTI_PORTS = 15
PORT_PROTOS = {6: "tcp", 17: "udp", 136: "udplite", 132: "sctp", 33: "dccp"}
_ALL = ("sports", "dports", "ports")


@dataclass(frozen=True)
class PortSpec:
    """One entry: a single port (hi is None) or an inclusive range."""

    lo: int
    hi: int | None = None

    def contains(self, port: int) -> bool:
        return self.lo <= port <= (self.lo if self.hi is None else self.hi)


@dataclass(frozen=True)
class MultiportData:
    direction: str                  # "sports", "dports" or "ports" (either)
    ports: tuple[PortSpec, ...]
    invert: bool = False
    proto: int = 6                  # the rule's -p, for service names in -L


def check_proto(proto: int, proto_inv: bool) -> str:
    if proto_inv:
        raise XtablesError("multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP")
    if proto in PORT_PROTOS:
        return PORT_PROTOS[proto]
    if not proto:
        raise XtablesError("multiport needs `-p tcp', `-p udp', `-p udplite', "
                           "`-p sctp' or `-p dccp'")
    raise XtablesError("multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP")


def parse_multi_ports(text: str, proto: str) -> tuple[PortSpec, ...]:
    """parse_multi_ports_v1(): comma list; each range uses two slots."""
    specs: list[PortSpec] = []
    slots = 0
    for piece in text.split(","):
        if slots >= MULTI_PORTS:
            raise XtablesError("too many ports specified")
        first, colon, second = piece.partition(":")
        if colon and slots == MULTI_PORTS - 1:
            raise XtablesError("too many ports specified")
        lo = parse_port(first, proto)
        if colon:
            hi = parse_port(second, proto)
            if lo >= hi:
                raise XtablesError("invalid portrange specified")
            specs.append(PortSpec(lo, hi))
            slots += 2
        else:
            specs.append(PortSpec(lo))
            slots += 1
    return tuple(specs)


def _print_port(port: int, proto: int, numeric: bool) -> str:
    if numeric:
        return str(port)
    name = PORT_PROTOS.get(proto)
    return (port_to_service(port, name) if name else None) or str(port)


def _ports_text(d: MultiportData, numeric: bool) -> str:
    out = []
    for spec in d.ports:
        text = _print_port(spec.lo, d.proto, numeric)
        if spec.hi is not None:
            text += ":" + _print_port(spec.hi, d.proto, numeric)
        out.append(text)
    return ",".join(out)


class MultiportMatch(XtOptionsExtension, MatchExtension):
    name = "multiport"
    help_text = (
        "multiport match options:\n"
        "[!] --source-ports port[,port:port,port...]\n"
        " --sports ...\n"
        "\t\t\t\tmatch source port(s)\n"
        "[!] --destination-ports port[,port:port,port...]\n"
        " --dports ...\n"
        "\t\t\t\tmatch destination port(s)\n"
        "[!] --ports port[,port:port,port]\n"
        "\t\t\t\tmatch both source and destination port(s)\n")
    xt_options = (
        XtOption("source-ports", T.STRING, invert=True, id="sports", excl=_ALL),
        XtOption("sports", T.STRING, invert=True, id="sports", excl=_ALL),
        XtOption("destination-ports", T.STRING, invert=True, id="dports", excl=_ALL),
        XtOption("dports", T.STRING, invert=True, id="dports", excl=_ALL),
        XtOption("ports", T.STRING, invert=True, id="ports", excl=_ALL),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        proto = check_proto(ctx.proto, ctx.proto_inv)
        state.values["spec"] = (opt.key, parse_multi_ports(value, proto), invert, ctx.proto)

    def fcheck(self, state: XtState, ctx: ParseContext) -> None:
        if not state.flags:
            raise XtablesError("multiport expection an option")

    def build(self, state: XtState, ctx: ParseContext) -> MultiportData:
        direction, ports, invert, proto = state.values["spec"]
        return MultiportData(direction, ports, invert, proto)

    def save(self, d: MultiportData) -> str:
        return f"{' !' if d.invert else ''} --{d.direction} {_ports_text(d, True)}"

    def print(self, d: MultiportData, numeric: bool) -> str:
        # "multiport dports  !22": the "!" comes with its own leading space
        return (f" multiport {d.direction} {' !' if d.invert else ''}"
                f"{_ports_text(d, numeric)}")

    def kernel_check(self, data: MultiportData, rule: Any, hooks: frozenset[str]) -> bool:
        return rule.proto in PORT_PROTOS and not rule.proto_inv

    def matches(self, d: MultiportData, pkt: Any) -> bool:
        if pkt.is_fragment:
            return False
        for spec in d.ports:
            if d.direction == "sports":
                hit = spec.contains(pkt.sport)
            elif d.direction == "dports":
                hit = spec.contains(pkt.dport)
            else:
                hit = spec.contains(pkt.sport) or spec.contains(pkt.dport)
            if hit:
                return not d.invert
        return d.invert

    def lower(self, d: MultiportData, rule: Any) -> list[Any]:
        """A union of port ranges on the port fields.

        The port fields hold one positive range per entry, so "in any of
        the ranges" is written as "in none of the gaps between them". The
        packet must not be a fragment (xt_multiport returns false there) and
        must have a TCP/UDP header. ``! --ports`` is a conjunction (neither
        port listed): the list negated on both fields. ``--ports`` (source OR
        destination port listed) is a disjunction across the two fields:
        its own AND term, the OR of a sport- and a dport-indexed bitvector
        (``PortsEither``)."""
        from ..datapath import fields as dp  # only when compiling for the data path
        if rule.proto not in (6, 17) or rule.proto_inv:
            # the data path parses ports of TCP and UDP only
            raise NotSupported("multiport with a protocol other than tcp/udp "
                               "in the eBPF data path")
        ranges = [(s.lo, s.lo if s.hi is None else s.hi) for s in d.ports]
        # the port tables let offset-1 TCP fragments through (for the hot-drop
        # of a tcp match before this one: compiler.hotdrop_guard); without
        # a tcp match before it, multiport must see no fragment at all
        out: list[Any] = [dp.NotFragment(), dp.NeedsL4()]
        if d.direction == "ports" and not d.invert:
            return out + [dp.PortsEither(tuple(ranges))]
        excluded = ranges if d.invert else dp.complement_ranges(ranges, 0xFFFF)
        for which in {"sports": ("sport",), "dports": ("dport",),
                      "ports": ("sport", "dport")}[d.direction]:
            out += [dp.PortConstraint(which, lo, hi, True) for lo, hi in excluded]
        return out


EXTENSIONS = [MultiportMatch()]
