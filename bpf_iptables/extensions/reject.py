"""-j REJECT: drop the packet and answer with an ICMP error or a TCP RST
(libipt_REJECT, kernel ipt_REJECT).

Reject types are numbered as ``enum ipt_reject_with``; number 4 (echo-reply)
is gone from iptables, so it has no entry. ``--reject-with`` takes any
case-insensitive *prefix* of a type's name or alias, the first table entry
winning, because that is how libipt_REJECT compares (strncasecmp over the
argument's length): "tcp" means tcp-reset, "icmp-h" icmp-host-unreachable,
and even "" means icmp-net-unreachable."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import XtablesError
from .base import ParseContext, T, TargetExtension, Verdict, XtOption, XtOptionsExtension, XtState

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

IPPROTO_TCP = 6

# How an entry's verdict carries a REJECT (bpf/lib/reject.h): a code above
# every XDP action, the reject type in the low byte, where the classifier
# runs, and the TTL of the reply.
VERDICT_REJECT = 0x100
REJECT_FORWARD = 0x200   # ICMP source from the route back to the sender
REJECT_OUTPUT = 0x400    # TC egress: the reply goes into the stack at ingress
DEFAULT_TTL_SYSCTL = "/proc/sys/net/ipv4/ip_default_ttl"


@dataclass(frozen=True)
class RejectType:
    number: int      # enum ipt_reject_with
    name: str        # canonical name, printed by -S and -L
    alias: str
    description: str  # for -h


REJECT_TYPES: tuple[RejectType, ...] = (
    RejectType(0, "icmp-net-unreachable", "net-unreach", "ICMP network unreachable"),
    RejectType(1, "icmp-host-unreachable", "host-unreach", "ICMP host unreachable"),
    RejectType(2, "icmp-proto-unreachable", "proto-unreach", "ICMP protocol unreachable"),
    RejectType(3, "icmp-port-unreachable", "port-unreach", "ICMP port unreachable (default)"),
    RejectType(5, "icmp-net-prohibited", "net-prohib", "ICMP network prohibited"),
    RejectType(6, "icmp-host-prohibited", "host-prohib", "ICMP host prohibited"),
    RejectType(7, "tcp-reset", "tcp-rst", "TCP RST packet"),
    RejectType(8, "icmp-admin-prohibited", "admin-prohib", "ICMP administratively prohibited (*)"),
)
DEFAULT_TYPE = "icmp-port-unreachable"
TCP_RESET = "tcp-reset"


@dataclass(frozen=True)
class RejectData:
    """``struct ipt_reject_info``: only the reply type (canonical name)."""

    with_: str = DEFAULT_TYPE


def lookup_reject_type(arg: str) -> RejectType | None:
    """REJECT_parse()'s table walk: first entry whose name or alias starts
    with ``arg``, ignoring case."""
    prefix = ascii_lower(arg)
    for rtype in REJECT_TYPES:
        if rtype.name.startswith(prefix) or rtype.alias.startswith(prefix):
            return rtype
    return None


def ascii_lower(text: str) -> str:
    """strncasecmp() folds ASCII letters only (str.lower() folds more)."""
    return text.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")


def reject_help() -> str:
    """REJECT_help(), with print_reject_types()'s table."""
    lines = ["REJECT target options:\n",
             "--reject-with type              drop input packet and send back\n",
             "                                a reply packet according to type:\n",
             "Valid reject types:\n"]
    for rtype in REJECT_TYPES:
        lines.append(f"    {rtype.name:<25}\t{rtype.description}\n")
        lines.append(f"    {rtype.alias:<25}\talias\n")
    lines.append("\n(*) See man page or read the INCOMPATIBILITES file for compatibility issues.\n")
    return "".join(lines)


class RejectTarget(XtOptionsExtension, TargetExtension):
    name = "REJECT"
    help_text = reject_help()
    xt_options: ClassVar[tuple[XtOption, ...]] = (
        XtOption("reject-with", T.STRING),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        text = arg or ""
        rtype = lookup_reject_type(text)
        if rtype is None:
            lowered = ascii_lower(text)
            if "echo-reply".startswith(lowered) or "echoreply".startswith(lowered):
                # iptables still recognises the type it dropped long ago
                sys.stderr.write("--reject-with echo-reply no longer supported\n")
            raise XtablesError(f'unknown reject type "{text}"')
        state.values["with"] = rtype.name

    def build(self, state: XtState, ctx: ParseContext) -> RejectData:
        return RejectData(state.values.get("with", DEFAULT_TYPE))

    def save(self, data: RejectData) -> str:
        return f" --reject-with {data.with_}"

    def print(self, data: RejectData, numeric: bool) -> str:
        return f" reject-with {data.with_}"

    def kernel_check(self, data: RejectData, rule: "Rule", hooks: frozenset[str]) -> bool:
        """reject_tg_check(): a TCP reset only for rules limited to TCP."""
        if data.with_ == TCP_RESET:
            return rule.proto == IPPROTO_TCP and not rule.proto_inv
        return True

    def verdict(self, data: RejectData, packet: "Packet") -> Verdict:
        return Verdict("reject", data.with_)


def default_ttl() -> int:
    """The TTL the kernel gives its ICMP errors and resets
    (ip4_dst_hoplimit: the namespace's ip_default_ttl, routes without a
    hoplimit metric); read in the namespace the rules are compiled in."""
    try:
        with open(DEFAULT_TTL_SYSCTL) as f:
            return int(f.read()) & 0xFF
    except (OSError, ValueError):
        return 64


def reject_verdict(data: RejectData, hook: str, ttl: int) -> int:
    """The entry verdict for ``-j REJECT`` in the classifier of ``hook``."""
    number = next(t.number for t in REJECT_TYPES if t.name == data.with_)
    where = {"FORWARD": REJECT_FORWARD, "OUTPUT": REJECT_OUTPUT}.get(hook, 0)
    return VERDICT_REJECT | number | where | (ttl & 0xFF) << 16


EXTENSIONS = [RejectTarget()]
