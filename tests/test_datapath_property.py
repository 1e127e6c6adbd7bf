"""Property: the XDP bit-vector classifier agrees with the reference semantics.

Random INPUT rule sets (addresses with "!", protocols with "!", tcp/udp port
ranges with "!", TCP flags, -m iprange --src-range/--dst-range with "!"
(reversed ranges too), -m multiport --sports/--dports (ports and ranges,
with "!") and "! --ports", -m icmp --icmp-type (any, types, type/code, names,
with "!"), -m length (ranges, reversed, "!"), -m ttl (eq, ne, lt, gt),
-m tos (value/mask, "!"), -m dscp (--dscp, --dscp-class, "!"), multiport
--ports (at most once per chain path), -m mac (on lo never, even with
"!"), -m pkttype (unicast, broadcast, multicast, otherhost, "!"),
-i with "+", -f, counting-only rules, user
chains with -j/-g/RETURN, both policies, non-contiguous address masks
(checked per candidate after the bitvector step), blocks of filler rules so that
scans cross bitvector words) are built through the real command
parser; random packets, biased towards the rules' boxes and their edges,
go through BPF_PROG_TEST_RUN and through reference.evaluate. Verdicts and
every rule and policy counter must be equal. One program shape is loaded
once and only its maps are rewritten between examples."""
from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf_iptables.datapath.compiler import FIELD_ORDER, Shape
from bpf_iptables.datapath.harness import Harness, table_from_lines
from bpf_iptables.datapath.packets import header_length
from bpf_iptables.extensions.dscp import DS_CLASSES
from bpf_iptables.netaddr import int_to_ip, ip_to_int
from bpf_iptables.reference.packet import Packet

# interfaces (and so ifindexes) are those of a namespace of the test's own
pytestmark = pytest.mark.usefixtures("private_netns")

FORWARD_NET = ip_to_int("10.9.1.0")   # routed to dp0 in the FORWARD test (10.9.2.0: dp1)
BASES = [ip_to_int(a) for a in ("10.0.0.0", "10.1.2.0", "10.1.2.128", "192.168.1.0",
                                "172.16.0.0", "0.0.0.0", "10.9.1.0")]
LENGTHS = (0, 8, 16, 23, 24, 25, 30, 32)
ODD_MASK = "255.0.255.0"
PROTOS = ("tcp", "udp", "icmp", "47")
FILLERS = ("-A INPUT -s 203.0.113.0/24 -j DROP", "-A INPUT -p 99", "-A INPUT -p tcp",
           "-A INPUT -m comment --comment filler")
FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
# the tracker, its ctstate field and per-candidate checks: tests/test_conntrack_*.py
# (mark, atcheck: per-candidate tests, newer than the golden digests of this shape)
ALL_FIELDS = frozenset(FIELD_ORDER) - {"ctstate", "ctcheck", "mark", "atcheck"}
# iprange ranges become up to ~62 prefixes each, multiport lists many port boundaries
SHAPE = Shape(nwords=16, steps=1000, ncounters=512, fields=ALL_FIELDS, src_max=2048, dst_max=2048,
              src_bsize=4096, dst_bsize=4096, src_probes=10, dst_probes=10,
              proto_max=16, iif_max=16, sport_bsize=512, dport_bsize=512, icmp_max=8192,
              length_bsize=128, ttl_bsize=128, mac_max=8)
TOS_VALUES = (0x00, 0x02, 0x08, 0x10, 0x28, 0xB8, 0xFF)
TOS_MASKS = (0xFF, 0x3F, 0x1C, 0xFC, 0x01)
MACS = tuple(bytes.fromhex(h) for h in ("0a0000000001", "0a0000000002", "020000000002"))
ICMP_TYPES = ("any", "8", "0", "3", "3/1", "3/3", "5/0", "echo-request", "port-unreachable",
              "11/1", "20")


@pytest.fixture(scope="module")
def harness():
    h = Harness(SHAPE)
    yield h
    h.close()


def patterns(interfaces: list[str]) -> list[str]:
    out = list(interfaces) + ["wlan0", "+", "nosuch+"]
    out += sorted({name[:-1] + "+" for name in interfaces if len(name) > 1})
    return out


@st.composite
def prefixes(draw) -> tuple[int, int]:
    base = draw(st.sampled_from(BASES))
    length = draw(st.sampled_from(LENGTHS))
    host = draw(st.integers(0, 0xFFFFFFFF)) if draw(st.booleans()) else 0
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    return (base | (host & ~mask & 0xFFFFFFFF)), length


@st.composite
def port_spec(draw) -> tuple[int, int, bool]:
    lo = draw(st.sampled_from((0, 22, 53, 80, 1023, 1024, 8080, 65535)) | st.integers(0, 65535))
    if draw(st.booleans()):
        hi = lo
    else:
        hi = draw(st.integers(lo, min(65535, lo + draw(st.sampled_from((1, 10, 1000, 65535))))))
    return lo, hi, draw(st.booleans())


@st.composite
def addr_range(draw) -> tuple[int, int]:
    lo, _ = draw(prefixes())
    if draw(st.integers(0, 9)) == 0:  # reversed: never matches (always when inverted)
        return lo, max(0, lo - draw(st.integers(1, 300)))
    span = draw(st.sampled_from((0, 1, 2, 255, 300, 70000, 1 << 24)) | st.integers(0, 1 << 32))
    return lo, min(0xFFFFFFFF, lo + span)


@st.composite
def multiport_specs(draw) -> list[tuple[int, int]]:
    """Up to 15 kernel port slots: a range takes two."""
    specs: list[tuple[int, int]] = []
    slots = 0
    for _ in range(draw(st.integers(1, 6))):
        lo, hi, _ = draw(port_spec())
        slots += 1 if lo == hi else 2
        if slots > 15:
            break
        specs.append((lo, hi))
    return specs


@st.composite
def rule_line(draw, chain: str, targets: list[str], ifnames: list[str], base: str = "INPUT"
              ) -> tuple[str, dict]:
    """One -A line and a description of its box (for biasing packets)."""
    words = ["-A", chain]
    box: dict = {}
    target = draw(st.sampled_from(targets))
    # a non-contiguous mask (a per-candidate check) at most once per path:
    # only in INPUT rules that do not lead into a user chain
    odd_mask_ok = chain == base and not target.startswith(("-j U", "-g U"))
    for opt in ("-s", "-d"):
        if draw(st.integers(0, 2)) == 0:
            addr, length = draw(prefixes())
            inv = draw(st.integers(0, 4)) == 0
            if odd_mask_ok and draw(st.integers(0, 4)) == 0:
                words += (["!"] if inv else []) + [opt, f"{int_to_ip(addr)}/{ODD_MASK}"]
                box[opt] = (addr & ip_to_int(ODD_MASK), 0)
            else:
                words += (["!"] if inv else []) + [opt, f"{int_to_ip(addr)}/{length}"]
                box[opt] = (addr, length)
    proto = draw(st.sampled_from((None, None) + PROTOS))
    if proto is not None:
        inv = proto != "tcp" and draw(st.integers(0, 4)) == 0
        words += (["!"] if inv else []) + ["-p", proto]
        box["proto"] = proto
        if proto in ("tcp", "udp") and not inv:
            for opt in ("--sport", "--dport"):
                if draw(st.booleans()):
                    lo, hi, pinv = draw(port_spec())
                    words += (["!"] if pinv else []) + [opt, f"{lo}:{hi}" if lo != hi else str(lo)]
                    box[opt] = (lo, hi)
            if proto == "tcp" and draw(st.integers(0, 3)) == 0:
                mask = draw(st.lists(st.sampled_from(FLAG_NAMES), min_size=1, unique=True))
                cmp = draw(st.lists(st.sampled_from(mask), unique=True))
                words += (["!"] if draw(st.booleans()) else []) + [
                    "--tcp-flags", ",".join(mask), ",".join(cmp) or "NONE"]
            if draw(st.integers(0, 3)) == 0:
                specs = draw(multiport_specs())
                mpinv = draw(st.booleans())
                # positive --ports (sport OR dport) at most once per chain
                # path: never in a rule that jumps
                either_ok = not target.startswith(("-j U", "-g U"))
                direction = draw(st.sampled_from(
                    ("sports", "dports") + (("ports",) if mpinv or either_ok else ())))
                text = ",".join(f"{lo}:{hi}" if lo != hi else str(lo) for lo, hi in specs)
                words += ["-m", "multiport"] + (["!"] if mpinv else []) + [f"--{direction}", text]
                for key in {"sports": ("--sport",), "dports": ("--dport",),
                            "ports": ("--sport", "--dport")}[direction]:
                    box.setdefault(key, draw(st.sampled_from(specs)))
    if proto == "icmp" and not inv and draw(st.booleans()):
        words += ["-m", "icmp"] + (["!"] if draw(st.booleans()) else []) + [
            "--icmp-type", draw(st.sampled_from(ICMP_TYPES))]
    if draw(st.integers(0, 4)) == 0:
        words += ["-m", "iprange"]
        for opt, key in (("--src-range", "src-range"), ("--dst-range", "dst-range")):
            if draw(st.booleans()) or opt == "--dst-range" and key not in box and "src-range" not in box:
                lo, hi = draw(addr_range())
                words += (["!"] if draw(st.booleans()) else []) + [opt, f"{int_to_ip(lo)}-{int_to_ip(hi)}"]
                box[key] = (lo, hi)
    if draw(st.integers(0, 5)) == 0:
        lo = draw(st.sampled_from((0, 20, 28, 40, 64, 100)) | st.integers(0, 140))
        hi = lo + draw(st.sampled_from((0, 1, 10, 65535)) | st.integers(-5, 60))
        hi = max(0, min(65535, hi))   # lo > hi: never (always with "!")
        words += ["-m", "length"] + (["!"] if draw(st.booleans()) else []) + [
            "--length", f"{lo}:{hi}" if lo != hi else str(lo)]
        box["length"] = (lo, hi)
    if draw(st.integers(0, 5)) == 0:
        ttl = draw(st.sampled_from((0, 1, 2, 63, 64, 65, 128, 254, 255)) | st.integers(0, 255))
        mode = draw(st.sampled_from(("--ttl-eq", "! --ttl-eq", "--ttl-lt", "--ttl-gt")))
        words += ["-m", "ttl"] + mode.split() + [str(ttl)]
        box["ttl"] = ttl
    if draw(st.integers(0, 6)) == 0:
        value, mask = draw(st.sampled_from(TOS_VALUES)), draw(st.sampled_from(TOS_MASKS))
        words += ["-m", "tos"] + (["!"] if draw(st.booleans()) else []) + [
            "--tos", f"{value:#x}/{mask:#x}" if mask != 0xFF else f"{value:#x}"]
        box["tos"] = value
    if draw(st.integers(0, 6)) == 0:
        inv = ["!"] if draw(st.booleans()) else []
        if draw(st.booleans()):
            dscp = draw(st.sampled_from((0, 0x0A, 0x2E, 0x3F)) | st.integers(0, 0x3F))
            words += ["-m", "dscp"] + inv + ["--dscp", str(dscp)]
        else:
            cls = draw(st.sampled_from(("BE", "EF", "AF11", "AF43", "CS1", "CS7")))
            dscp = dict(DS_CLASSES)[cls]
            words += ["-m", "dscp"] + inv + ["--dscp-class", cls]
        box["tos"] = dscp << 2 | draw(st.integers(0, 3))
    if draw(st.integers(0, 6)) == 0:
        mac = draw(st.sampled_from(MACS))
        words += ["-m", "mac"] + (["!"] if draw(st.booleans()) else []) + [
            "--mac-source", ":".join(f"{b:02x}" for b in mac)]
        box["mac"] = mac
    if draw(st.integers(0, 6)) == 0:
        kind = draw(st.sampled_from(("unicast", "host", "broadcast", "multicast", "otherhost")))
        words += ["-m", "pkttype"] + (["!"] if draw(st.booleans()) else []) + ["--pkt-type", kind]
        box["pkttype"] = kind
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(patterns(ifnames)))
        words += (["!"] if draw(st.booleans()) else []) + ["-i", name]
    if base == "FORWARD" and draw(st.integers(0, 2)) == 0:
        name = draw(st.sampled_from(patterns(ifnames)))
        words += (["!"] if draw(st.booleans()) else []) + ["-o", name]
    if draw(st.integers(0, 6)) == 0 and not any(w.startswith("--") for w in words):
        words += (["!"] if draw(st.booleans()) else []) + ["-f"]
    if target:
        words += target.split()
    return " ".join(words), box


@st.composite
def rule_sets(draw, ifnames: list[str], base: str = "INPUT") -> tuple[list[str], list[dict]]:
    nchains = draw(st.integers(0, 2))
    chains = [f"U{i}" for i in range(nchains)]
    lines = [f"-N {c}" for c in chains]
    boxes: list[dict] = []
    basic = ["-j ACCEPT", "-j DROP", "", "-j ACCEPT", "-j DROP"]
    # chain Ui may call only chains after it: no loops
    for i, chain in reversed(list(enumerate(chains))):
        later = chains[i + 1:]
        targets = basic + ["-j RETURN"] + [f"-j {c}" for c in later] + [f"-g {c}" for c in later]
        for _ in range(draw(st.integers(0, 5))):
            line, box = draw(rule_line(chain, targets, ifnames, base))
            lines.append(line)
            boxes.append(box)
    targets = basic + [f"-j {c}" for c in chains] + [f"-g {c}" for c in chains]
    for _ in range(draw(st.integers(0, 10))):
        line, box = draw(rule_line(base, targets, ifnames, base))
        lines.append(line)
        boxes.append(box)
    # blocks of filler rules push the interesting ones across bitvector
    # words: never-matching ones, and counting-only ones that every TCP
    # packet hits (long scans of continuing entries)
    for _ in range(draw(st.integers(0, 3))):
        filler = draw(st.sampled_from(FILLERS)).replace("INPUT", base)
        at = draw(st.integers(len(chains), len(lines)))
        block = [filler] * draw(st.integers(1, 80))
        lines[at:at] = block
    if draw(st.booleans()):
        lines.append(f"-P {base} DROP")
    return lines, boxes


@st.composite
def packet_for(draw, boxes: list[dict], ifnames: list[str], base: str = "INPUT") -> Packet:
    box = draw(st.sampled_from(boxes)) if boxes and draw(st.integers(0, 4)) else {}

    def address(key: str) -> int:
        rkey = {"-s": "src-range", "-d": "dst-range"}[key]
        if rkey in box and draw(st.integers(0, 2)):
            lo, hi = box[rkey]
            return draw(st.sampled_from([a for a in (lo - 1, lo, hi, hi + 1, (lo + hi) // 2)
                                         if 0 <= a <= 0xFFFFFFFF]))
        if key in box and draw(st.integers(0, 3)):
            addr, length = box[key]
            host = draw(st.integers(0, 0xFFFFFFFF))
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            return (addr & mask) | (host & ~mask & 0xFFFFFFFF)
        addr, _ = draw(prefixes())
        return addr

    def port(key: str) -> int:
        if key in box and draw(st.integers(0, 3)):
            lo, hi = box[key]
            return draw(st.sampled_from([p for p in (lo - 1, lo, hi, hi + 1, (lo + hi) // 2)
                                         if 0 <= p <= 65535]))
        return draw(st.sampled_from((0, 22, 53, 80, 1024, 65535)) | st.integers(0, 65535))

    def near(value: int | None, lo: int, hi: int, usual: tuple[int, ...]) -> int:
        """``value`` or a neighbour (when the box has one), else a usual or any value."""
        if value is not None and draw(st.integers(0, 2)):
            return min(hi, max(lo, value + draw(st.sampled_from((-1, 0, 0, 1)))))
        return draw(st.sampled_from(usual) | st.integers(lo, hi))

    name = box.get("proto") if draw(st.integers(0, 3)) else draw(st.sampled_from(PROTOS))
    proto = {"tcp": 6, "udp": 17, "icmp": 1, "47": 47, None: 6}[name]
    frag = draw(st.sampled_from((0, 0, 0, 0, 1, 185)))
    pkt = Packet(
        in_iface=draw(st.sampled_from(ifnames)), src=address("-s"), dst=address("-d"),
        proto=proto, sport=port("--sport"), dport=port("--dport"),
        tcp_flags=draw(st.integers(0, 63)), frag_offset=frag,
        more_fragments=draw(st.booleans()),
        ip_options=draw(st.sampled_from((b"", b"", b"\x01" * 4, b"\x01" * 7 + b"\x00"))),
        icmp_type=draw(st.integers(0, 20)),
        icmp_code=draw(st.sampled_from((0, 0, 1, 3)) | st.integers(0, 255)),
        ttl=near(box.get("ttl"), 0, 255, (0, 1, 64, 255)),
        tos=near(box.get("tos"), 0, 255, (0, 0x10, 0xB8)),
        src_mac=box["mac"] if "mac" in box and draw(st.booleans()) else draw(st.sampled_from(MACS)),
        # frames to another host's MAC never reach a chain: not generated
        pkttype=draw(st.sampled_from(("host", "host", "broadcast", "multicast"))))
    if base == "FORWARD":
        # what the kernel forwards (FORWARD_NET routes 10.9.1.0/24 to dp0,
        # everything else to dp1): unicast, TTL 1..254 after the
        # decrement, a routable destination other than the router's own
        pkt.hook, pkt.pkttype, pkt.ttl = "FORWARD", "host", min(254, max(1, pkt.ttl))
        pkt.in_iface = draw(st.sampled_from(("dp0", "dp1")))
        if pkt.dst >> 24 in (0, 127) or pkt.dst >> 28 >= 0xE:
            pkt.dst = (10 << 24) | (pkt.dst & 0xFFFFFF)
        if pkt.dst >> 8 in (FORWARD_NET >> 8, (FORWARD_NET >> 8) + 1):
            pkt.dst = (pkt.dst & ~0xFF) | min(254, max(2, pkt.dst & 0xFF))
        pkt.out_iface = "dp0" if pkt.dst >> 8 == FORWARD_NET >> 8 else "dp1"
    least = header_length(pkt)
    if "length" in box and draw(st.integers(0, 2)):
        lo, hi = box["length"]
        # frames stay small (BPF_PROG_TEST_RUN takes about a page)
        pkt.length = min(1500, max(least, draw(st.sampled_from((lo - 1, lo, hi, hi + 1)))))
    else:
        pkt.length = least + draw(st.integers(0, 64))
    return pkt


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_datapath_matches_reference(harness, data):
    run_example(harness, data, "INPUT")


def run_example(harness: Harness, data, base: str) -> None:
    ifnames = sorted(harness.interfaces)
    lines, boxes = data.draw(rule_sets(ifnames, base))
    table = table_from_lines(lines)
    packets = data.draw(st.lists(packet_for(boxes, ifnames, base), min_size=1, max_size=24))
    report = harness.check(table, packets)
    # the one loaded program fits every example (no recompiles)
    assert len(harness.cache.programs) == 1
    assert report.mismatches == [], "\n".join(lines + report.mismatches)


@pytest.fixture(scope="module")
def forward(harness, private_netns):
    """The FORWARD classifier, run as the dispatcher calls it, in a
    namespace that forwards 10.9.1.0/24 to dp0 and everything else to dp1."""
    subprocess.run(["ip", "addr", "add", "10.9.1.1/24", "dev", "dp0"], check=True)
    subprocess.run(["ip", "addr", "add", "10.9.2.1/24", "dev", "dp1"], check=True)
    subprocess.run(["ip", "route", "add", "default", "dev", "dp1"], check=True)
    subprocess.run(["ip", "netns", "exec", private_netns.name, "sysctl", "-qw",
                    "net.ipv4.ip_forward=1"], check=True)
    h = Harness(SHAPE, harness.interfaces, hook="FORWARD")
    yield h
    h.close()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_forward_matches_reference(forward, data):
    """FORWARD: the same generators with -o (the route's device), TTLs as
    netfilter sees them after the decrement (the frame carries one more)."""
    run_example(forward, data, "FORWARD")
