"""Three ways packets passed the data path unclassified (found while adding
connection tracking), each against iptables-legacy with real traffic:

- a FORWARD classifier in a namespace that does not forward: the root's
  route lookup answered FWD_DISABLED for every packet, and INPUT was skipped;
- OUTPUT at TC egress: a 64 KB TCP send (GSO) failed the IP length check
  against the skb's linear part and passed uncounted;
- FORWARD: a GRO aggregate got FRAG_NEEDED from the route lookup (longer
  than the MTU) and passed unclassified."""
from __future__ import annotations

from tests.support.acks import differ_only_by_pure_acks
from tests.support.twins import load_twins
from tests.test_conntrack_traffic import transfer
from tests.test_datapath_traffic import (FAR_IP, Pair, ensure_bpffs, routed,
                                         topology, udp)

SERVER_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 5001 -j DROP
-A OUTPUT -p tcp -m tcp --sport 8080
COMMIT
"""

ROUTER_RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --sport 8080
-A FORWARD -p tcp -m tcp --dport 8080
COMMIT
"""


def test_input_and_large_output_in_a_namespace_that_does_not_forward():
    ensure_bpffs()
    with topology("bpl") as legacy, topology("bpb") as ours:
        load_twins(legacy.server, ours.server, SERVER_RULES, "--mode", "xdpgeneric")
        for pair in (legacy, ours):
            assert udp(pair, 5001, 3) == 0     # INPUT enforced despite the FORWARD program
            assert udp(pair, 5002, 2) == 2
            assert transfer(pair, 8080, 64 * 1024) == 64 * 1024
        listing = legacy.server.iptables("-L", "-v", "-x", "-n").stdout
        mine = ours.server.bpf_iptables("-L", "-v", "-x", "-n").stdout
        # the pure ACKs of the bulk transfer vary with timing
        assert mine == listing or differ_only_by_pure_acks(listing, mine, ("INPUT", "OUTPUT")), \
            f"iptables-legacy:\n{listing}\nbpf-iptables:\n{mine}"


def test_large_forwarded_segments_are_classified():
    ensure_bpffs()
    with routed("bprl") as legacy, routed("bprb") as ours:
        load_twins(legacy.router, ours.router, ROUTER_RULES)
        for t in (legacy, ours):
            assert transfer(Pair(t.client, t.server), 8080, 64 * 1024, FAR_IP) == 64 * 1024
        listing = legacy.router.iptables("-L", "-v", "-x", "-n").stdout
        mine = ours.router.bpf_iptables("-L", "-v", "-x", "-n").stdout
        # the pure ACKs of the bulk transfer vary with timing
        assert mine == listing or differ_only_by_pure_acks(listing, mine, ("FORWARD",)), \
            f"iptables-legacy:\n{listing}\nbpf-iptables:\n{mine}"
