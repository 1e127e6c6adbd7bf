"""-m recent and stateful matches on jump rules in the classifier
(bpf/lib/recent.h, xdp_recent, memo bits), through BPF_PROG_TEST_RUN.

Packet trains against the reference model (extensions/recent.py, which
follows xt_recent's recent_mt()): verdicts and every counter, the tables'
contents (addresses, stamps, TTL) as the kernel would list them, --seconds
windows in real time with the model fed the kernel's own jiffies (read
from /proc/timer_list before each packet), LRU eviction at 100 entries,
limit and recent on jump rules (taken once per packet, not per inlined
rule), and the refusals."""
from __future__ import annotations

import random
import time

import pytest

from bpf_iptables.datapath import recent as R
from bpf_iptables.datapath.compiler import Shape, compile_chain
from bpf_iptables.datapath.harness import Harness, normalise, table_from_lines
from bpf_iptables.datapath.packets import frame
from bpf_iptables.datapath.testrun import test_run as run_frame
from bpf_iptables.errors import NotSupported
from bpf_iptables.extensions import find_match
from bpf_iptables.extensions.limit import HZ
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from tests.support.netns import entered

VERDICT = {1: "DROP", 2: "ACCEPT"}


@pytest.fixture(scope="module")
def harness():
    with entered("bpfrec"):
        h = Harness()
        yield h
        h.close()


def fresh(harness: Harness, lines: list[str]):
    """Load ``lines`` with empty tables on both sides."""
    find_match("recent").tables.clear()
    find_match("limit").buckets.clear()
    table = table_from_lines(lines)
    c = compile_chain(table, "INPUT", harness.interfaces, harness.min_shape)
    prog = harness.cache.get(c.shape)
    # a program loaded for an earlier test: its fields filled for this one
    c = compile_chain(table, "INPUT", harness.interfaces, prog.shape)
    if prog.shape.nrecent:
        R.sync(prog.maps["recent_tables"], {})   # what earlier tests left
    prog.install(c)
    return table, prog, c


def packet(src: str = "10.0.0.1", dst: str = "10.0.0.2", ttl: int = 64, dport: int = 2000,
           when: float = 0.0) -> Packet:
    p = Packet(hook="INPUT", in_iface="lo", src=ip_to_int(src), dst=ip_to_int(dst), proto=17,
               sport=1000, dport=dport, ttl=ttl, length=28)
    p.time = when
    normalise(p)
    return p


def run_train(table, prog, packets: list[Packet], now: bool = False) -> list[tuple[str, str]]:
    """(data path, reference) verdict per packet; ``now``: each packet's
    time is the kernel's jiffies when it is sent (what bpf_jiffies64 sees)."""
    out = []
    for p in packets:
        if now:
            p.time = (R.jiffies_now() + 0.5) / HZ
        got = VERDICT.get(run_frame(prog.fd, frame(p)).verdict, "?")
        out.append((got, evaluate(table, p).verdict))
    return out


def counters_agree(table, prog) -> None:
    for (chain, index), c in prog.rule_counters().items():
        ref = table.chains[chain].rules[index].counters
        assert (c.packets, c.bytes) == (ref.packets, ref.bytes), (chain, index)


def listed(prog, name: str) -> list[tuple[str, int, int]]:
    """(address, ttl, stamps) per entry, oldest first."""
    t = R.read_tables(prog.maps["recent_tables"])[name]
    return [(R._ip(e.addr), e.ttl, e.nstamps) for e in t.entries()]


def model_listed(name: str) -> list[tuple[str, int, int]]:
    from bpf_iptables.netaddr import int_to_ip
    t = find_match("recent").tables.table(name)
    return [(int_to_ip(a), e.ttl, len(e.stamps)) for a, e in t.items()]


SSH_LIMIT = ["-N LIM",
             "-A LIM -m limit --limit 3/min -j LOG --log-prefix lim",
             "-A LIM -j DROP",
             "-A INPUT -p udp --dport 2000 -m recent --set --name DEFAULT --rsource",
             "-A INPUT -p udp --dport 2000 -m recent --update --seconds 30 --hitcount 6 "
             "--name DEFAULT --rsource -j LIM",
             "-A INPUT -p udp --dport 2000 -j ACCEPT"]


def test_ufw_limit_train_matches_the_model(harness):
    table, prog, c = fresh(harness, SSH_LIMIT)
    # the jump's recent runs once; LIM's rules need its memo bit
    jump = [e for e in c.entries if e.set]
    assert len(jump) == 1 and jump[0].recent
    lim = {c.counter_of[("LIM", 0)], c.counter_of[("LIM", 1)]}
    assert [e.need for e in c.entries if e.counter in lim] == [jump[0].set] * 2
    train = [packet() for _ in range(10)] + [packet("10.0.0.7") for _ in range(3)]
    out = run_train(table, prog, train)
    assert [g for g, _ in out] == ["ACCEPT"] * 5 + ["DROP"] * 5 + ["ACCEPT"] * 3
    assert [g for g, _ in out] == [r for _, r in out]
    counters_agree(table, prog)
    # --update stamps the entry on every match: 10 + 5 stamps, 32 kept
    assert listed(prog, "DEFAULT") == model_listed("DEFAULT") == [
        ("10.0.0.1", 64, 15), ("10.0.0.7", 64, 3)]


@pytest.mark.parametrize("lines", [
    # rcheck with hitcount, inverted, on the destination, under a mask
    ["-A INPUT -m recent --set --name A",
     "-A INPUT -m recent --rcheck --hitcount 3 --name A -j DROP"],
    ["-A INPUT -m recent ! --rcheck --name B -j DROP",
     "-A INPUT -p udp --dport 2001 -m recent --set --name B"],
    ["-A INPUT -p udp --dport 2001 -m recent --set --rdest --name C",
     "-A INPUT -m recent --update --hitcount 2 --rdest --name C -j DROP"],
    ["-A INPUT -m recent --set --mask 255.255.255.0 --name D",
     "-A INPUT -m recent --rcheck --hitcount 4 --mask 255.255.255.0 --name D -j DROP"],
    # remove, and --rttl (a different TTL is another entry's business)
    ["-A INPUT -p udp --dport 2001 -m recent --remove --name E -j ACCEPT",
     "-A INPUT -m recent --set --name E",
     "-A INPUT -m recent --rcheck --rttl --hitcount 2 --name E -j DROP"],
])
def test_options_against_the_model(harness, lines):
    table, prog, _ = fresh(harness, lines + ["-A INPUT -j ACCEPT"])
    srcs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.9"]
    train = []
    for i in range(24):
        train.append(packet(srcs[i % 4] if i % 3 else srcs[(i // 3) % 4],
                            dst=("10.9.9.1", "10.9.9.2")[i % 2], ttl=(64, 63)[i % 5 == 0],
                            dport=(2000, 2001)[i % 7 == 3]))
    out = run_train(table, prog, train)
    assert [g for g, _ in out] == [r for _, r in out], out
    counters_agree(table, prog)


def test_seconds_window_and_reap_in_real_time(harness):
    lines = ["-A INPUT -p udp --dport 2001 -m recent --set --name W",
             "-A INPUT -p udp --dport 2000 -m recent --rcheck --seconds 1 --hitcount 2 "
             "--reap --name W -j DROP",
             "-A INPUT -j ACCEPT"]
    table, prog, _ = fresh(harness, lines)
    marks = [packet("10.0.0.1", dport=2001), packet("10.0.0.1", dport=2001)]
    probe = packet("10.0.0.1")
    out = run_train(table, prog, marks + [probe], now=True)
    assert out[-1] == ("DROP", "DROP")             # two stamps within the second
    time.sleep(1.3)
    out = run_train(table, prog, [packet("10.0.0.1")], now=True)
    assert out == [("ACCEPT", "ACCEPT")]           # both older than 1 s
    # --reap took the entry (the table's oldest, last seen > 1 s ago)
    assert R.read_tables(prog.maps["recent_tables"])["W"].entries() == []
    assert model_listed("W") == []
    counters_agree(table, prog)


def test_a_full_list_forgets_the_least_recently_seen(harness):
    lines = ["-A INPUT -m recent --set --name F", "-A INPUT -j ACCEPT"]
    table, prog, _ = fresh(harness, lines)
    train = [packet(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(105)]
    train.insert(50, packet("10.1.0.1"))           # the first address seen again
    run_train(table, prog, train)
    have = listed(prog, "F")
    assert len(have) == 100 and have == model_listed("F")
    assert ("10.1.0.1", 64, 2) in have and ("10.1.0.2", 64, 1) not in have


def test_limit_on_a_jump_takes_one_token_per_packet(harness):
    lines = ["-N C", "-A C -p udp -j LOG", "-A C -p udp --dport 2000 -j DROP", "-A C -j DROP",
             "-A INPUT -p udp -m limit --limit 1/h --limit-burst 3 -j C",
             "-N G", "-A G -p udp --dport 2001 -j DROP",
             "-A INPUT -p udp -m limit --limit 1/h --limit-burst 2 -g G",
             "-A INPUT -j ACCEPT"]
    table, prog, c = fresh(harness, lines)
    assert c.shape.memo and len(c.limits) == 2
    out = run_train(table, prog, [packet(dport=(2000, 2001)[i % 2]) for i in range(10)])
    assert [g for g, _ in out] == [r for _, r in out], out
    assert [g for g, _ in out][:3] == ["DROP"] * 3
    counters_agree(table, prog)
    counts = [r.counters.packets for r in table.chains["C"].rules]
    assert counts == [3, 2, 1]


@pytest.mark.parametrize("lines, why", [
    (["-A INPUT -m recent --set -p udp -m udp --dport 1 -j ACCEPT"], "last match"),
    (["-A INPUT -m limit -m recent --set -j ACCEPT"], "more than one"),
    (["-A INPUT -m recent --rcheck --hitcount 100 -j DROP"], "at most 64"),
    (["-A INPUT -m recent --set --mask 255.0.0.0", "-A INPUT -m recent --rcheck -j DROP"],
     "different --mask"),
    (["-N c", "-A c -m limit -j ACCEPT", "-A INPUT -j c", "-A OUTPUT -j c"], "both reach"),
])
def test_what_cannot_be_exact_is_refused(lines, why):
    table = table_from_lines(lines)
    with pytest.raises(NotSupported, match=why):
        for hook in ("INPUT", "OUTPUT"):
            compile_chain(table, hook, {"lo": 1})


def test_many_recent_rules_are_refused_past_the_tail_call_budget():
    lines = [f"-A INPUT -p udp --dport {i} -m recent --set --name N{i % 3}" for i in range(1, 17)]
    with pytest.raises(NotSupported, match="tail calls"):
        compile_chain(table_from_lines(lines), "INPUT", {"lo": 1})


# -- random rule sets ------------------------------------------------------------

def random_lines(rng: random.Random) -> list[str]:
    """A rule set over two lists (one mask each), with every operation and
    modifier, plain and inverted, on INPUT and in a called chain (jump and
    goto), some jumps carrying a recent or limit match themselves."""
    masks = {n: rng.choice(["255.255.255.255", "255.255.255.0"]) for n in "AB"}

    def recent() -> str:
        name = rng.choice("AB")
        op = rng.choice(["--set", "--rcheck", "--update", "--remove"])
        words = ["-m recent", "!" if rng.random() < 0.2 else "", op]
        if op in ("--rcheck", "--update"):
            if rng.random() < 0.5:
                words.append(f"--hitcount {rng.choice([1, 2, 3, 5])}")
            if rng.random() < 0.3:
                words.append("--seconds 100" + (" --reap" if rng.random() < 0.3 else ""))
            if rng.random() < 0.2:
                words.append("--rttl")
        if rng.random() < 0.3:
            words.append("--rdest")
        words.append(f"--name {name} --mask {masks[name]}")
        return " ".join(w for w in words if w)

    def rule(chain: str, targets: list[str]) -> str:
        parts = [f"-A {chain}"]
        if rng.random() < 0.3:
            parts.append(f"-s 10.0.{rng.randint(0, 1)}.0/24")
        if rng.random() < 0.5:
            parts.append(f"-p udp --dport {rng.randint(1, 3)}:{rng.randint(3, 4)}")
        kind = rng.random()
        if kind < 0.6:
            parts.append(recent())
        elif kind < 0.7:
            parts.append(f"-m limit --limit 1/h --limit-burst {rng.randint(1, 4)}")
        parts.append(rng.choice(targets))
        return " ".join(parts)

    lines = ["-N C", "-N G"]
    lines += [rule("C", ["", "-j DROP", "-j ACCEPT", "-j RETURN"]) for _ in range(3)]
    lines += [rule("G", ["", "-j DROP"]) for _ in range(2)]
    lines += [rule("INPUT", ["", "", "-j DROP", "-j ACCEPT", "-j C", "-g G"])
              for _ in range(rng.randint(3, 6))]
    return lines + [rng.choice(["-P INPUT DROP", "-P INPUT ACCEPT"])]


RANDOM_SHAPE = Shape(nwords=1, steps=64, ncounters=64,
                     fields=frozenset({"src", "proto", "flags", "sport", "dport"}),
                     proto_max=8, sport_bsize=16, dport_bsize=16, src_max=16, src_bsize=32,
                     src_probes=2, nlimits=32, nrecent=32, memo=1)


def test_random_rule_sets_against_the_model():
    """40 random rule sets, 40 packets each (4 sources in 2 /24s, 2
    destinations, TTL 63/64): every verdict, every counter and the lists'
    contents (address, TTL, stamps) as the model's. One program for all
    (RANDOM_SHAPE): map rewrites only."""
    rng = random.Random(5)
    seen: set[str] = set()
    programs: set[int] = set()
    entries = 0
    srcs = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.7"]
    with entered("bpfrecr"):
        h = Harness(RANDOM_SHAPE)
        try:
            for n in range(40):
                lines = random_lines(rng)
                try:
                    table, prog, c = fresh(h, lines)
                except NotSupported as exc:
                    # two stateful matches on one rule cannot happen here;
                    # only the tail-call budget may refuse
                    assert "tail calls" in str(exc), (lines, exc)
                    continue
                train = [packet(rng.choice(srcs), dst=rng.choice(["10.9.9.1", "10.9.9.2"]),
                                ttl=rng.choice([63, 64]), dport=rng.randint(1, 4))
                         for _ in range(40)]
                out = run_train(table, prog, train)
                assert [g for g, _ in out] == [r for _, r in out], (n, lines, out)
                seen.update(g for g, _ in out)
                programs.add(id(prog))
                counters_agree(table, prog)
                ref = table.chains["INPUT"].counters
                pol = prog.policy_counters()
                assert (pol.packets, pol.bytes) == (ref.packets, ref.bytes), (n, lines)
                for name in R.read_tables(prog.maps["recent_tables"]):
                    have = listed(prog, name)
                    assert sorted(have) == sorted(model_listed(name)), (n, lines)
                    entries += len(have)
        finally:
            h.close()
    assert seen == {"ACCEPT", "DROP"} and entries > 40 and len(programs) == 1, \
        (seen, entries, programs)


def test_ufw_rules_compile():
    """tests/data/realworld/ufw.rules compiles in every hook: its recent
    rules, the limit on a jump (ufw-not-local) and the limited LOGs (with
    addrtype, which the data path enforces too)."""
    from pathlib import Path

    from bpf_iptables.datapath.harness import table_from_save

    text = (Path(__file__).resolve().parent / "data" / "realworld" / "ufw.rules").read_text()
    assert "addrtype" in text and "recent" in text
    table = table_from_save(text)
    c = compile_chain(table, "INPUT", {"lo": 1})
    assert [(d.name, d.check_set) for d in c.recents] == [("DEFAULT", 2), ("DEFAULT", 4)]
    jumps = {c.counter_of[k]: k for k in c.counter_of}
    stateful_jumps = sorted(jumps[e.counter] for e in c.entries if e.set)
    assert stateful_jumps == [("ufw-not-local", 3), ("ufw-user-input", 1)]
    for hook in ("FORWARD", "OUTPUT"):
        compile_chain(table, hook, {"lo": 1})


def test_forward_stores_the_ttl_the_packet_arrived_with():
    """In FORWARD the kernel's recent_mt() adds the forwarding decrement back
    (a packet with an output device and no socket): the TTL listed is the
    frame's, one more than netfilter's FORWARD sees, and --rttl compares
    that."""
    lines = ["-A FORWARD -m recent --set --name FW",
             "-A FORWARD -m recent --rcheck --rttl --hitcount 2 --name FW -j DROP"]
    with entered("bpfrecf"):
        h = Harness(hook="FORWARD")
        try:
            find_match("recent").tables.clear()
            table = table_from_lines(lines)
            prog, _ = h.load(table)
            train = []
            for ttl in (63, 63, 40, 40):
                p = packet(ttl=ttl)
                p.hook, p.out_iface = "FORWARD", "dp1"
                train.append(p)
            out = [(VERDICT.get(run_frame(prog.fd, frame(p)).verdict), evaluate(table, p).verdict)
                   for p in train]
            # the second packet: two stamps, same TTL; the third: --set
            # stamps it with TTL 41, --rttl then finds 3 stamps
            assert out == [("ACCEPT", "ACCEPT"), ("DROP", "DROP"), ("DROP", "DROP"),
                           ("DROP", "DROP")], out
            assert listed(prog, "FW") == model_listed("FW") == [("10.0.0.1", 41, 4)]
        finally:
            h.close()
