"""Back-to-back served updates overlap the previous update's grace period.

After a switch the command server waits for the RCU grace period in a
thread (live.grace_start); a request that arrives meanwhile takes the held
xtables lock over and compiles and builds its images before it waits for
that grace period (server.Server.locked, live.update). Here commands are
sent two at a time (the second one's connection is queued while the first
is served, so it is accepted while the first one's grace period runs)
while UDP datagrams are sent without pause: every rule counter must
equal what was sent, the policy what was sent since the last command
read it (a commit restarts it, as libiptc's), and the server's step log must show updates
that waited for a previous grace period (``grace:wait``), i.e. that began
before it ended. No timing is asserted."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.netns import REPO, bpf_command
from tests.test_datapath_traffic import (SERVER_IP, datapath_command, ensure_bpffs, inside,
                                         topology)

RULES = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KEEP - [0:0]
-A INPUT -p udp -m udp --dport 6001 -j ACCEPT
-A INPUT -p udp -j KEEP
-A INPUT -p udp -m udp --dport 6101 -j DROP
-A KEEP -p udp -m udp --dport 6002 -j ACCEPT
COMMIT
"""
# 6001: INPUT's first rule; 6002: through KEEP; 6101: dropped; 6500: INPUT's policy
PORTS = (6001, 6002, 6101, 6500)
# pairs sent at once (either order gives the same rule set), each
# command with its exit status
PAIRS: list[tuple[tuple[list[str], int], ...]] = [
    ((["-A", "INPUT", "-p", "udp", "--dport", "7001", "-j", "DROP"], 0),
     (["-I", "INPUT", "1", "-p", "tcp", "--dport", "7002", "-j", "DROP"], 0)),
    ((["-D", "INPUT", "-p", "udp", "--dport", "7001", "-j", "DROP"], 0),
     (["-D", "INPUT", "-p", "tcp", "--dport", "7002", "-j", "DROP"], 0)),
] * 3 + [
    # a refusal (XDP has no mark: NotSupported before anything is written)
    # and a check (reads every counter: settles), either of which may take
    # the held lock over
    ((["-A", "INPUT", "-p", "tcp", "--dport", "7003", "-j", "DROP"], 0),
     (["-A", "INPUT", "-m", "mark", "--mark", "1", "-j", "DROP"], 2)),
    ((["-D", "INPUT", "-p", "tcp", "--dport", "7003", "-j", "DROP"], 0),
     (["-C", "INPUT", "-p", "udp", "-j", "KEEP"], 0)),
]


class Sender:
    """Datagrams to PORTS in turn, without pause, from the client namespace."""

    def __init__(self, client: str):
        with inside(client):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = dict.fromkeys(PORTS, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            for port in PORTS:
                self.tx.sendto(b"x", (SERVER_IP, port))
                self.sent[port] += 1
            time.sleep(0.001)

    def __enter__(self) -> "Sender":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.tx.close()


def _env(lock: Path) -> dict[str, str]:
    # as tests.support.netns.Namespace.run: the server refuses a request
    # whose fixed environment differs from its own
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)),
            "LC_ALL": "C", "XTABLES_LOCKFILE": str(lock), "BPF_IPTABLES_SERVER_LOG": "1"}


def _run(ns: str, env: dict[str, str], *argv: str, input: str | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, text=True,
                          capture_output=True, env=env, timeout=120)


def _counts(listing: str, rule: str) -> int:
    """The packet count of the -S -v line holding ``rule``."""
    for line in listing.splitlines():
        if rule in line:
            return int(re.search(r" -c (\d+) ", line).group(1))
    raise AssertionError(f"no rule {rule!r} in\n{listing}")


def test_back_to_back_updates_overlap_the_grace_period_and_count_exactly(tmp_path) -> None:
    ensure_bpffs()
    env = _env(tmp_path / "xtables.lock")
    with topology("dpg") as t:
        s = t.server.name
        assert _run(s, env, *bpf_command("iptables-restore"), input=RULES).returncode == 0
        r = _run(s, env, *datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        state = Path(_run(s, env, sys.executable, "-c", "from bpf_iptables import state; "
                          "print(state.namespace_dir())").stdout.strip())
        log = state / "watch.log"
        # the server up and served once (its first update primes nothing we check)
        deadline = time.monotonic() + 30
        while "status 0" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            _run(s, env, *bpf_command("iptables", "-S", "INPUT"))
            time.sleep(0.2)
        with Sender(t.client) as sender:
            for pair in PAIRS:
                policy_from = sender.sent[6500]
                procs = [(subprocess.Popen(["ip", "netns", "exec", s,
                                            *bpf_command("iptables", "-w", *argv)],
                                           env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True), want)
                         for argv, want in pair]
                for p, want in procs:
                    _, err = p.communicate(timeout=120)
                    assert p.returncode == want, err
                policy_to = sender.sent[6500]
            time.sleep(0.1)
        time.sleep(0.3)   # the last datagrams through XDP
        listing = _run(s, env, *bpf_command("iptables", "-S", "-v")).stdout
        assert _counts(listing, "--dport 6001 -c") == sender.sent[6001], \
            listing + log.read_text()[-6000:]
        assert _counts(listing, "-A KEEP -p udp -m udp --dport 6002") == sender.sent[6002]
        assert _counts(listing, "--dport 6101 -c") == sender.sent[6101], listing
        assert _counts(listing, "-A INPUT -p udp -c") == \
            sender.sent[6002] + sender.sent[6101] + sender.sent[6500], listing
        # a commit restarts the policy counters from what its command read
        # (tableops.reset_policy_counters, as libiptc): the last update read
        # them after the last pair began and before it ended
        policy = re.search(r"^-P INPUT ACCEPT -c (\d+) ", listing, re.M)
        assert policy is not None, listing
        assert sender.sent[6500] - policy_to <= int(policy.group(1)) \
            <= sender.sent[6500] - policy_from, (policy_from, policy_to, sender.sent, listing)
        # the rule set is the one restored (every pair undone)
        assert not any(f"{port}" in listing for port in (7001, 7002, 7003)), listing
        assert "mark" not in listing
        # updates that began while the previous grace period ran (they
        # waited for it, after their compile and images): the second of a
        # pair, whose connection was queued meanwhile (a client the busy
        # server did not answer within client.READY_WAIT runs its command
        # itself: not every pair need show it on a loaded machine)
        # (a command whose load read every counter, e.g. after a refused
        # command dropped the server's cached rule set, joined the grace
        # period in its load: grace:wait before its image, not overlapped)
        lines = [line for line in log.read_text().splitlines()
                 if "iptables -w" in line and "status 0" in line]
        overlapped = [line for line in lines if "grace:wait" in line and " image " in line
                      and line.index(" image ") < line.index("grace:wait") < line.index("prepare ")]
        # (7 of 15 on an idle machine, 2 with both cores busy: at least one)
        assert overlapped, log.read_text()[-3000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
