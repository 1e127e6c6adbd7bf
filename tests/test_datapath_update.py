"""Updates under continuous traffic: a packet sees the old rule set or the new one.

UDP flows run client -> server without pause while the server's rule set
changes again and again (inserts, deletes, replaces, restores, policy
changes; changes that only rewrite maps and changes that need a new
program). Flows whose verdict is the same under every rule set used must
never see a wrong outcome: every datagram of an always-accepted flow
arrives (sequence numbers, counted exactly), none of an always-dropped
flow does. The other flows change verdict and are only counted."""
from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.netns import bpf_command
from tests.support.paused import send_while_paused
from tests.test_datapath_traffic import (CLIENT_IP, SERVER_IP, Pair, datapath_command,
                                         ensure_bpffs, inside, ping, topology)
from tests.test_datapath_attach import state_dir

ACCEPTED = (6001, 6002)      # accepted by every rule set below
DROPPED = (6101, 6102)       # dropped by every rule set below
CHANGING = (7001, 7002)      # verdict changes
SO_RCVBUFFORCE = 33

BASE = """\
*filter
:INPUT {policy} [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KEEP - [0:0]
-A INPUT -p udp -m udp --dport 6001 -j ACCEPT
-A INPUT -p udp -j KEEP
-A INPUT -p udp -m udp --dport 6101 -j DROP
-A INPUT -p udp -m udp --dport 7001 -j {v7001}
-A KEEP -p udp -m udp --dport 6002 -j ACCEPT
-A KEEP -p udp -m udp --dport 6102 -j DROP
COMMIT
"""

# (what, argv or restore text): every rule set they produce keeps the
# verdicts of ACCEPTED and DROPPED
CHANGES: list[tuple[str, list[str] | str]] = [
    ("insert", ["-I", "INPUT", "1", "-p", "udp", "--dport", "7002", "-j", "DROP"]),
    ("policy", ["-P", "INPUT", "DROP"]),
    ("delete", ["-D", "INPUT", "1"]),
    ("replace", ["-R", "INPUT", "4", "-p", "udp", "--dport", "7001", "-j", "ACCEPT"]),
    # a new field (source prefixes): a new program shape
    ("new field", ["-I", "INPUT", "2", "-s", "10.98.0.0/16", "-j", "DROP"]),
    ("append", ["-A", "KEEP", "-p", "udp", "--dport", "7002", "-j", "ACCEPT"]),
    ("restore", BASE.format(policy="ACCEPT", v7001="DROP")),
    ("policy", ["-P", "INPUT", "DROP"]),
    ("insert", ["-I", "KEEP", "1", "-p", "udp", "--dport", "7001", "-j", "ACCEPT"]),
    ("zero", ["-Z"]),
    ("restore", BASE.format(policy="DROP", v7001="ACCEPT")),
    ("delete", ["-D", "INPUT", "4"]),
]


class Flows:
    """One sender thread (client) and one receiver thread (server)."""

    def __init__(self, pair, rate: int = 400):
        self.pair = pair
        self.rate = rate
        self.sent = {p: 0 for p in ACCEPTED + DROPPED + CHANGING}
        self.got: dict[int, set[int]] = {p: set() for p in self.sent}
        self.stop = threading.Event()
        with inside(pair.server):
            self.rx = {}
            for port in self.sent:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                s.bind((SERVER_IP, port))
                s.setblocking(False)
                self.rx[s.fileno()] = (s, port)
        with inside(pair.client):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tx.bind((CLIENT_IP, 0))
        self.receiving = True
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._recv)]

    def __enter__(self) -> "Flows":
        for t in self.threads:
            t.start()
        return self

    def _send(self) -> None:
        ports = list(self.sent)
        seq = 0
        start = time.monotonic()
        while not self.stop.is_set():
            for port in ports:
                try:
                    self.tx.sendto(seq.to_bytes(4, "big"), (SERVER_IP, port))
                except OSError:
                    continue  # not sent (e.g. ENOBUFS): not counted
                self.sent[port] += 1
            seq += 1
            # paced by the clock, not by sleeps: a slow machine sends fewer
            # packets, never bursts that could overflow a queue
            delay = start + seq / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _recv(self) -> None:
        poller = select.poll()
        for fd in self.rx:
            poller.register(fd, select.POLLIN)
        while self.receiving:
            for fd, _ in poller.poll(100):
                sock, port = self.rx[fd]
                while True:
                    try:
                        data = sock.recv(64)
                    except BlockingIOError:
                        break
                    self.got[port].add(int.from_bytes(data[:4], "big"))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.threads[0].join()
        time.sleep(1.0)  # the last datagrams (a loaded machine is slow)
        self.receiving = False
        self.threads[1].join()
        for sock, _ in self.rx.values():
            sock.close()
        self.tx.close()


def live_input_prog(ns) -> int:
    with open(os.path.join(state_dir(ns), "datapath.json")) as fh:
        rec = json.load(fh)
    return rec["slots"][rec["active"]]["hooks"]["INPUT"]["prog_id"]


def test_updates_under_traffic_never_mix_rule_sets():
    ensure_bpffs()
    with topology("dpt") as t:
        s = t.server
        r = s.run(bpf_command("iptables-restore"), input=BASE.format(policy="ACCEPT", v7001="DROP"))
        assert r.returncode == 0, r.stderr
        assert s.run(datapath_command("attach")).returncode == 0
        assert ping(t, 1) == 1  # the neighbours are resolved before the flows start
        programs: list[int] = [live_input_prog(s)]
        with Flows(t) as flows:
            time.sleep(0.5)
            for what, change in CHANGES:
                if isinstance(change, str):
                    r = s.run(bpf_command("iptables-restore"), input=change)
                else:
                    r = s.bpf_iptables(*change)
                assert r.returncode == 0, (what, r.stderr)
                programs.append(live_input_prog(s))
                time.sleep(0.3)
        # both paths ran: programs reused (map-only) and new ones (recompiled)
        # (updates alternate between the two generations: i and i - 2 share one)
        reused = sum(1 for i in range(2, len(programs)) if programs[i] == programs[i - 2])
        rebuilt = len(programs) - 2 - reused
        assert reused >= 4 and rebuilt >= 1, programs
        for port in ACCEPTED:
            missing = flows.sent[port] - len(flows.got[port])
            assert flows.sent[port] > 1000 and missing == 0, (port, flows.sent[port], missing)
        for port in DROPPED:
            assert flows.got[port] == set(), (port, len(flows.got[port]))
        # the changing flows were seen both ways
        for port in CHANGING:
            assert 0 < len(flows.got[port]) < flows.sent[port], port


@contextmanager
def attached_base(prefix: str) -> Iterator[tuple[Pair, socket.socket]]:
    """The traffic topology with BASE (policy ACCEPT, 7001 dropped) restored
    and attached in the server namespace, and a UDP socket of the client."""
    ensure_bpffs()
    with topology(prefix) as t:
        assert t.server.run(bpf_command("iptables-restore"),
                            input=BASE.format(policy="ACCEPT", v7001="DROP")).returncode == 0
        assert t.server.run(datapath_command("attach")).returncode == 0
        with inside(t.client):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        yield t, tx


def test_counters_follow_rules_across_updates():
    """Counters of an untouched rule survive a run of updates (map-only
    and not) exactly when no packet is in flight."""
    port = 6001
    with attached_base("dpk") as (t, tx):
        s = t.server
        with tx:
            for i, (_, change) in enumerate(CHANGES[:4]):
                tx.sendto(b"x", (SERVER_IP, port))
                time.sleep(0.2)
                assert s.bpf_iptables(*change).returncode == 0
        rules = s.bpf_iptables("-S", "INPUT", "-v").stdout
        assert f"--dport {port} -c 4 116 -j ACCEPT" in rules, rules
        # packets the old generation counts after its counters were read for
        # the new one, before the switch: carried, not lost
        send_while_paused(["ip", "netns", "exec", s.name,
                           *bpf_command("iptables", "-A", "INPUT", "-p", "udp", "--dport", "7009",
                                        "-j", "DROP")], {}, "counted", t.client, (SERVER_IP, port))
        rules = s.bpf_iptables("-S", "INPUT", "-v").stdout
        assert f"--dport {port} -c 7 203 -j ACCEPT" in rules, rules
