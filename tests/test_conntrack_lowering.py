"""What the data path enforces of -m conntrack / -m state, and what it
refuses (NotSupported, exit 2) instead of ignoring. Compile only; the
packets are test_conntrack_property's."""
from __future__ import annotations

import pytest

from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import table_from_lines
from bpf_iptables.errors import NotSupported

ENFORCED = [
    ("-m state --state ESTABLISHED,RELATED -j ACCEPT", {"ctstate"}),
    ("-m conntrack ! --ctstate INVALID --ctdir REPLY", {"ctstate"}),
    ("-m conntrack --ctstatus ASSURED,SEEN_REPLY", {"ctstate"}),
    ("-m conntrack --ctstate NEW --ctproto tcp --ctorigdst 10.0.0.0/8 --ctorigdstport 80:90",
     {"ctstate", "proto", "dst", "dport"}),
    ("-m conntrack --ctstate ESTABLISHED --ctdir REPLY --ctrepldst 10.1.0.0/16",
     {"ctstate", "dst"}),
    ("-m conntrack --ctstate NEW,ESTABLISHED ! --ctproto icmp", {"ctstate", "proto"}),
]
# per-candidate checks (ctcheck_map): the connection's tuple or lifetime is
# not the packet's own, or the match lets packets without one through
CHECKED = [
    "-m conntrack --ctexpire 10:20",
    "-m conntrack ! --ctexpire 0",
    "-m conntrack --ctproto tcp",                                  # INVALID skips it
    "-m conntrack --ctstate RELATED --ctproto udp",                # an ICMP error's flow
    "-m conntrack --ctstate ESTABLISHED --ctorigsrc 10.0.0.1",     # either direction
    "-m conntrack --ctstate NEW --ctorigsrcport 1024:65535",       # any protocol's tuple
    "-m conntrack --ctstate INVALID,UNTRACKED --ctreplsrc 10.0.0.0/8 --ctrepldstport 5",
]
REFUSED = [
    "-m conntrack --ctstate SNAT",
    "-m conntrack --ctstate DNAT,NEW",
    # more than CT_CHECKS_MAX checks repeating an option on one path
    " ".join(f"-m conntrack --ctexpire {i}" for i in range(5)),
]


@pytest.mark.parametrize("match", CHECKED)
def test_enforced_per_candidate(match):
    c = compile_chain(table_from_lines([f"-A INPUT {match}"]), "INPUT", {})
    assert {"ctstate", "ctcheck"} <= c.shape.fields
    assert c.entries[0].fields.ctcheck


def test_repeated_options_chain_checks():
    rule = "-m conntrack --ctexpire 1:5 -m conntrack --ctexpire 3 -m conntrack --ctproto 6"
    c = compile_chain(table_from_lines([f"-A INPUT {rule}"]), "INPUT", {})
    checks = c.entries[0].fields.ctcheck
    assert len(checks) == 2 and checks[0].flags == (1 << 7) | (1 << 1)
    assert c.shape.ctextra_max == 2


@pytest.mark.parametrize("match,fields", ENFORCED)
def test_enforced_as_fields(match, fields):
    c = compile_chain(table_from_lines([f"-A INPUT {match}"]), "INPUT", {})
    assert fields <= c.shape.fields


@pytest.mark.parametrize("match", REFUSED)
def test_refused(match):
    with pytest.raises(NotSupported):
        compile_chain(table_from_lines([f"-A INPUT {match}"]), "INPUT", {})


def test_every_hook_tracks_when_one_rule_uses_conntrack():
    table = table_from_lines(["-A FORWARD -m state --state NEW -j DROP", "-A OUTPUT -p udp"])
    for hook in ("INPUT", "FORWARD", "OUTPUT"):
        assert "ctstate" in compile_chain(table, hook, {}).shape.fields
    plain = table_from_lines(["-A INPUT -p udp -j DROP"])
    assert "ctstate" not in compile_chain(plain, "INPUT", {}).shape.fields
