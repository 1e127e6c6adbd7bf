"""``iptables -L`` output (print_header / print_firewall with FMT_* flags)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import extensions as registry
from ..model import Chain, Rule, Table
from ..netaddr import addr_to_string, proto_to_name

_U64 = (1 << 64) - 1

FMT_NUMERIC = 0x0001
FMT_NOCOUNTS = 0x0002
FMT_KILOMEGAGIGA = 0x0004
FMT_OPTIONS = 0x0008
FMT_NOTABLE = 0x0010
FMT_NOTARGET = 0x0020
FMT_VIA = 0x0040
FMT_NONEWLINE = 0x0080
FMT_LINENUMBERS = 0x0100
FMT_PRINT_RULE = FMT_NOCOUNTS | FMT_OPTIONS | FMT_VIA | FMT_NUMERIC | FMT_NOTABLE


@dataclass
class Fmt:
    flags: int

    def __call__(self, tab: str, notab: str) -> str:
        return notab if self.flags & FMT_NOTABLE else tab

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def list_format(verbose: bool, numeric: bool, expanded: bool, linenumbers: bool) -> int:
    fmt = FMT_OPTIONS
    fmt |= FMT_VIA if verbose else FMT_NOCOUNTS
    if numeric:
        fmt |= FMT_NUMERIC
    if not expanded:
        fmt |= FMT_KILOMEGAGIGA
    if linenumbers:
        fmt |= FMT_LINENUMBERS
    return fmt


def print_num(number: int, flags: int) -> str:
    f = Fmt(flags)
    if not f.has(FMT_KILOMEGAGIGA):
        return f("%8d " % number, "%d " % number)
    if number <= 99999:
        return f("%5d " % number, "%d " % number)
    # the rounding wraps around in uint64_t, as in xtables_print_num()
    for suffix in "KMG":
        number = ((number + 500) & _U64) // 1000
        if number <= 9999:
            return f("%4d%s " % (number, suffix), "%d%s " % (number, suffix))
    number = ((number + 500) & _U64) // 1000
    return f("%4dT " % number, "%dT " % number)


def print_header(flags: int, chain: Chain, refs: int) -> str:
    f = Fmt(flags)
    out = [f"Chain {chain.name}"]
    if chain.builtin:
        out.append(f" (policy {chain.policy}")
        if not f.has(FMT_NOCOUNTS):
            out.append(" ")
            out.append(print_num(chain.counters.packets, flags | FMT_NOTABLE))
            out.append("packets, ")
            out.append(print_num(chain.counters.bytes, flags | FMT_NOTABLE))
            out.append("bytes")
        out.append(")\n")
    else:
        out.append(f" ({refs} references)\n")
    if f.has(FMT_LINENUMBERS):
        out.append(f("%-4s " % "num", "num "))
    if not f.has(FMT_NOCOUNTS):
        if f.has(FMT_KILOMEGAGIGA):
            out.append(f("%5s " % "pkts", "pkts "))
            out.append(f("%5s " % "bytes", "bytes "))
        else:
            out.append(f("%8s " % "pkts", "pkts "))
            out.append(f("%10s " % "bytes", "bytes "))
    if not f.has(FMT_NOTARGET):
        out.append(f("%-9s " % "target", "target "))
    out.append(" prot ")
    if f.has(FMT_OPTIONS):
        out.append("opt")
    if f.has(FMT_VIA):
        out.append(f(" %-6s " % "in", "in "))
        out.append(f("%-6s " % "out", "out "))
    out.append(f(" %-19s " % "source", "source "))
    out.append(f(" %-19s " % "destination", " destination "))
    out.append("\n")
    return "".join(out)


def print_firewall(rule: Rule, num: int, flags: int) -> str:
    f = Fmt(flags)
    numeric = f.has(FMT_NUMERIC)
    target_name = rule.target.name
    out: list[str] = []
    # print_rule_details
    if f.has(FMT_LINENUMBERS):
        out.append(f("%-4u " % num, "%u " % num))
    if not f.has(FMT_NOCOUNTS):
        out.append(print_num(rule.counters.packets, flags))
        out.append(print_num(rule.counters.bytes, flags))
    if not f.has(FMT_NOTARGET):
        out.append(f("%-9s " % target_name, "%s " % target_name))
    out.append("!" if rule.proto_inv else " ")
    pname = proto_to_name(rule.proto, numeric)
    if (flags & (FMT_NUMERIC | FMT_NOTABLE)) == FMT_NUMERIC or not pname:
        out.append(f("%-4u " % rule.proto, "%u " % rule.proto))
    else:
        out.append(f("%-4s " % pname, "%s " % pname))
    # print_fragment
    if f.has(FMT_OPTIONS):
        if f.has(FMT_NOTABLE):
            out.append("opt ")
        out.append("!" if rule.frag_inv else "-")
        out.append("f" if rule.fragment else "-")
        out.append(" ")
    # print_ifaces
    if f.has(FMT_VIA):
        anyname = "*" if numeric else "any"
        iface = ("!" if rule.in_inv else "") + (rule.in_iface or anyname)
        out.append(f(" %-6s " % iface, "in %s " % iface))
        iface = ("!" if rule.out_inv else "") + (rule.out_iface or anyname)
        out.append(f("%-6s " % iface, "out %s " % iface))
    # print_ipv4_addresses
    out.append("!" if rule.src_inv else " ")
    out.append(f("%-19s " % addr_to_string(rule.src, numeric), "%s " % addr_to_string(rule.src, numeric)))
    out.append("!" if rule.dst_inv else " ")
    out.append(f("%-19s " % addr_to_string(rule.dst, numeric), "-> %s" % addr_to_string(rule.dst, numeric)))
    if f.has(FMT_NOTABLE):
        out.append("  ")
    if rule.target.goto:
        out.append("[goto] ")
    for match in rule.matches:
        out.append(registry.matches()[match.name].print(match.data, numeric))
    if not rule.target.is_standard:
        out.append(registry.targets()[rule.target.name].print(rule.target.data, numeric))
    if not f.has(FMT_NONEWLINE):
        out.append("\n")
    return "".join(out)


def list_entries(table: Table, chain: str | None, rulenum: int, flags: int) -> tuple[str, bool]:
    """iptables -L: returns (text, found)."""
    out: list[str] = []
    found = False
    for c in table.ordered_chains():
        if chain is not None and c.name != chain:
            continue
        if found:
            out.append("\n")
        if not rulenum:
            out.append(print_header(flags, c, table.references(c.name)))
        for num, rule in enumerate(c.rules, 1):
            if not rulenum or num == rulenum:
                out.append(print_firewall(rule, num, flags))
        found = True
    return "".join(out), found
