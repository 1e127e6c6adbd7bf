"""Live per-packet cost: client namespace --veth-- server namespace.

The server holds the rule set (SYSTEMS: iptables-legacy, iptables-nft,
bpf-iptables with its data path attached at native XDP, generic XDP or TC
ingress, or the bare XDP drop program, the ceiling); the client sends one frame
over and over (bench/trafficgen.py) for a fixed time, pinned to one CPU,
so the sending and the server's receive processing share that CPU (see
trafficgen). ns/packet = the sender thread's CPU time / packets sent
(the receive softirq runs in its context and is billed to it: this kernel
has no IRQ time accounting), checked against the
server's counters (the counter of the rule, or the policy, the frame first
matches must grow by exactly the number sent). The frame's destination is
added to the server's veth, so netfilter's INPUT sees it as local.

Both namespaces are created per measurement and deleted afterwards, also on
failure or Ctrl-C (bpf-iptables is detached first, so no pin outlives them)."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from bpf_iptables.datapath.packets import frame
from bpf_iptables.netaddr import int_to_ip

from .netns import CommandFailed, Namespace
from .tools import BPF
from .workload import Probe

CLIENT_IP, SERVER_IP = "10.98.0.1", "10.98.0.2"
LEGACY_NAME, BPF_NAME = "iptables-legacy", "bpf-iptables (XDP, attached)"
BPF_GENERIC_NAME, BPF_TC_NAME = "bpf-iptables (XDP generic)", "bpf-iptables (TC ingress)"
NFT_NAME, BARE_NAME = "iptables-nft", "bare XDP drop"
BPF_MODES = {BPF_NAME: "xdp", BPF_GENERIC_NAME: "xdpgeneric", BPF_TC_NAME: "tc"}
SYSTEMS = (BPF_NAME, BPF_GENERIC_NAME, BPF_TC_NAME, LEGACY_NAME, NFT_NAME, BARE_NAME)
RESTORE = {LEGACY_NAME: ("iptables-legacy-restore",), NFT_NAME: ("iptables-nft-restore",)}
LISTING = {LEGACY_NAME: ("iptables-legacy",), NFT_NAME: ("iptables-nft",)}
DATAPATH = (sys.executable, "-m", "bpf_iptables.cli.datapath")


@functools.cache
def irq_time_accounting() -> bool:
    """Whether the running kernel bills softirq time apart from tasks
    (CONFIG_IRQ_TIME_ACCOUNTING=y); then a thread's CPU time lacks the
    receive processing. Unknown config: assume not (Debian's default)."""
    import gzip
    import platform

    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as fh:
                return any(line.strip() == "CONFIG_IRQ_TIME_ACCOUNTING=y" for line in fh)
        except OSError:
            continue
    return False


@dataclass
class LiveRun:
    sent: int
    counted: int
    elapsed_s: float     # wall time
    cpu_s: float         # the sender thread's CPU time (receive softirq included)
    untimed: int = 0     # warm-up frames the generator sent outside the clock

    @property
    def all_counted(self) -> bool:
        return self.counted == self.sent + self.untimed

    @property
    def ns_per_packet(self) -> float:
        """CPU time per packet: unlike wall time, not inflated when other
        tasks of a shared machine get the pinned CPU for a while. Wall time
        where the kernel bills softirqs separately (it would miss them)."""
        if irq_time_accounting():
            return self.wall_ns_per_packet
        return self.cpu_s * 1e9 / self.sent

    @property
    def wall_ns_per_packet(self) -> float:
        return self.elapsed_s * 1e9 / self.sent


@dataclass
class LiveResult:
    system: str
    rules: int
    first_match: int | None
    verdict: str
    runs: list[LiveRun] = field(default_factory=list)
    requested: int = 0          # the N asked for (a rule set may have fewer)
    ruleset: str = ""
    generator: str = "afpacket"  # live.GENERATORS

    @property
    def all_counted(self) -> bool:
        return all(r.all_counted for r in self.runs)

    @property
    def mpps(self) -> float:
        """Packets per second of the measured clock (CPU time, or wall time
        where softirqs are billed apart), in millions: 1000 / ns_per_packet
        of the median run."""
        import statistics

        return 1e3 / statistics.median(r.ns_per_packet for r in self.runs)


def sh(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


@dataclass
class Topology:
    client: Namespace
    server: Namespace
    bare: subprocess.Popen | None = None    # bench.xdpdrop, for BARE_NAME

    def mac(self, ns: Namespace, dev: str) -> bytes:
        out = json.loads(sh(["ip", "-n", ns.name, "-j", "link", "show", dev]))
        return bytes.fromhex(out[0]["address"].replace(":", ""))


@contextmanager
def topology(env: dict[str, str], extra_local: str) -> Iterator[Topology]:
    """client (c0) --- server (s0), IPv6 off, rp_filter off on the server;
    ``extra_local`` is added to s0 (the probe's destination)."""
    tag = uuid.uuid4().hex[:8]
    client, server = f"bpft-bench-c-{tag}", f"bpft-bench-s-{tag}"
    made: list[str] = []
    topo: Topology | None = None
    try:
        for n in (client, server):
            sh(["ip", "netns", "add", n])
            made.append(n)
        sh(["ip", "link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "s0",
            "netns", server])
        for ns, dev, addr in ((client, "c0", CLIENT_IP), (server, "s0", SERVER_IP)):
            for key in ("all", "default"):
                sh(["ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv6.conf.{key}.disable_ipv6=1"])
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        for key in ("all", "default", "s0"):
            sh(["ip", "netns", "exec", server, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"])
        if extra_local != SERVER_IP:
            sh(["ip", "-n", server, "addr", "add", f"{extra_local}/32", "dev", "s0"])
        topo = Topology(Namespace(client), Namespace(server))
        yield topo
    finally:
        if topo is not None and topo.bare is not None:
            stop_bare(topo.bare)
        if server in made:
            detach(Namespace(server), env)
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


def detach(ns: Namespace, env: dict[str, str]) -> None:
    """Detach bpf-iptables (if attached) and drop its state, before the
    namespace goes: pins would outlive it otherwise."""
    from .frontend import purge_bpf_state

    subprocess.run(ns.argv([*DATAPATH, "detach"]), env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    purge_bpf_state(ns, env)


def ensure_bpffs() -> None:
    """The data path's pins live in a bpffs under /run, mounted in the
    host's mount namespace (where the bench runs); see attachment.py."""
    from bpf_iptables.datapath.attachment import ensure_bpffs as ensure

    ensure()


_POLICY = re.compile(r"\(policy \S+ (\d+) packets")


def start_bare(server: Namespace, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(server.argv([sys.executable, "-m", "bench.xdpdrop", "s0"]),
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise CommandFailed(f"bench.xdpdrop: {line} {proc.stderr.read()[-1000:]}")
    return proc


def stop_bare(proc: subprocess.Popen) -> None:
    """End of input detaches; kill (this process, by its own handle) if it hangs."""
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def bare_count(proc: subprocess.Popen) -> int:
    proc.stdin.write("count\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def read_count(topo: Topology, system: str, first_match: int | None,
               env: dict[str, str]) -> int:
    """Packets counted by INPUT's rule ``first_match`` (or its policy); for
    the bare drop program its own counter."""
    if system == BARE_NAME:
        assert topo.bare is not None
        return bare_count(topo.bare)
    ns = topo.server
    cmd = list(LISTING.get(system, BPF.command))
    out = subprocess.run(ns.argv([*cmd, "-L", "INPUT", "-v", "-x", "-n"]), env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    if first_match is None:
        m = _POLICY.search(out[0])
        assert m, out[0]
        return int(m.group(1))
    return int(out[2 + first_match].split()[0])


def load(topo: Topology, system: str, rules_text: str, env: dict[str, str]) -> None:
    server = topo.server
    if system == BARE_NAME:
        topo.bare = start_bare(server, env)
        return
    restore = list(RESTORE.get(system, BPF.restore))
    proc = subprocess.run(server.argv(restore), input=rules_text, text=True, env=env,
                          capture_output=True)
    if proc.returncode != 0:
        raise CommandFailed(f"restore in {server.name}: {proc.stderr[-1000:]}")
    if system in BPF_MODES:
        # native XDP on the veth (lo gets generic): the figure XDP is for;
        # generic XDP and TC ingress for comparison
        server.run([*DATAPATH, "attach", "--mode", BPF_MODES[system]], env=env)


GENERATORS = {"afpacket": "bench.trafficgen", "xdp": "bench.xdpgen"}


def prepare_generator(topo: Topology, generator: str, env: dict[str, str]) -> None:
    """The XDP live-frame generator needs NAPI on the server's veth: GRO on."""
    if generator == "xdp":
        topo.server.run([sys.executable, "-m", "bench.xdpgen", "--gro", "s0"], env=env)


def send(topo: Topology, data: bytes, seconds: float, cpu: int,
         env: dict[str, str], generator: str = "afpacket") -> tuple[int, float, float, int]:
    spec = json.dumps({"dev": "c0", "frame": data.hex(), "seconds": seconds})
    out = subprocess.run(topo.client.argv(["taskset", "-c", str(cpu), sys.executable, "-m",
                                           GENERATORS[generator], spec]),
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise CommandFailed(f"trafficgen: {out.stderr[-1000:]}")
    res = json.loads(out.stdout)
    return res["sent"], res["elapsed_s"], res["cpu_s"], res.get("untimed", 0)


def wire_frame(topo: Topology, probe: Probe) -> bytes:
    """The probe's frame, addressed from c0's MAC to s0's."""
    return topo.mac(topo.server, "s0") + topo.mac(topo.client, "c0") + frame(probe.packet)[12:]


@contextmanager
def background_flow(topo: Topology, data: bytes, cpu: int, env: dict[str, str],
                    seconds: float = 600.0) -> Iterator[subprocess.Popen]:
    """The sender running (pinned to ``cpu``) for the body's duration: a
    live flow for control-plane timings under traffic. Ended by its own
    handle afterwards."""
    spec = json.dumps({"dev": "c0", "frame": data.hex(), "seconds": seconds})
    proc = subprocess.Popen(topo.client.argv(["taskset", "-c", str(cpu), sys.executable, "-m",
                                              "bench.trafficgen", spec]),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
        if proc.poll() is not None:
            raise CommandFailed(f"trafficgen ended early: {proc.stderr.read()[-1000:]!r}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(system: str, rules_text: str, rules: int, probe: Probe, runs: int,
            seconds: float, cpu: int, env: dict[str, str],
            generator: str = "afpacket") -> LiveResult:
    dst = int_to_ip(probe.packet.dst)
    result = LiveResult(system, rules, probe.first_match, probe.verdict, generator=generator)
    with topology(env, dst) as topo:
        prepare_generator(topo, generator, env)
        load(topo, system, rules_text, env)
        data = wire_frame(topo, probe)
        send(topo, data, min(0.05, seconds), cpu, env, generator)   # warm-up (caches, pages)
        for _ in range(runs):
            result.runs.append(timed_run(topo, system, data, probe, seconds, cpu, env,
                                         generator))
    return result


def timed_run(topo: Topology, system: str, data: bytes, probe: Probe, seconds: float,
              cpu: int, env: dict[str, str], generator: str) -> LiveRun:
    """One run of ``data`` for ``seconds``, with the counter the frame
    first matches read before and after."""
    before = read_count(topo, system, probe.first_match, env)
    sent, elapsed, cpu_s, untimed = send(topo, data, seconds, cpu, env, generator)
    after = read_count(topo, system, probe.first_match, env)
    return LiveRun(sent, after - before, elapsed, cpu_s, untimed)


def measure_beside_bare(system: str, rules_text: str, rules: int, probe: Probe, runs: int,
                        seconds: float, cpu: int, env: dict[str, str],
                        generator: str = "afpacket") -> tuple[LiveResult, LiveResult]:
    """``measure`` of ``system`` with the bare XDP drop measured beside it:
    two topologies set up side by side, their runs alternated (which one
    goes first alternates too), so that a slow spell of this shared
    machine lands on both and their ratio compares like with like (the
    bare drop measured once at the start of a run read 55% one time and
    49.95% the next against the same program)."""
    dst = int_to_ip(probe.packet.dst)
    ours = LiveResult(system, rules, probe.first_match, probe.verdict, generator=generator)
    bare = LiveResult(BARE_NAME, 0, probe.first_match, probe.verdict, generator=generator)
    with topology(env, dst) as topo, topology(env, dst) as btopo:
        pairs = [(topo, system, ours), (btopo, BARE_NAME, bare)]
        frames = {}
        for t, s, _ in pairs:
            prepare_generator(t, generator, env)
            load(t, s, rules_text if s != BARE_NAME else "", env)
            frames[s] = wire_frame(t, probe)
        for k in range(runs):
            for t, s, res in (pairs if k % 2 == 0 else pairs[::-1]):
                # untimed, before every run: the caches the other system's
                # run took over are refilled outside the clock (the bare
                # drop's first run after one of the classifier's read 60
                # ns, its others 42-44)
                send(t, frames[s], min(0.05, seconds), cpu, env, generator)
                res.runs.append(timed_run(t, s, frames[s], probe, seconds, cpu, env, generator))
    return ours, bare
