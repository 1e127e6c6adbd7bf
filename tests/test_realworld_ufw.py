"""ufw's rule set enforced, and a ufw host migrated off netfilter.

tests/data/realworld/ufw.rules is what real ufw wrote (`ufw enable`, `ufw
limit ssh`, `ufw deny 23`, `ufw allow from 10.0.0.0/8 to any port 80`; see
scripts/realworld/). It uses conntrack, recent (the ssh limit: a 6th new
connection within 30 s from one source is rejected), limit on LOG rules and
on a jump, addrtype (LOCAL, MULTICAST, BROADCAST), REJECT and LOG.

1. The rule set in twin server namespaces, iptables-legacy in one and
   bpf-iptables (attached) in the other: the same probes (ssh past the
   limit, http, telnet, a port ufw does not open, NetBIOS, ping, mDNS
   multicast, a subnet broadcast) succeed and fail alike, and the counters
   of every rule are equal.
2. `bpf-iptables migrate --commit` on a namespace running the rule set under
   iptables-legacy empties netfilter's filter table, keeps the verdicts,
   and `--rollback` brings netfilter's rule set back byte for byte."""
from __future__ import annotations

import socket
import struct
import time

from tests.support.acks import _split as split_counters
from tests.support.netns import Namespace, bpf_command
from tests.support.twins import load_twins
from tests.test_conntrack_traffic import refused
from tests.test_datapath_traffic import (CLIENT_IP, SERVER_IP, Pair, ensure_bpffs, ping,
                                         received, sockets_in, tcp, topology, udp)
from tests.test_migrate import EMPTY, bpf_save, legacy_save, migrate
from tests.test_realworld_rulesets import DATA

UFW = (DATA / "ufw.rules").read_text()
BROADCAST_IP = "10.99.0.255"   # the /24 of tests.test_datapath_traffic.topology
MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353


def group_datagrams(pair: Pair, dst_ip: str, port: int, count: int) -> int:
    """Datagrams client -> dst_ip (a multicast group the server joins, or
    the subnet's broadcast address); how many the server received."""
    with sockets_in(pair.server, pair.client) as (rx, tx):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("", port))
        if dst_ip == MDNS_GROUP:
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                          socket.inet_aton(MDNS_GROUP) + socket.inet_aton(SERVER_IP))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(CLIENT_IP))
        else:
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for i in range(count):
            tx.sendto(struct.pack("!I", i), (dst_ip, port))
        return received(rx)


def ufw_traffic(pair: Pair) -> dict[str, int]:
    # joining the mDNS group makes the server send unsolicited IGMP reports
    # through OUTPUT (to its policy), repeated at random times up to a
    # second later: whether the last lands before the counters are read
    # varies, so the server reports no link-local groups (as dockerhost.py)
    pair.server.run(["sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0"])
    out = {
        "ping": ping(pair, 2),
        # `ufw limit ssh`: the 6th new connection within 30 s is rejected
        "ssh": tcp(pair, 22, 7),
        "ssh_refused": int(refused(pair.client, SERVER_IP, 22, socket.SOCK_STREAM)),
        "http": tcp(pair, 80, 2),              # allowed from 10.0.0.0/8
        "telnet": tcp(pair, 23, 1),            # `ufw deny 23`
        "other": tcp(pair, 8080, 1),           # nothing allows it: policy DROP
        "netbios": udp(pair, 137, 2),          # ufw-after-input skips to the policy
        "mdns": group_datagrams(pair, MDNS_GROUP, MDNS_PORT, 2),   # allowed
        "broadcast": group_datagrams(pair, BROADCAST_IP, 9999, 2),  # addrtype BROADCAST: dropped
    }
    time.sleep(0.1)
    return out


EXPECTED = {"ping": 2, "ssh": 5, "ssh_refused": 1, "http": 2, "telnet": 0, "other": 0,
            "netbios": 0, "mdns": 2, "broadcast": 0}


def listing(ns: Namespace, ours: bool) -> str:
    argv = ("-L", "-v", "-x", "-n")
    return (ns.bpf_iptables(*argv) if ours else ns.iptables(*argv)).stdout


def counter_differences(want: str, got: str) -> list[tuple[str, str, int, int]]:
    """(chain, line, packets, bytes) of want - got for every counter line
    that differs; the listings must be the same otherwise."""
    a, b = want.splitlines(), got.splitlines()
    assert len(a) == len(b)
    out, chain = [], ""
    for x, y in zip(a, b):
        if x.startswith("Chain "):
            chain = x.split()[1]
        if x != y:
            sx, sy = split_counters(x), split_counters(y)
            assert sx and sy and sx[0] == sy[0], (x, y)
            out.append((chain, " ".join(sx[0].split("#")[-1].split()), sx[1] - sy[1],
                        sx[2] - sy[2]))
    return out


def test_ufw_ruleset_same_verdicts_and_counters_as_iptables_legacy():
    ensure_bpffs()
    with topology("ufwl") as legacy, topology("ufwb") as ours:
        load_twins(legacy.server, ours.server, UFW)
        want = ufw_traffic(legacy)
        assert want == EXPECTED
        assert ufw_traffic(ours) == want
        mine, theirs = listing(ours.server, True), listing(legacy.server, False)
        # every counter alike, OUTPUT's too: the REJECT replies (ICMP port
        # unreachable to the limited ssh SYNs) pass ufw's OUTPUT rules,
        # RELATED to the SYN's entry, as iptables' own (README, "REJECT")
        assert counter_differences(theirs, mine) == []
        assert mine == theirs


def test_migrate_ufw_host_and_roll_back():
    ensure_bpffs()
    with topology("ufwm") as pair:
        server = pair.server
        assert server.run(["iptables-legacy-restore"], input=UFW).returncode == 0
        rules = legacy_save(server, counters=False)
        before = legacy_save(server)
        r = migrate(server, "--commit")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "data path and reference agree" in r.stdout, r.stdout
        assert legacy_save(server, counters=False) == "*filter\n" + EMPTY + "COMMIT\n"
        assert bpf_save(server) == rules
        assert ufw_traffic(pair) == EXPECTED
        before_rollback = server.run(bpf_command("iptables-save")).stdout
        assert "-m recent --update --seconds 30 --hitcount 6" in before_rollback
        r = migrate(server, "--rollback")
        assert r.returncode == 0, r.stderr
        assert legacy_save(server) == before
        assert bpf_save(server) == "*filter\n" + EMPTY + "COMMIT\n"
        # netfilter enforces it again (a new source: the ssh limit's list
        # stayed in bpf-iptables' table)
        assert tcp(pair, 23, 1) == 0 and tcp(pair, 80, 1) == 1
