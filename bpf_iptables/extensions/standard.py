"""The standard target: ACCEPT, DROP, RETURN and jumps to user chains.

It has no options and no save or print text of its own; the verdict or
chain name is the rule's target name. QUEUE would hand packets to user
space, which the eBPF data path cannot do, so it is refused."""
from __future__ import annotations

from typing import Any

from ..errors import NotSupported
from .base import ParseContext, TargetExtension, Verdict


class StandardTarget(TargetExtension):
    name = "standard"
    help_text = ("standard match options:\n"
                 "(If target is DROP, ACCEPT, RETURN or nothing)\n")

    def init(self) -> None:
        return None

    def parse(self, state: Any, option: str, arg: str | None, invert: bool,
              ctx: ParseContext) -> None:
        raise AssertionError("the standard target has no options")

    def final_check(self, state: Any, ctx: ParseContext) -> None:
        return None

    def verdict(self, data: Any, packet: Any) -> Verdict:
        raise AssertionError("standard verdicts are handled by the traversal")


def refuse_queue(name: str) -> None:
    """Called by the parser for every -j NAME that maps to this target:
    QUEUE is a standard verdict for iptables, but nothing in user space
    could receive the packets, so it is refused when -j is parsed, like
    the other targets bpf-iptables lacks."""
    if name == "QUEUE":
        raise NotSupported("target `QUEUE'")


EXTENSIONS = [StandardTarget()]
