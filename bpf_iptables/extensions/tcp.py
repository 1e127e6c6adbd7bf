"""-m tcp / -p tcp: ports, flags and option matching (libxt_tcp)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import NotSupported, XtablesError
from ..netaddr import parse_port, port_to_service
from ..numbers import UINT8_MAX, strtoui
from .base import MatchExtension, ParseContext

def ascii_lower(text: str) -> str:
    """C-locale tolower(): only A-Z fold (strcasecmp/strncasecmp)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


TCP_FLAG_NAMES = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08),
                  ("ACK", 0x10), ("URG", 0x20), ("ALL", 0x3F), ("NONE", 0))


@dataclass(frozen=True)
class PortRange:
    lo: int = 0
    hi: int = 0xFFFF
    invert: bool = False

    @property
    def is_any(self) -> bool:
        return self.lo == 0 and self.hi == 0xFFFF and not self.invert

    def matches(self, port: int) -> bool:
        return (self.lo <= port <= self.hi) != self.invert


@dataclass(frozen=True)
class TcpData:
    sport: PortRange = PortRange()
    dport: PortRange = PortRange()
    option: int = 0
    option_inv: bool = False
    flg_mask: int = 0
    flg_cmp: int = 0
    flags_inv: bool = False


def parse_ports(text: str, proto: str) -> tuple[int, int]:
    """parse_tcp_ports()/parse_udp_ports(): "a", "a:b", ":b", "a:"."""
    if ":" not in text:
        port = parse_port(text, proto)
        return port, port
    lo_text, _, hi_text = text.partition(":")
    lo = parse_port(lo_text, proto) if lo_text else 0
    hi = parse_port(hi_text, proto) if hi_text else 0xFFFF
    if lo > hi:
        raise XtablesError("invalid portrange (min > max)")
    return lo, hi


def parse_tcp_flag(text: str) -> int:
    value = 0
    for word in (w for w in text.split(",") if w):
        for name, bit in TCP_FLAG_NAMES:
            if name.lower() == ascii_lower(word):  # strcasecmp: ASCII only
                value |= bit
                break
        else:
            raise XtablesError(f"Unknown TCP flag `{word}'")
    return value


def print_port(port: int, numeric: bool, proto: str) -> str:
    if numeric:
        return str(port)
    return port_to_service(port, proto) or str(port)


def print_ports(name: str, rng: PortRange, numeric: bool, proto: str) -> str:
    if rng.is_any:
        return ""
    inv = "!" if rng.invert else ""
    if rng.lo == rng.hi:
        return f" {name}:{inv}{print_port(rng.lo, numeric, proto)}"
    return (f" {name}s:{inv}{print_port(rng.lo, numeric, proto)}"
            f":{print_port(rng.hi, numeric, proto)}")


def save_ports(option: str, rng: PortRange) -> str:
    if rng.lo == 0 and rng.hi == 0xFFFF:
        return ""
    inv = " !" if rng.invert else ""
    if rng.lo != rng.hi:
        return f"{inv} --{option} {rng.lo}:{rng.hi}"
    return f"{inv} --{option} {rng.lo}"


def flags_text(flags: int) -> str:
    names = []
    while flags:
        for name, bit in TCP_FLAG_NAMES:
            if flags & bit:
                names.append(name)
                flags &= ~bit
                break
    return ",".join(names) if names else "NONE"


def tcp_option_present(options: bytes, kind: int) -> bool:
    """Walk the TCP options like xt_tcpudp's tcp_find_option().

    Kinds 0 and 1 are one byte; any other advances by its length byte, a
    length of 0 by one byte (``op[i+1] ?: 1``). A kind in the last byte is
    still seen; its missing length byte only ends the walk."""
    i = 0
    while i < len(options):
        if options[i] == kind:
            return True
        if options[i] < 2 or i + 1 >= len(options):
            i += 1
        else:
            i += options[i + 1] or 1
    return False


class TcpMatch(MatchExtension):
    name = "tcp"
    help_text = (
        "tcp match options:\n"
        "[!] --tcp-flags mask comp\tmatch when TCP flags & mask == comp\n"
        "\t\t\t\t(Flags: SYN ACK FIN RST URG PSH ALL NONE)\n"
        "[!] --syn\t\t\tmatch when only SYN flag set\n"
        "\t\t\t\t(equivalent to --tcp-flags SYN,RST,ACK,FIN SYN)\n"
        "[!] --source-port port[:port]\n"
        " --sport ...\n"
        "\t\t\t\tmatch source port(s)\n"
        "[!] --destination-port port[:port]\n"
        " --dport ...\n"
        "\t\t\t\tmatch destination port(s)\n"
        "[!] --tcp-option number        match if TCP option set\n")
    required_proto = 6
    getopt_options = (("source-port", True, "sport"), ("sport", True, "sport"),
                      ("destination-port", True, "dport"), ("dport", True, "dport"),
                      ("syn", False, "syn"), ("tcp-flags", True, "tcp-flags"),
                      ("tcp-option", True, "tcp-option"))

    def init(self) -> dict[str, Any]:
        return {}

    def parse(self, state: dict[str, Any], option: str, arg: str | None, invert: bool,
              ctx: ParseContext) -> None:
        if option == "sport":
            if "sport" in state:
                raise XtablesError("Only one `--source-port' allowed")
            state["sport"] = PortRange(*parse_ports(arg or "", "tcp"), invert)
        elif option == "dport":
            if "dport" in state:
                raise XtablesError("Only one `--destination-port' allowed")
            state["dport"] = PortRange(*parse_ports(arg or "", "tcp"), invert)
        elif option in ("syn", "tcp-flags"):
            if "flags" in state:
                raise XtablesError("Only one of `--syn' or `--tcp-flags'  allowed")
            if option == "syn":
                state["flags"] = (parse_tcp_flag("SYN,RST,ACK,FIN"), parse_tcp_flag("SYN"), invert)
            else:
                reader = ctx.argv
                if reader.optind >= reader.argc or reader.argv[reader.optind][:1] in ("-", "!"):
                    raise XtablesError("--tcp-flags requires two args.")
                state["flags"] = (parse_tcp_flag(arg or ""), parse_tcp_flag(reader.take()), invert)
        elif option == "tcp-option":
            if "option" in state:
                raise XtablesError("Only one `--tcp-option' allowed")
            value = strtoui(arg or "", 1, UINT8_MAX)
            if value is None:
                raise XtablesError(f'Bad TCP option "{arg}"')
            state["option"] = (value, invert)

    def final_check(self, state: dict[str, Any], ctx: ParseContext) -> TcpData:
        mask, cmp, finv = state.get("flags", (0, 0, False))
        option, oinv = state.get("option", (0, False))
        return TcpData(state.get("sport", PortRange()), state.get("dport", PortRange()),
                       option, oinv, mask, cmp, finv)

    def save(self, d: TcpData) -> str:
        out = save_ports("sport", d.sport) + save_ports("dport", d.dport)
        if d.option or d.option_inv:
            out += f"{' !' if d.option_inv else ''} --tcp-option {d.option}"
        if d.flg_mask or d.flags_inv:
            out += (f"{' !' if d.flags_inv else ''} --tcp-flags "
                    f"{flags_text(d.flg_mask)} {flags_text(d.flg_cmp)}")
        return out

    def print(self, d: TcpData, numeric: bool) -> str:
        out = " tcp" + print_ports("spt", d.sport, numeric, "tcp") + print_ports("dpt", d.dport, numeric, "tcp")
        if d.option or d.option_inv:
            out += f" option={'!' if d.option_inv else ''}{d.option}"
        if d.flg_mask or d.flags_inv:
            out += f" flags:{'!' if d.flags_inv else ''}"
            if numeric:
                out += "0x%02X/0x%02X" % (d.flg_mask, d.flg_cmp)
            else:
                out += f"{flags_text(d.flg_mask)}/{flags_text(d.flg_cmp)}"
        return out

    def matches(self, d: TcpData, pkt: Any) -> bool:
        if pkt.is_fragment:
            # tcp_mt(): an offset-1 fragment could overwrite the flags of
            # the first one; the kernel drops it outright ("evil" fragment)
            if pkt.frag_offset == 1:
                from ..reference.evaluate import HotDrop

                raise HotDrop()
            return False
        if not d.sport.matches(pkt.sport) or not d.dport.matches(pkt.dport):
            return False
        if ((pkt.tcp_flags & d.flg_mask) == d.flg_cmp) == d.flags_inv:
            return False
        if d.option and tcp_option_present(pkt.tcp_options, d.option) == d.option_inv:
            return False
        return True

    def lower(self, d: TcpData, rule: Any) -> list[Any]:
        dp = datapath_fields()
        if d.option or d.option_inv:
            raise NotSupported("--tcp-option in the eBPF data path")
        out = port_constraints(d)
        if d.flg_mask or d.flags_inv:
            out.append(dp.TcpFlagsConstraint(d.flg_mask, d.flg_cmp, d.flags_inv))
        return out


_datapath_fields: Any = None


def datapath_fields() -> Any:
    """``bpf_iptables.datapath.fields``, imported on the first lowering
    (the front end never loads the data path); an import statement in
    every lower() cost more than the rest of it (~10k rules)."""
    global _datapath_fields
    if _datapath_fields is None:
        from ..datapath import fields
        _datapath_fields = fields
    return _datapath_fields


def port_constraints(d: Any) -> list[Any]:
    """A tcp/udp match's lowering: an L4 header, and each port range that
    constrains anything (a full range without "!" holds for every port:
    left out, as RangeField.add would ignore it)."""
    dp = datapath_fields()
    out: list[Any] = [dp.NEEDS_L4]
    for which, r in (("sport", d.sport), ("dport", d.dport)):
        if r.invert or r.lo > 0 or r.hi < 0xFFFF:
            out.append(dp.PortConstraint(which, r.lo, r.hi, r.invert))
    return out


EXTENSIONS = [TcpMatch()]
