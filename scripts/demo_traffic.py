"""The traffic of the README's demo (scripts/demo-traffic.sh) and the check
of the counters it must have produced.

    demo_traffic.py traffic CLIENT_NS SERVER_NS RESULT.json
        real traffic from the client namespace to the server namespace
        (ICMP echo, TCP connects, UDP datagrams), from sockets opened
        inside those namespaces; prints what was delivered and writes
        what was sent and delivered to RESULT.json
    demo_traffic.py check RESULT.json < (bpf-iptables-save -c)
        compares every counter of the server's INPUT chain and its user
        chain (and that FORWARD's policy counted nothing), and every
        delivered/dropped outcome, with what that traffic must produce
        under examples/traffic.rules; exit 1 on any difference

Standard library only: it runs with whatever Python runs bpf-iptables.
The process stays in the namespace it was started in (the host's); each
socket is opened with this thread moved into a demo namespace for a moment
(setns), and a socket belongs to the namespace it was made in.

Exactness. UDP and ICMP packets are sent one by one and never repeated, so
their packet and byte counts are exact. TCP may retransmit (a SYN not
answered within 1 s is sent again, and the dropped connect is one), so the
TCP counts expected are the segments the client's own TCP stack reports to
have sent during that step (Tcp OutSegs + RetransSegs of the client
namespace, which holds no other TCP socket); the connects are closed with
a reset (SO_LINGER 0) so that no FIN exchange continues afterwards.
Waiting: everything that must arrive is waited for generously (a loaded CI
machine); what must not arrive is looked for after something sent later
on the same link has arrived, plus a grace period."""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

from bpf_iptables.datapath.packets import checksum
from bpf_iptables.nsthread import inside

CLIENT_IP, SERVER_IP = "10.200.0.1", "10.200.0.2"
ARRIVAL_WAIT = 5.0      # for what must arrive (generous: a loaded 2-core machine)
GRACE = 0.3             # after the last expected arrival, for what must not arrive
DROPPED_CONNECT_WAIT = 0.5   # a dropped SYN: give up well before its first retransmission
PING_PAYLOAD = 56       # as ping(8): 84 bytes of IP per echo request
UDP_PAYLOAD = 32        # 60 bytes of IP per datagram
TCP_ACCEPTED, TCP_DROPPED = 8080, 8081


def sock(ns: str, kind: int, proto: int = 0) -> socket.socket:
    with inside(ns):
        return socket.socket(socket.AF_INET, kind, proto)


def tcp_segments_sent(ns: str) -> int:
    """Segments the namespace's TCP has sent, retransmissions included."""
    with inside(ns):
        lines = open("/proc/thread-self/net/snmp").read().splitlines()
    names, values = [line.split()[1:] for line in lines if line.startswith("Tcp:")]
    tcp = dict(zip(names, map(int, values)))
    return tcp["OutSegs"] + tcp["RetransSegs"]


@dataclass
class Step:
    """One kind of traffic: how many were sent and arrived, and what the
    server's INPUT sees of it (packets; bytes when exact, else None)."""
    name: str
    sent: int
    delivered: int
    expect_delivered: int
    packets: int
    bytes: int | None


def ping(client: str, count: int) -> Step:
    """ICMP echo requests, one at a time, each waiting for its reply."""
    s = sock(client, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, replies = os.getpid() & 0xFFFF, 0
    with s:
        for seq in range(count):
            payload = bytes(range(PING_PAYLOAD))
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            head = struct.pack("!BBHHH", 8, 0, checksum(head + payload), ident, seq)
            s.sendto(head + payload, (SERVER_IP, 0))
            deadline = time.monotonic() + ARRIVAL_WAIT
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    pkt = s.recv(2048)
                except socket.timeout:
                    break
                ihl = (pkt[0] & 15) * 4
                typ, _, _, pid, pseq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
                if typ == 0 and pid == ident and pseq == seq:
                    replies += 1
                    break
    size = 20 + 8 + PING_PAYLOAD
    return Step("ping", count, replies, count, count, count * size)


def tcp(client: str, server: str, port: int, count: int, accepted: bool) -> Step:
    """``count`` connects to a listening server port; each one that is
    established is accepted by the server, then reset by the client
    (SYN, ACK, RST: nothing follows)."""
    listener = sock(server, socket.SOCK_STREAM)
    before = tcp_segments_sent(client)
    established = 0
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((SERVER_IP, port))
        listener.listen(8)
        listener.settimeout(ARRIVAL_WAIT)
        for _ in range(count):
            c = sock(client, socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.settimeout(ARRIVAL_WAIT if accepted else DROPPED_CONNECT_WAIT)
            try:
                c.connect((SERVER_IP, port))
            except OSError:
                c.close()   # SYN_SENT: closing sends nothing
                continue
            conn, _ = listener.accept()
            c.close()       # linger 0: a reset
            with conn:
                # wait until the reset arrived, so the server's close sends
                # nothing that the (gone) client would answer
                conn.settimeout(ARRIVAL_WAIT)
                try:
                    conn.recv(16)
                except (ConnectionResetError, socket.timeout):
                    pass
            established += 1
    segments = tcp_segments_sent(client) - before
    return Step(f"tcp{port}", count, established, count if accepted else 0, segments, None)


def udp(client: str, server: str, plan: list[tuple[int, int, bool]]) -> list[Step]:
    """Datagrams to each (port, count, accepted) in order; the accepted
    ports last, so that once they have arrived the dropped ones would have
    too (same link, sent earlier)."""
    plan = sorted(plan, key=lambda p: p[2])
    rx = {}
    tx = sock(client, socket.SOCK_DGRAM)
    try:
        for port, _, _ in plan:
            rx[port] = sock(server, socket.SOCK_DGRAM)
            rx[port].bind((SERVER_IP, port))
        for port, count, _ in plan:
            for i in range(count):
                tx.sendto(b"%-*d" % (UDP_PAYLOAD, i), (SERVER_IP, port))
        got = {port: 0 for port, _, _ in plan}
        deadline = time.monotonic() + ARRIVAL_WAIT
        for port, count, accepted in plan:
            while accepted and got[port] < count and (left := deadline - time.monotonic()) > 0:
                rx[port].settimeout(left)
                try:
                    rx[port].recv(2048)
                    got[port] += 1
                except socket.timeout:
                    break
        time.sleep(GRACE)
        for port, _, _ in plan:
            rx[port].setblocking(False)
            try:
                while True:
                    rx[port].recv(2048)
                    got[port] += 1
            except BlockingIOError:
                pass
    finally:
        tx.close()
        for r in rx.values():
            r.close()
    size = 20 + 8 + UDP_PAYLOAD
    return [Step(f"udp{port}", count, got[port], count if accepted else 0, count, count * size)
            for port, count, accepted in plan]


def traffic(client: str, server: str) -> list[Step]:
    steps = [ping(client, 3),
             tcp(client, server, TCP_ACCEPTED, 2, accepted=True),
             tcp(client, server, TCP_DROPPED, 1, accepted=False)]
    steps += udp(client, server, [(5002, 3, False), (5009, 2, False), (5001, 4, True)])
    return steps


DESCRIBE = {
    "ping": f"ping {SERVER_IP} (ICMP echo)",
    "tcp8080": f"TCP connect {SERVER_IP}:8080",
    "tcp8081": f"TCP connect {SERVER_IP}:8081",
    "udp5001": f"UDP datagrams to {SERVER_IP}:5001",
    "udp5002": f"UDP datagrams to {SERVER_IP}:5002",
    "udp5009": f"UDP datagrams to {SERVER_IP}:5009",
}

# What each rule of examples/traffic.rules (as bpf-iptables-save -c prints
# it) must have counted: the steps whose packets reach it and stop there or
# pass through it. "policy INPUT": what falls off INPUT.
EXPECTED = {
    "-A INPUT -i lo -j ACCEPT": [],
    '-A INPUT -m iprange --src-range 10.200.0.1-10.200.0.9 -m comment --comment '
    '"lab clients: counting only"': ["ping", "tcp8080", "tcp8081", "udp5001", "udp5002",
                                     "udp5009"],
    "-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT": ["ping"],
    "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT": ["tcp8080"],
    "-A INPUT -p tcp -m tcp --dport 8081 -j DROP": ["tcp8081"],
    "-A INPUT -p udp -j udp-in": ["udp5001", "udp5002", "udp5009"],
    "-A udp-in -p udp -m udp --dport 5001 -j ACCEPT": ["udp5001"],
    "-A udp-in -p udp -m multiport --dports 5002:5008,6000 -j DROP": ["udp5002"],
    "-A udp-in -j RETURN": ["udp5009"],
    "policy INPUT": ["udp5009"],
}


def parse_save(text: str) -> dict[str, tuple[int, int]]:
    """Counters by rule (save text without the counters) and by policy."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"\[(\d+):(\d+)\] (.*)", line):
            out[m[3]] = (int(m[1]), int(m[2]))
        elif m := re.fullmatch(r":(\S+) (ACCEPT|DROP) \[(\d+):(\d+)\]", line):
            out[f"policy {m[1]}"] = (int(m[3]), int(m[4]))
    return out


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def check(steps: list[Step], save_text: str) -> list[str]:
    """The problems found (none: the demo succeeded); prints a summary."""
    problems: list[str] = []
    by_name = {s.name: s for s in steps}
    print("==> traffic demo: what was delivered")
    for s in steps:
        verdict = "delivered" if s.expect_delivered else "dropped"
        ok = s.delivered == s.expect_delivered
        print(f"  {DESCRIBE[s.name]:<36} sent {s.sent}, arrived {s.delivered}: "
              f"{'ok' if ok else 'WRONG'} (expected {verdict})")
        if not ok:
            problems.append(f"{s.name}: {s.delivered} of {s.sent} arrived, expected "
                            f"{s.expect_delivered}")
    counters = parse_save(save_text)
    print("==> traffic demo: counters (bpf-iptables-save -c) against the traffic sent")
    for rule, names in EXPECTED.items():
        want_p = sum(by_name[n].packets for n in names)
        exact_bytes = all(by_name[n].bytes is not None for n in names)
        want_b = sum(by_name[n].bytes or 0 for n in names) if exact_bytes else None
        if rule not in counters:
            problems.append(f"rule missing from the rule set: {rule}")
            print(f"  MISSING  {rule}")
            continue
        p, b = counters.pop(rule)
        ok = p == want_p and (want_b is None or b == want_b)
        want = _n(want_p, "packet") + (f", {_n(want_b, 'byte')}" if want_b is not None else "")
        print(f"  {'ok   ' if ok else 'WRONG'} {p:>3} pkts {b:>5} bytes (expected {want})  {rule}")
        if not ok:
            problems.append(f"counters of `{rule}': {p} packets {b} bytes, expected {want}")
    for rule, (p, b) in counters.items():
        if rule == "policy FORWARD" and p == b == 0:
            continue   # nothing is forwarded
        if rule == "policy OUTPUT":
            # the server's replies: counted only while OUTPUT has a program
            # (bpf_iptables/datapath/README.md, Counters), so not checked
            print(f"  -    {p:>4} pkts {b:>5} bytes (not checked: the server's own replies)  "
                  "policy OUTPUT")
            continue
        problems.append(f"not part of the demo's rule set: {rule} [{p}:{b}]")
        print(f"  UNKNOWN {p:>3} pkts {b:>5} bytes  {rule}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "traffic":
        client, server, out = argv[1:]
        steps = traffic(client, server)
        with open(out, "w") as fh:
            json.dump([asdict(s) for s in steps], fh)
        for s in steps:
            if s.name.startswith("tcp"):
                print(f"  {DESCRIBE[s.name]:<36} tried {s.sent}, established {s.delivered} "
                      f"(the client sent {s.packets} TCP segment{'s' * (s.packets != 1)})")
            else:
                print(f"  {DESCRIBE[s.name]:<36} sent {s.sent}, arrived {s.delivered}")
        return 0
    if len(argv) == 2 and argv[0] == "check":
        with open(argv[1]) as fh:
            steps = [Step(**s) for s in json.load(fh)]
        problems = check(steps, sys.stdin.read())
        if problems:
            print(f"==> traffic demo FAILED ({len(problems)} problems):")
            for p in problems:
                print(f"  - {p}")
            return 1
        print("==> traffic demo OK: every packet was delivered or dropped as the rules say, "
              "and every counter of INPUT and udp-in equals the traffic sent")
        return 0
    sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
