"""No rule cap below 64k: 65,535 INPUT rules go through
``bpf-iptables-restore`` and ``bpf-iptables-datapath attach`` in a server
namespace and are enforced like the reference (a slow test: about 45 s of
CPU, most of it the attach: bcc compile, verifier, 64k-entry maps).

The rules are built as model objects and rendered as iptables-save text;
each is a /24 source with a tcp destination-port range, a few are
counting-only, the policy is DROP. The attached program classifies probe
packets through BPF_PROG_TEST_RUN (opened from its pin) and two real
frames from the client (the last accepting rule and the last dropping
one, so the scan runs through all 64k entries and its tail calls);
``save -c`` then shows the reference's counters for every rule and the
policy."""
from __future__ import annotations

import os
import random
import re

from bpf_iptables.datapath import bpfsys, testrun
from bpf_iptables.datapath.packets import frame, header_length
from bpf_iptables.extensions.tcp import PortRange, TcpData
from bpf_iptables.model import Match, Rule, Table, Target
from bpf_iptables.netaddr import IPv4Net, ip_to_int
from bpf_iptables.reference.evaluate import evaluate
from bpf_iptables.reference.packet import Packet
from bpf_iptables.render.save import save_table
from tests.support.netns import bpf_command
from tests.support.wire import accept_foreign_sources, netns, send_and_collect
from tests.test_datapath_traffic import SERVER_IP, datapath_command, ensure_bpffs, topology

RULES = 65535
XDP_TO_VERDICT = {1: "DROP", 2: "ACCEPT"}


def big_table(rng: random.Random) -> Table:
    table = Table.empty("filter")
    table.chains["INPUT"].policy = "DROP"
    rules = table.chains["INPUT"].rules
    for i in range(RULES):
        lo = rng.randint(0, 60000)
        rules.append(Rule(
            src=IPv4Net((10 << 24) | (i << 8), 0xFFFFFF00), proto=6,
            matches=(Match("tcp", TcpData(dport=PortRange(lo, lo + rng.randint(0, 5000)))),),
            target=Target(rng.choice(["ACCEPT", "DROP"] * 20 + [""]))))
    return table


def probe(rng: random.Random, rule: Rule, dport: int, ip_id: int = 0) -> Packet:
    """A TCP SYN to the server from inside ``rule``'s source /24."""
    p = Packet(in_iface="s0", src=rule.src.addr | rng.randint(1, 254), dst=ip_to_int(SERVER_IP),
               proto=6, sport=rng.randint(1024, 65535), dport=dport, tcp_flags=0x02,
               ip_id=ip_id)
    p.length = header_length(p) + rng.randint(0, 100)
    return p


def last_with(rules: list[Rule], target: str) -> int:
    # 10.99.0.0/24 is the test link's own subnet: not a foreign source
    link = ip_to_int(SERVER_IP) & 0xFFFFFF00
    return max(i for i, r in enumerate(rules) if r.target.name == target and r.src.addr != link)


def test_65535_rules():
    ensure_bpffs()
    rng = random.Random(3)
    table = big_table(rng)
    text = save_table(table, counters=False)
    rules = table.chains["INPUT"].rules
    probes = []
    for index in [0, RULES - 1] + [rng.randrange(RULES) for _ in range(18)]:
        rule = rules[index]
        probes.append(probe(rng, rule, rng.choice((rule.matches[0].data.dport.lo,
                                                    rng.randint(0, 65535)))))
    accept, drop = last_with(rules, "ACCEPT"), last_with(rules, "DROP")
    assert accept > RULES - 100 and drop > RULES - 100
    real = [probe(rng, rules[i], rules[i].matches[0].data.dport.hi, ip_id)
            for ip_id, i in ((1, accept), (2, drop))]

    with topology("cb64") as t:
        r = t.server.run(bpf_command("iptables-restore"), input=text, timeout=300)
        assert r.returncode == 0, r.stderr
        r = t.server.run(datapath_command("attach"), timeout=600)
        assert r.returncode == 0, r.stderr
        status = t.server.run(datapath_command("status")).stdout
        assert f"entries {RULES + 1}" in status and "s0 ifindex 2 xdpgeneric ok" in status, status
        # the live generation's INPUT classifier, behind the XDP root
        found = re.search(r"^pins (\S+) active (gen-\d)$", status, re.M)
        assert found, status
        prog_pin = os.path.join(found.group(1), found.group(2), "input", "prog")

        with netns(t.server.name):
            fd = bpfsys.obj_get(prog_pin)
            try:
                got = [XDP_TO_VERDICT.get(testrun.test_run(fd, frame(p)).verdict) for p in probes]
            finally:
                os.close(fd)
        accept_foreign_sources(t.server.name, "s0")
        delivered = send_and_collect(t.client.name, "c0", t.server.name, "s0",
                                     [(p, 1) for p in real])
        saved = t.server.run(bpf_command("iptables-save", "-c"), timeout=300)
        assert saved.returncode == 0, saved.stderr

    assert got == [evaluate(table, p).verdict for p in probes]
    assert [evaluate(table, p).verdict for p in real] == ["ACCEPT", "DROP"]
    assert delivered == {1: 1}
    assert rules[-1].counters.packets + table.chains["INPUT"].counters.packets > 0
    want = [line for line in save_table(table, counters=True).splitlines()
            if not line.startswith("#")]
    lines = [line for line in saved.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == len(want)
    assert [(i, line) for i, (line, ref) in enumerate(zip(lines, want)) if line != ref] == []
