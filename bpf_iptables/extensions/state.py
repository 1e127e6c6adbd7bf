"""-m state --state: the conntrack state alone (libxt_conntrack's "state").

In iptables 1.8.9 "-m state" is an alias of the kernel conntrack match,
revision 3, with the XT_CONNTRACK_STATE_ALIAS flag set: it saves as
"-m state --state ..." and lists as "state ...". Its data is therefore a
``ConntrackData`` with only the state fields, distinct from any
``-m conntrack --ctstate`` rule (the alias flag differs, as in the kernel).

It knows no SNAT/DNAT states; see conntrack.py for the no-NAT semantics."""
from __future__ import annotations

from typing import Any

from ..errors import XtablesError
from .base import ParseContext, T, XtOption, XtOptionsExtension, XtState
from .conntrack import (F_STATE, F_STATE_ALIAS, STATE_ALIAS_NAMES, ConntrackData,
                        ConntrackDataMatch, ncase_prefix)


def parse_states(arg: str) -> int:
    """state_parse_states(): like --ctstate, but a trailing comma gets its
    own message and the error says "state"."""
    mask = 0
    rest = arg
    while "," in rest:
        head, _, tail = rest.partition(",")
        hit = next((b for n, b in STATE_ALIAS_NAMES if ncase_prefix(head, n)), None) if head else None
        if hit is None:
            raise XtablesError(f'Bad state "{rest}"')
        mask |= hit
        rest = tail
    if not rest:
        raise XtablesError('"--state" requires a list of states with no spaces, '
                           "e.g. ESTABLISHED,RELATED")
    hit = next((b for n, b in STATE_ALIAS_NAMES if ncase_prefix(rest, n)), None)
    if hit is None:
        raise XtablesError(f'Bad state "{rest}"')
    return mask | hit


class StateMatch(XtOptionsExtension, ConntrackDataMatch):
    name = "state"
    help_text = (
        "state match options:\n"
        " [!] --state [INVALID|ESTABLISHED|NEW|RELATED|UNTRACKED][,...]\n"
        "\t\t\t\tState(s) to match\n")
    xt_options = (XtOption("state", T.STRING, invert=True, mand=True),)

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        state.values["mask"] = parse_states(arg or "")

    def build(self, state: XtState, ctx: ParseContext) -> ConntrackData:
        return ConntrackData(match_flags=F_STATE | F_STATE_ALIAS,
                             invert_flags=F_STATE if state.inverted.get("state") else 0,
                             state_mask=state.values["mask"])


EXTENSIONS = [StateMatch()]
