"""-m recent and a limit on a jump rule with real traffic, next to
iptables-legacy: two namespaces, the same rules, the same packet trains.

ufw's rate limit (``ufw limit``: --set, then --update --seconds 30
--hitcount 6 jumping to a chain with a limited LOG and a REJECT): 10 TCP
connections to a listening socket -> the same connections accepted and
refused, the same counters, and bpf-iptables-recent listing what
/proc/net/xt_recent/DEFAULT lists (address, TTL, stamps); the lists
outlive an update, are flushed by a rule needing more stamps and go with
their last rule; the writes /proc accepts; a recent match that is not its
rule's last is refused with exit 2.
A limit on a jump rule: the same counts in the calling and called chain."""
from __future__ import annotations

import re
import sys
import threading

from tests.support.netns import Namespace, bpf_command, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

ON = {"BPF_IPTABLES_DATAPATH": "on"}

UFW_LIMIT = [
    ["-N", "LIM"],
    ["-A", "LIM", "-m", "limit", "--limit", "3/min", "-j", "LOG", "--log-prefix",
     "[UFW LIMIT BLOCK] "],
    ["-A", "LIM", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "2222", "-m", "conntrack", "--ctstate", "NEW",
     "-m", "recent", "--set", "--name", "DEFAULT", "--mask", "255.255.255.255", "--rsource"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "2222", "-m", "conntrack", "--ctstate", "NEW",
     "-m", "recent", "--update", "--seconds", "30", "--hitcount", "6", "--name", "DEFAULT",
     "--mask", "255.255.255.255", "--rsource", "-j", "LIM"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
]

CONNECTS = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 2222))
srv.listen(32)
out = []
for i in range(int(sys.argv[1])):
    c = socket.socket()
    c.settimeout(3)
    try:
        c.connect(("127.0.0.1", 2222))
        out.append("ok")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as exc:
        out.append(type(exc).__name__)
    c.close()
print(" ".join(out))
"""

UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(b"x", ("127.0.0.1", 9999))
"""


PACED = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(int(sys.argv[1])):
    while time.monotonic() < start + i / 40:
        time.sleep(0.001)
    s.sendto(b"x", ("127.0.0.1", 9999))
"""


def iptables(ns: Namespace, ours: bool, *args: str):
    argv = bpf_command("iptables", *args) if ours else ["iptables-legacy", *args]
    return ns.run(argv, env=ON)


def both(real: Namespace, ours: Namespace, *args: str) -> None:
    for ns, mine in ((real, False), (ours, True)):
        r = iptables(ns, mine, *args)
        assert r.returncode == 0, (args, r.stderr)


def counts(ns: Namespace, ours: bool, chain: str) -> list[int]:
    out = iptables(ns, ours, "-L", chain, "-v", "-x", "-n").stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


def run_both(real: Namespace, ours: Namespace, script: str, n: int) -> tuple[str, str]:
    argv = [sys.executable, "-c", script, str(n)]
    res: dict[str, str] = {}
    t = threading.Thread(target=lambda: res.setdefault("real", real.run(argv).stdout))
    t.start()
    mine = ours.run(argv).stdout
    t.join()
    return res["real"].strip(), mine.strip()


def recent_cli(ns: Namespace, *args: str):
    return ns.run([sys.executable, "-m", "bpf_iptables.cli.recent", *args])


ENTRY = re.compile(r"^src=(\S+) ttl: (\d+) last_seen: (\d+) oldest_pkt: (\d+)((?:,? \d+)*)$")


def entries(text: str) -> list[tuple[str, int, int, int]]:
    """(address, ttl, oldest_pkt, stamps) per line, sorted by address."""
    out = []
    for line in text.splitlines():
        m = ENTRY.match(line)
        assert m, line
        stamps = m.group(5).replace(",", " ").split()
        assert m.group(3) in stamps
        out.append((m.group(1), int(m.group(2)), int(m.group(4)), len(stamps)))
    return sorted(out)


def proc(real: Namespace, name: str):
    return real.run(["cat", f"/proc/net/xt_recent/{name}"])


def test_ufw_rate_limit_like_iptables_legacy():
    ensure_bpffs()
    with namespace("recr") as real, namespace("reco") as ours:
        try:
            for ns in (real, ours):
                ns.run(["ip", "link", "set", "lo", "up"])
            for rule in UFW_LIMIT:
                both(real, ours, *rule)
            r, o = run_both(real, ours, CONNECTS, 10)
            assert r == o == " ".join(["ok"] * 5 + ["refused"] * 5), (r, o)
            for chain in ("INPUT", "LIM"):
                rc, oc = counts(real, False, chain), counts(ours, True, chain)
                # the rules that see SYNs only are exact; the ACCEPT rule also
                # counts the handshakes' other packets, as many on both sides
                assert rc == oc, (chain, rc, oc)
            # every NEW connection is --set; --update matched from the 6th
            assert counts(real, False, "INPUT")[:2] == [10, 5]
            assert counts(real, False, "LIM")[1] == 5
            # the list, as /proc/net/xt_recent/DEFAULT shows it
            want = entries(proc(real, "DEFAULT").stdout)
            assert want == [("127.0.0.1", 64, 15, 15)]
            listing = recent_cli(ours, "DEFAULT")
            assert listing.returncode == 0, listing.stderr
            assert entries(listing.stdout) == want
            assert recent_cli(ours).stdout == "DEFAULT\n"
            # a change replaces the table: the list stays
            both(real, ours, "-A", "INPUT", "-p", "icmp")
            assert entries(recent_cli(ours, "DEFAULT").stdout) == want \
                == entries(proc(real, "DEFAULT").stdout)
            # a rule needing more stamps than the list keeps flushes it
            grow = ["INPUT", "-m", "recent", "--rcheck", "--hitcount", "40", "--name", "DEFAULT"]
            both(real, ours, "-A", *grow)
            assert proc(real, "DEFAULT").stdout == recent_cli(ours, "DEFAULT").stdout == ""
            both(real, ours, "-D", *grow)
            r, o = run_both(real, ours, CONNECTS, 2)
            assert r == o == "ok ok"
            assert entries(recent_cli(ours, "DEFAULT").stdout) \
                == entries(proc(real, "DEFAULT").stdout) == [("127.0.0.1", 64, 2, 2)]
            # the writes /proc takes: remove, add, flush
            real.run(["sh", "-c", "echo -127.0.0.1 > /proc/net/xt_recent/DEFAULT"])
            assert recent_cli(ours, "DEFAULT", "-127.0.0.1").returncode == 0
            real.run(["sh", "-c", "echo +10.0.0.5 > /proc/net/xt_recent/DEFAULT"])
            assert recent_cli(ours, "DEFAULT", "+10.0.0.5").returncode == 0
            assert entries(recent_cli(ours, "DEFAULT").stdout) == [("10.0.0.5", 0, 1, 1)] \
                == entries(proc(real, "DEFAULT").stdout)
            bad = recent_cli(ours, "DEFAULT", "x10.0.0.5")
            assert bad.returncode == 1 and "Need" in bad.stderr
            # refused again after the removal: a fresh start for 127.0.0.1
            both(real, ours, "-Z")
            r, o = run_both(real, ours, CONNECTS, 7)
            assert r == o == " ".join(["ok"] * 5 + ["refused"] * 2), (r, o)
            assert counts(real, False, "LIM") == counts(ours, True, "LIM")
            assert counts(ours, True, "LIM")[1] == 2
            real.run(["sh", "-c", "echo / > /proc/net/xt_recent/DEFAULT"])
            assert recent_cli(ours, "DEFAULT", "/").returncode == 0
            assert recent_cli(ours, "DEFAULT").stdout == proc(real, "DEFAULT").stdout == ""
            # the list goes with its last rule
            both(real, ours, "-D", "INPUT", "2")
            both(real, ours, "-D", "INPUT", "1")
            assert proc(real, "DEFAULT").returncode != 0
            assert recent_cli(ours, "DEFAULT").returncode == 1
            # what cannot be exact is refused: exit 2, nothing changed
            before = iptables(ours, True, "-S").stdout
            r = iptables(ours, True, "-A", "INPUT", "-m", "recent", "--set", "-p", "tcp",
                         "-m", "tcp", "--dport", "1")
            assert r.returncode == 2 and "last match" in r.stderr, r
            assert iptables(ours, True, "-S").stdout == before
        finally:
            ours.run(datapath_command("detach"))


def test_limit_on_a_jump_rule_and_recent_at_output_like_iptables_legacy():
    """A limit on a jump rule: one token per packet, the same counts in the
    calling and the called chain. A list set at OUTPUT (TC egress) on the
    destination, and a --seconds window over a paced train at INPUT."""
    ensure_bpffs()
    with namespace("recjr") as real, namespace("recjo") as ours:
        try:
            for ns in (real, ours):
                ns.run(["ip", "link", "set", "lo", "up"])
            for rule in (["-N", "C"],
                         ["-A", "C", "-p", "udp", "--sport", "1:65535"],
                         ["-A", "C", "-p", "udp", "-j", "DROP"],
                         ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-m", "limit",
                          "--limit", "1/min", "--limit-burst", "3", "-j", "C"],
                         ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT"],
                         ["-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-m", "recent",
                          "--set", "--rdest", "--name", "OUT"]):
                both(real, ours, *rule)
            run_both(real, ours, UDP, 10)
            assert counts(real, False, "INPUT") == counts(ours, True, "INPUT") == [3, 7]
            assert counts(real, False, "C") == counts(ours, True, "C") == [3, 3]
            want = entries(proc(real, "OUT").stdout)
            assert want == [("127.0.0.1", 64, 10, 10)]
            assert entries(recent_cli(ours, "OUT").stdout) == want
            # a window: a packet is dropped while 8 accepted ones lie within
            # the last second (--rcheck: dropped packets leave no stamp)
            for ns, mine in ((real, False), (ours, True)):
                for args in (["-F", "INPUT"],
                             ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-m", "recent",
                              "--rcheck", "--seconds", "1", "--hitcount", "8", "--name", "P",
                              "-j", "DROP"],
                             ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-m", "recent",
                              "--set", "--name", "P"],
                             ["-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT"]):
                    assert iptables(ns, mine, *args).returncode == 0
            run_both(real, ours, PACED, 100)        # 40/s for 2.5 s
            r, o = counts(real, False, "INPUT")[2], counts(ours, True, "INPUT")[2]
            assert 16 <= r <= 32 and abs(r - o) <= max(1, 0.05 * r), (r, o)
        finally:
            ours.run(datapath_command("detach"))
