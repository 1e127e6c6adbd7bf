"""Counter values as flat arrays (bpf_iptables/datapath/counts.py) and the
carry an update leaves to read later (live.Unsettled, live.settle: the
command server reads it once its client has the answer, then zeroes the
old generation's counters so that the next update writes only counted
slots).

The array operations must give the same with numpy imported (the server)
and without (a fresh process); the deferred carry must count what the old
generation counted between the update's read and the switch, as the
immediate read does (test_datapath_update.test_counters_follow_rules_...)."""
from __future__ import annotations

import random
import socket
import sys
import time
from array import array

from bpf_iptables.datapath import counts as C
from tests.support.paused import send_while_paused
from tests.test_datapath_traffic import SERVER_IP, inside
from tests.test_datapath_update import attached_base


def _reference_sum(values: bytes, nslots: int, ncpu: int) -> list[int]:
    words = array("Q", values)
    out = []
    for slot in range(nslots):
        for k in (0, 1):
            out.append(sum(words[(slot * ncpu + c) * 2 + k] for c in range(ncpu)))
    return out


def _ops(rng: random.Random) -> list:
    """Every counts.py operation on random reads, as plain lists."""
    results = []
    for ncpu in (1, 2, 3):
        nslots = rng.randrange(1, 40)
        raw = array("Q", [rng.choice((0, 0, 1, 7, 2**40)) for _ in range(2 * ncpu * nslots)])
        flat = C.summed(raw.tobytes(), nslots, ncpu)
        assert list(flat) == _reference_sum(raw.tobytes(), nslots, ncpu)
        later = array("Q", (v + rng.choice((0, 0, 0, 3)) for v in flat))
        results += [list(flat), C.changed(later, flat), list(C.sub(later, flat)),
                    list(C.add(flat, later)), list(C.total([flat, later])),
                    C.nonzero_slots(flat), list(C.select(flat, [0, nslots - 1])),
                    list(C.pairs(flat, 1, 3)), C.per_cpu(flat, ncpu)]
        # slots past the shorter read count as changed when not zero
        results.append(C.changed(later + array("Q", [0, 0, 5, 0]), flat))
        assert C.summed(C.per_cpu(flat, ncpu), nslots, ncpu) == flat
    return results


def test_same_with_and_without_numpy() -> None:
    import numpy  # noqa: F401
    with_numpy = _ops(random.Random(5))
    saved = sys.modules.pop("numpy")
    try:
        without = _ops(random.Random(5))
    finally:
        sys.modules["numpy"] = saved
    assert with_numpy == without
    flat = array("Q", [1, 2, 0, 0, 3, 4])
    assert C.changed(flat, flat) == [] and C.nonzero_slots(flat) == [0, 2]
    assert C.changed(array("Q", [1, 2, 0, 1, 3, 4]), flat) == [1]


# in the namespace: an -A as the command server runs it (carry deferred),
# packets sent by the test while it pauses after its counters were
# written, then what the server does after answering: grace period,
# settle (carry into the record, old generation zeroed), then one more
# update in the same process (a sparse counter write)
_DEFERRED = """
import os, sys
from bpf_iptables.datapath import live
from bpf_iptables.cli.iptables import run
live.DEFER_CARRY = True
assert run(["-A", "INPUT", "-p", "udp", "--dport", "7009", "-j", "DROP"]) == 0
assert live.unsettled()
os.environ.pop("BPF_IPTABLES_DATAPATH_PAUSE_AT")
live.grace_period()
live.settle(zero=True)
assert live._zeroed is not None and not live.unsettled()
assert run(["-A", "INPUT", "-p", "udp", "--dport", "7010", "-j", "DROP"]) == 0
assert live._zeroed is None
live.settle(zero=True)
"""


def test_deferred_carry_and_sparse_writes_keep_counters_exact() -> None:
    port = 6001
    with attached_base("dpc") as (t, tx):
        s = t.server
        with tx:
            tx.sendto(b"x", (SERVER_IP, port))
        time.sleep(0.2)
        send_while_paused(["ip", "netns", "exec", s.name, sys.executable, "-c", _DEFERRED],
                          {"BPF_IPTABLES_SERVER": "off"}, "counted", t.client, (SERVER_IP, port))
        rules = s.bpf_iptables("-S", "INPUT", "-v").stdout
        assert f"--dport {port} -c 4 116 -j ACCEPT" in rules, rules
        # and through the command server: an update, packets, another
        with inside(t.client):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tx:
            for change in (["-D", "INPUT", "-p", "udp", "--dport", "7010", "-j", "DROP"],
                           ["-I", "INPUT", "1", "-p", "udp", "--dport", "7011", "-j", "DROP"],
                           ["-D", "INPUT", "1"]):
                tx.sendto(b"x", (SERVER_IP, port))
                time.sleep(0.2)
                assert s.bpf_iptables(*change).returncode == 0
        rules = s.bpf_iptables("-S", "INPUT", "-v").stdout
        assert f"--dport {port} -c 7 203 -j ACCEPT" in rules, rules
        # listings in between (the server lays only moved slots on its
        # rule set), -Z, and a refused command that had set counters
        # (-R -c with a match XDP cannot enforce: the server drops the
        # rule set it changed)
        with inside(t.client):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        steps = [(None, 8), (None, 9), (["-Z", "INPUT"], 1), (None, 2),
                 (["-R", "INPUT", "1", "-c", "100", "100", "-p", "udp", "--dport", str(port),
                   "-m", "mark", "--mark", "1", "-j", "ACCEPT"], 3),
                 (["-A", "INPUT", "-p", "udp", "--dport", "7012", "-j", "DROP"], 4)]
        with tx:
            for change, want in steps:
                if change is not None:
                    r = s.bpf_iptables(*change)
                    assert r.returncode == (2 if "mark" in change else 0), r.stderr
                tx.sendto(b"x", (SERVER_IP, port))
                time.sleep(0.2)
                rules = s.bpf_iptables("-S", "INPUT", "-v").stdout
                assert f"--dport {port} -c {want} {29 * want} -j ACCEPT" in rules, \
                    (change, rules)
