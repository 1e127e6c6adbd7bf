"""Docker's filter table (tests/data/realworld/docker.rules) on a host with
two real bridges (tests/support/dockerhost.py), enforced by iptables-legacy
in one twin and by bpf-iptables' data path in the other: the same probes
(published and unpublished container ports from outside, container to
container across the two networks, containers out and their replies, the
host to a container) get the same verdicts, and ``iptables-save -c`` shows
the same counters in every chain; in generic XDP and in tc mode."""
from __future__ import annotations

import re

import pytest

from tests.support.dockerhost import DOCKER_RULES, EXPECTED, USER_BRIDGE, docker_host, probes
from tests.support.netns import Namespace, bpf_command
from tests.support.twins import load_twins
from tests.test_datapath_traffic import datapath_command, ensure_bpffs


def saved(ns: Namespace, argv: list[str]) -> str:
    r = ns.run(argv)
    assert r.returncode == 0, r.stderr
    return "".join(line + "\n" for line in r.stdout.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("mode", ["xdpgeneric", "tc"])
def test_docker_rules_same_verdicts_and_counters_as_iptables_legacy(mode):
    ensure_bpffs()
    with docker_host("dkl") as legacy, docker_host("dkb") as ours:
        load_twins(legacy.host, ours.host, DOCKER_RULES, "--mode", mode)
        status = ours.host.run(datapath_command("status"))
        assert status.returncode == 0, status.stdout
        # the bridges carry the roots, their ports none
        assert re.search(rf"docker0 ifindex \d+ {mode} ok", status.stdout), status.stdout
        assert re.search(rf"{USER_BRIDGE} ifindex \d+ {mode} ok", status.stdout)
        assert "vethd port of bridge docker0: no roots" in status.stdout
        assert f"vethb port of bridge {USER_BRIDGE}: no roots" in status.stdout
        want = probes(legacy)
        assert want == EXPECTED
        got = probes(ours)
        assert got == want
        real = saved(legacy.host, ["iptables-legacy-save", "-c"])
        # everything was counted where Docker's rules say
        assert f"-A DOCKER -d 172.18.0.2/32 ! -i {USER_BRIDGE} -o {USER_BRIDGE}" in real
        assert "[0:0] -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP" not in real
        assert "[0:0] -A DOCKER ! -i docker0 -o docker0 -j DROP" not in real
        assert saved(ours.host, bpf_command("iptables-save", "-c")) == real
