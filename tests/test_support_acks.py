"""The pure-ACK tolerance of the bulk-transfer comparisons
(tests/support/acks.py) accepts only whole pure ACKs in the named chain."""
from __future__ import annotations

from tests.support.acks import differ_only_by_pure_acks

WANT = """\
Chain INPUT (policy DROP 3 packets, 136 bytes)
    pkts      bytes target     prot opt in     out     source               destination         
      26    66881 ACCEPT     0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate RELATED,ESTABLISHED

Chain OUTPUT (policy ACCEPT 28 packets, 67025 bytes)
    pkts      bytes target     prot opt in     out     source               destination         
      23    66816            0    --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate ESTABLISHED ctdir REPLY
"""


def test_one_more_pure_ack_in_output_is_tolerated():
    got = WANT.replace("28 packets, 67025 bytes", "29 packets, 67077 bytes") \
              .replace("      23    66816", "      24    66868")
    assert differ_only_by_pure_acks(WANT, got, ("OUTPUT",))


def test_anything_else_is_not():
    # not a whole pure ACK
    assert not differ_only_by_pure_acks(
        WANT, WANT.replace("      23    66816", "      24    66869"), ("OUTPUT",))
    # three ACKs: more than the tolerance
    assert not differ_only_by_pure_acks(
        WANT, WANT.replace("      23    66816", "      26    66972"), ("OUTPUT",))
    # another chain's counters
    assert not differ_only_by_pure_acks(
        WANT, WANT.replace("      26    66881", "      27    66933"), ("OUTPUT",))
    # text other than counters
    assert not differ_only_by_pure_acks(WANT, WANT.replace("REPLY", "ORIGINAL"), ("OUTPUT",))
    assert not differ_only_by_pure_acks(WANT, WANT + "\n", ("OUTPUT",))
