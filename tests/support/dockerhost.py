"""A Docker host in namespaces, for tests/data/realworld/docker.rules.

    outside (o0 10.99.1.1) --veth-- host (eth0 10.99.1.2, routes, ip_forward)
      host: docker0 172.17.0.1/16 -- port vethd -- c1 (eth0 172.17.0.2)
            br-2c1f6e4a9d10 172.18.0.1/16 -- port vethb -- c2 (eth0 172.18.0.2)

The bridges and ports are real Linux bridges and veths, named as dockerd
names them (the ports' names are Docker's "vethXXXX" shortened). No nat
table: the outside client reaches the containers' addresses directly,
which is what the filter table sees after Docker's DNAT of a published
port. br_netfilter is off in the host (``bridge-nf-call-iptables=0``),
as bpf-iptables requires with FORWARD rules beside a bridge. The host does
not report link-local multicast groups (see below), so OUTPUT counts only
the probes' packets."""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.support.netns import Namespace
from tests.test_datapath_traffic import Pair, ping, remove_namespaces, sh, tcp, udp

DOCKER_RULES = (Path(__file__).resolve().parents[1] / "data" / "realworld" / "docker.rules"
                ).read_text()
OUTSIDE_IP, HOST_IP = "10.99.1.1", "10.99.1.2"
C1_IP, C2_IP = "172.17.0.2", "172.18.0.2"
USER_BRIDGE = "br-2c1f6e4a9d10"


@dataclass
class DockerHost:
    outside: Namespace
    host: Namespace
    c1: Namespace     # on docker0, serves tcp 80
    c2: Namespace     # on the user network's bridge, serves tcp 5432


@contextmanager
def docker_host(prefix: str, br_netfilter: bool = False) -> Iterator[DockerHost]:
    tag = uuid.uuid4().hex[:8]
    names = [f"{prefix}{r}-{tag}" for r in "ohab"]
    made: list[str] = []
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            made.append(n)
        outside, host, c1, c2 = names
        for n in names:
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", n, "link", "set", "lo", "up")
        # a bridge with multicast snooping joins 224.0.0.106 when it comes up,
        # and the host reports it (IGMP out of the bridge, through OUTPUT) a
        # moment later: before or after the rules are loaded, by chance
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0")
        sh("ip", "link", "add", "o0", "netns", outside, "type", "veth", "peer", "name", "eth0",
           "netns", host)
        for ns, dev, addr in ((outside, "o0", OUTSIDE_IP), (host, "eth0", HOST_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", outside, "route", "add", "172.16.0.0/12", "via", HOST_IP)
        for bridge, gw, port, ns, addr in (("docker0", "172.17.0.1", "vethd", c1, C1_IP),
                                           (USER_BRIDGE, "172.18.0.1", "vethb", c2, C2_IP)):
            sh("ip", "-n", host, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", host, "addr", "add", f"{gw}/16", "dev", bridge)
            sh("ip", "-n", host, "link", "set", bridge, "up")
            sh("ip", "link", "add", port, "netns", host, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "-n", host, "link", "set", port, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
        sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", host, "sysctl", "-qw",
           f"net.bridge.bridge-nf-call-iptables={int(br_netfilter)}")
        yield DockerHost(*(Namespace(n) for n in names))
    finally:
        remove_namespaces(made, attached=names[1])


def probes(d: DockerHost) -> dict[str, int]:
    """The same traffic in every run: what got through."""
    inbound1, inbound2 = Pair(d.outside, d.c1), Pair(d.outside, d.c2)
    out = {
        # published ports (after DNAT) and the rest of each container
        "pub80": tcp(inbound1, 80, 2, C1_IP),
        "unpub81": tcp(inbound1, 81, 1, C1_IP),
        "pub5432": tcp(inbound2, 5432, 1, C2_IP),
        "unpub5433_udp": udp(inbound2, 5433, 2, far=C2_IP),
        "ping_in": ping(inbound1, 1, C1_IP),
        # isolation between the two networks, both ways
        "c1_to_c2": tcp(Pair(d.c1, d.c2), 5432, 1, C2_IP),
        "c2_to_c1": tcp(Pair(d.c2, d.c1), 80, 1, C1_IP),
        # containers out (replies come back RELATED/ESTABLISHED through DOCKER-CT)
        "c1_out_tcp": tcp(Pair(d.c1, d.outside), 8000, 2, OUTSIDE_IP),
        "c2_out_ping": ping(Pair(d.c2, d.outside), 2, OUTSIDE_IP),
        # the host itself to a container: OUTPUT and INPUT, not FORWARD
        "host_ping": ping(Pair(d.host, d.c1), 1, C1_IP),
    }
    time.sleep(0.1)
    return out


EXPECTED = {"pub80": 2, "unpub81": 0, "pub5432": 1, "unpub5433_udp": 0, "ping_in": 0,
            "c1_to_c2": 0, "c2_to_c1": 0, "c1_out_tcp": 2, "c2_out_ping": 2, "host_ping": 1}
