"""Reference semantics of recent and hashlimit, and the refusals: -m set in
the reference (no set store yet), and in the eBPF data path hashlimit's
--hashlimit-rate-match and set (NotSupported at lowering; exit 2 in an
attached namespace)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bpf_iptables.cmdline.parse import CommandParser
from bpf_iptables.errors import NotSupported
from bpf_iptables.extensions import matches as registered_matches
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import REPO, namespace


def parsed(*args: str):
    p = CommandParser(["iptables", "-A", "INPUT", *args]).parse()
    return p.match_data, p.base_rule


def data(*args: str):
    match_data, _ = parsed(*args)
    assert len(match_data) == 1
    return match_data[0].data


def pkt(src: str, t: float, **kw) -> Packet:
    return Packet(src=ip_to_int(src), dst=ip_to_int("10.9.9.9"), proto=6, dport=22,
                  time=t, **kw)


def test_recent_ufw_limit() -> None:
    """ufw's "limit": --set, then --update --seconds 30 --hitcount 6 matches
    (and drops) from the 6th new connection within 30 s, per source."""
    ext = registered_matches()["recent"]
    ext.tables.clear()
    setter = data("-m", "recent", "--set", "--name", "U")
    check = data("-m", "recent", "--update", "--seconds", "30", "--hitcount", "6", "--name", "U")
    hits = []
    for i in range(8):
        p = pkt("192.0.2.1", 100.0 + i)
        assert ext.matches(setter, p)        # --set always matches
        hits.append(ext.matches(check, p))
    # each --set adds a stamp: the 6th packet within 30 s is the 6th hit
    assert hits == [False] * 5 + [True] * 3
    assert not ext.matches(check, pkt("192.0.2.2", 101.0))   # another source: no entry
    # long after, the stamps are older than 30 s
    assert not ext.matches(check, pkt("192.0.2.1", 200.0))
    rcheck = data("-m", "recent", "!", "--rcheck", "--name", "U")
    assert ext.matches(rcheck, pkt("192.0.2.3", 1.0))         # inverted, no entry
    remove = data("-m", "recent", "--remove", "--name", "U")
    assert ext.matches(remove, pkt("192.0.2.1", 201.0))
    assert not ext.matches(remove, pkt("192.0.2.1", 202.0))


def test_recent_mask_rdest_rttl() -> None:
    ext = registered_matches()["recent"]
    ext.tables.clear()
    setter = data("-m", "recent", "--set", "--name", "M", "--mask", "255.255.255.0")
    rcheck = data("-m", "recent", "--rcheck", "--name", "M", "--mask", "255.255.255.0")
    assert ext.matches(setter, pkt("192.0.2.1", 1.0, ttl=64))
    assert ext.matches(rcheck, pkt("192.0.2.77", 2.0))
    assert not ext.matches(rcheck, pkt("192.0.3.1", 2.0))
    ttl = data("-m", "recent", "--rcheck", "--rttl", "--name", "M", "--mask", "255.255.255.0")
    assert ext.matches(ttl, pkt("192.0.2.1", 2.0, ttl=64))
    assert not ext.matches(ttl, pkt("192.0.2.1", 2.0, ttl=63))
    dest = data("-m", "recent", "--rcheck", "--name", "M", "--rdest")
    assert not ext.matches(dest, pkt("192.0.2.1", 2.0))


def test_hashlimit_per_source_buckets() -> None:
    ext = registered_matches()["hashlimit"]
    ext.tables.clear()
    upto = data("-m", "hashlimit", "--hashlimit-upto", "2/sec", "--hashlimit-burst", "3",
                "--hashlimit-mode", "srcip", "--hashlimit-name", "h1")
    a = [ext.matches(upto, pkt("192.0.2.1", 10.0)) for _ in range(5)]
    assert a == [True, True, True, False, False]
    # another source has its own full bucket
    assert ext.matches(upto, pkt("192.0.2.2", 10.0))
    # 2/sec: one token every 0.5 s
    assert not ext.matches(upto, pkt("192.0.2.1", 10.4))
    assert ext.matches(upto, pkt("192.0.2.1", 10.5))
    above = data("-m", "hashlimit", "--hashlimit-above", "1/sec", "--hashlimit-burst", "1",
                 "--hashlimit-name", "h2")
    assert [ext.matches(above, pkt("192.0.2.9", 5.0)) for _ in range(3)] == [False, True, True]
    srcmask = data("-m", "hashlimit", "--hashlimit-upto", "1/min", "--hashlimit-burst", "1",
                   "--hashlimit-mode", "srcip", "--hashlimit-srcmask", "24",
                   "--hashlimit-name", "h3")
    assert ext.matches(srcmask, pkt("198.51.100.1", 1.0))
    assert not ext.matches(srcmask, pkt("198.51.100.200", 1.0))   # same /24 key
    rate_match = data("-m", "hashlimit", "--hashlimit-upto", "4/s", "--hashlimit-rate-match",
                      "--hashlimit-name", "h4")
    with pytest.raises(NotSupported):
        ext.matches(rate_match, pkt("192.0.2.1", 1.0))


def test_set_refused_in_reference() -> None:
    from bpf_iptables.extensions.set import SetData
    with pytest.raises(NotSupported):
        registered_matches()["set"].matches(SetData("foo", ("src",)), pkt("192.0.2.1", 0.0))


@pytest.mark.parametrize("rule", [
    # rates are enforced (tests/test_hashlimit_*.py); rate-match is not
    ("-m", "hashlimit", "--hashlimit-upto", "1/sec", "--hashlimit-rate-match",
     "--hashlimit-name", "x"),
])
def test_lowering_refuses(rule: tuple[str, ...]) -> None:
    match_data, base = parsed(*rule)
    ext = registered_matches()[match_data[0].name]
    with pytest.raises(NotSupported):
        ext.lower(match_data[0].data, base)


def test_attached_namespace_refuses_with_exit_2() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), BPF_IPTABLES_DATAPATH="on")
    with namespace("bpfrw") as ns:
        subprocess.run(["ip", "netns", "exec", ns.name, "ipset", "create", "foo", "hash:ip"],
                       check=True)
        for rule in (["-m", "hashlimit", "--hashlimit-above", "5/s", "--hashlimit-rate-match",
                      "--hashlimit-name", "y"],
                     ["-m", "set", "--match-set", "foo", "src"]):
            run = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                                  "bpf_iptables.cli.iptables", "-A", "INPUT", *rule, "-j", "DROP"],
                                 capture_output=True, text=True, env=env, timeout=120)
            assert run.returncode == 2, run
            assert "not supported" in run.stderr
        listing = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m",
                                  "bpf_iptables.cli.iptables", "-S", "INPUT"],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert listing.stdout == "-P INPUT ACCEPT\n"
