"""python -m bench.conntrack [--connections N] [--rules N]

Connection tracking: bpf-iptables' eBPF tracker against iptables-legacy with
netfilter's, in the same run.

1. TCP connections per second through a stateful server rule set (INPUT
   DROP; ESTABLISHED,RELATED accepted first; NEW accepted to one port,
   after ``--rules`` classbench-fw1 rules): client -- veth -- server, a
   Python client connecting and closing N times against an accepting
   thread. Python's socket work is in both figures: compare the ratio.
2. Per-packet cost (BPF_PROG_TEST_RUN, ns/packet) of an ESTABLISHED TCP
   packet through the INPUT classifier of the same rule set with the fast
   path (the leading ESTABLISHED,RELATED ACCEPT taken right after the
   tracker), with it switched off (the full lookup and scan), and of a NEW
   packet to the last rule's port (tracker plus scan).

Writes bench/results/conntrack.md. On this shared 2-core machine the
connection rates swing by 3x between runs (other jobs): compare figures of
one run only."""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

from bpf_iptables.datapath import bpfsys
from bpf_iptables.datapath.compiler import compile_chain
from bpf_iptables.datapath.harness import table_from_lines
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.datapath.program import LoadedProgram
from bpf_iptables.datapath.testrun import test_run
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.nsthread import inside
from bpf_iptables.reference.packet import Packet

from .live import (BPF_NAME, CLIENT_IP, DATAPATH, LEGACY_NAME, SERVER_IP, ensure_bpffs, load,
                   topology)
from .tools import REPO

PORT = 8080


def filler_rules(n: int) -> list[str]:
    """The first ``n`` classbench-fw1 rules (as -A INPUT lines), or none."""
    shared = Path(os.environ.get("BPF_IPTABLES_SHARED_DIR", REPO.parent / "shared"))
    path = shared / "rulesets" / "classbench-fw1-10k.rules"
    if not n or not path.exists():
        return []
    out = [line for line in path.read_text().splitlines() if line.startswith("-A INPUT")]
    return out[:n]


def rules_text(fillers: list[str]) -> str:
    return "\n".join(["*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]",
                      ":OUTPUT ACCEPT [0:0]",
                      "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                      *fillers,
                      f"-A INPUT -p tcp -m tcp --dport {PORT} -m conntrack --ctstate NEW "
                      "-j ACCEPT", "COMMIT", ""])


def connections(client: str, server: str, count: int) -> float:
    """Connections per second, client -> server:PORT, each connect + close."""
    with inside(server):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER_IP, PORT))
    listener.listen(128)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with inside(client):
            socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        start = time.perf_counter()
        for s in socks:
            s.settimeout(2)
            # RST on close: no TIME_WAIT, and no port reuse within the run
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.connect((SERVER_IP, PORT))
            s.close()
        return count / (time.perf_counter() - start)
    finally:
        stop.set()
        thread.join()
        listener.close()


def connection_rates(count: int, fillers: list[str], runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = {}
    for system, mode in ((LEGACY_NAME, None), (BPF_NAME, "xdp"), (BPF_NAME, "xdpgeneric"),
                         (BPF_NAME, "tc")):
        rates = []
        for _ in range(runs):
            with topology(env, SERVER_IP) as topo:
                load(topo, system, rules_text(fillers), env)
                if mode not in (None, "xdp"):
                    topo.server.run([*DATAPATH, "attach", "--mode", mode], env=env)
                rates.append(connections(topo.client.name, topo.server.name, count))
        out[system if mode is None else f"bpf-iptables, --mode {mode}"] = max(rates)
    return out


def packet_costs(fillers: list[str], repeat: int) -> dict[str, float]:
    table = table_from_lines(["-P INPUT DROP"] + [
        line for line in rules_text(fillers).splitlines() if line.startswith("-A")])
    c = compile_chain(table, "INPUT", {})
    prog = LoadedProgram(c.shape)   # private tracker maps
    try:
        prog.install(c)
        a, b = ip_to_int(CLIENT_IP), ip_to_int(SERVER_IP)

        def pkt(src, dst, sport, dport, flags) -> bytes:
            p = Packet(src=src, dst=dst, proto=6, sport=sport, dport=dport, tcp_flags=flags)
            p.length = header_length(p)
            return frame(p)

        syn, synack = pkt(a, b, 40000, PORT, 2), pkt(b, a, PORT, 40000, 18)
        ack = pkt(a, b, 40000, PORT, 16)
        for f in (syn, synack, ack):
            test_run(prog.fd, f)

        def ns(f: bytes) -> float:
            return statistics.median(test_run(prog.fd, f, repeat=repeat).duration_ns
                                     for _ in range(5))

        out = {"established, fast path": ns(ack)}
        # struct config (filter.c): first_word, fast_counter, fast_slots
        config, key = prog.maps["config_map"], struct.pack("<I", 0)
        first_word, fast_counter, _ = struct.unpack(
            "<IIQ", bpfsys.map_lookup(config, key, 16))
        bpfsys.map_update(config, key, struct.pack("<IIQ", first_word, fast_counter, 0))
        out["established, fast path off"] = ns(ack)
        # a NEW packet each run: a port whose SYN the rules drop is never
        # confirmed, so every run sees it NEW (tracker lookup + full scan)
        out["new (dropped, never confirmed)"] = ns(pkt(a, b, 40001, PORT + 1, 2))
        return out
    finally:
        prog.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.conntrack")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--rules", type=int, default=1000, help="classbench-fw1 fillers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=100000)
    args = parser.parse_args()
    ensure_bpffs()
    fillers = filler_rules(args.rules)
    rates = connection_rates(args.connections, fillers, args.runs)
    costs = packet_costs(fillers, args.repeat)
    lines = [f"# Connection tracking ({time.strftime('%Y-%m-%d')}, {len(fillers)} filler rules)",
             "", "| TCP connections/s (connect + close, best of "
             f"{args.runs} runs of {args.connections}) | |", "|---|---|"]
    lines += [f"| {name} | {rate:.0f} |" for name, rate in rates.items()]
    lines += ["", "| INPUT classifier, BPF_PROG_TEST_RUN | ns/packet (median of 5) |",
              "|---|---|"]
    lines += [f"| {name} | {cost:.0f} |" for name, cost in costs.items()]
    text = "\n".join(lines) + "\n"
    (REPO / "bench" / "results" / "conntrack.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
