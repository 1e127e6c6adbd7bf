"""Netfilter's traversal of the filter table, for one packet.

First match wins; a rule without target only counts; ``-j CHAIN`` pushes a
return point, ``-g CHAIN`` does not; RETURN (or falling off a user chain)
pops, and with an empty return stack (a chain reached by -g from the
built-in chain) it ends at the built-in chain's policy, as the kernel jumps
to the hook's underflow entry. Falling off a built-in chain, or RETURN in
it, applies its policy, and only those packets count in the policy
counters. Non-terminal targets (LOG) continue; REJECT stops like DROP."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import extensions as registry
from ..model import Rule, Table
from ..netaddr import iface_matches
from .packet import Packet

MAX_DEPTH = 64  # the kernel's jump stack is bounded too


@dataclass
class Result:
    verdict: str                       # ACCEPT, DROP or REJECT
    detail: str = ""                   # reject type
    hits: list[tuple[str, int]] = field(default_factory=list)  # (chain, rule index)
    policy_chain: str | None = None    # built-in chain whose policy decided


def ip_part_matches(rule: Rule, pkt: Packet) -> bool:
    """ip_packet_match(): addresses, interfaces, protocol, fragments."""
    if rule.src.contains(pkt.src) == rule.src_inv:
        return False
    if rule.dst.contains(pkt.dst) == rule.dst_inv:
        return False
    if iface_matches(rule.in_iface, pkt.in_iface) == rule.in_inv:
        return False
    if iface_matches(rule.out_iface, pkt.out_iface) == rule.out_inv:
        return False
    if rule.proto and (pkt.proto == rule.proto) == rule.proto_inv:
        return False
    if rule.fragment and pkt.is_fragment == rule.frag_inv:
        return False
    return True


class HotDrop(Exception):
    """Raised by a match's ``matches()`` to drop the packet on the spot, as a
    kernel match setting ``par->hotdrop`` does (e.g. xt_tcpudp for a TCP
    fragment at offset 1): no further rule, no counter of this rule."""


def rule_matches(rule: Rule, pkt: Packet) -> bool:
    """ip_packet_match() then every match, in order (HotDrop propagates)."""
    if not ip_part_matches(rule, pkt):
        return False
    for match in rule.matches:
        if not registry.matches()[match.name].matches(match.data, pkt):
            return False
    return True


def evaluate(table: Table, pkt: Packet, count: bool = True) -> Result:
    """Run ``pkt`` through ``table`` from its hook; update counters if asked."""
    hits: list[tuple[str, int]] = []
    stack: list[tuple[str, int]] = []
    chain_name, index = pkt.hook, 0
    base = pkt.hook
    while True:
        chain = table.chains[chain_name]
        if index >= len(chain.rules):
            if chain.builtin:
                if count:
                    chain.counters.add(1, pkt.length)
                return Result(chain.policy or "ACCEPT", hits=hits, policy_chain=chain_name)
            if not stack:  # fell off a chain reached by -g from the base chain
                chain_name, index = base, len(table.chains[base].rules)
                continue
            chain_name, index = stack.pop()
            continue
        rule = chain.rules[index]
        try:
            matched = rule_matches(rule, pkt)
        except HotDrop:
            return Result("DROP", hits=hits)
        if not matched:
            index += 1
            continue
        hits.append((chain_name, index))
        if count:
            rule.counters.add(1, pkt.length)
        target = rule.target
        if not target.is_standard:
            v = registry.targets()[target.name].verdict(target.data, pkt)
            if v.kind == "continue":
                index += 1
                continue
            return Result(v.kind.upper(), v.detail, hits)
        if target.name == "":
            index += 1
        elif target.name in ("ACCEPT", "DROP"):
            return Result(target.name, hits=hits)
        elif target.name == "RETURN":
            if chain.builtin:
                if count:
                    chain.counters.add(1, pkt.length)
                return Result(chain.policy or "ACCEPT", hits=hits, policy_chain=chain_name)
            if not stack:
                chain_name, index = base, len(table.chains[base].rules)
                continue
            chain_name, index = stack.pop()
        else:
            if not target.goto:
                if len(stack) >= MAX_DEPTH:
                    return Result("DROP", hits=hits)
                stack.append((chain_name, index + 1))
            chain_name, index = target.name, 0
