"""restore_cache.py: a restore that parses each line shape once must end
with exactly the rule set, output, errors and exit status of parsing every
line in full."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from bpf_iptables.cmdline import parse as P
from bpf_iptables.model import RuleSet
from bpf_iptables.netaddr import ipparse_multiple
from bpf_iptables.render.save import save_table
from bpf_iptables.restore import Output, RestoreOptions, Restorer
from bpf_iptables.restore_cache import ParseCache, addresses, shape
from bpf_iptables.restore_input import read_statements
from bpf_iptables.errors import XtablesError
from tests.support.shared import ruleset


class FullParse(ParseCache):
    """The reference: every line through the full parser."""

    def parse(self, argv, full):
        return full().parse()


class _Store:
    def __init__(self) -> None:
        self.rules = RuleSet()

    def load(self) -> RuleSet:
        return self.rules

    def save(self, rules: RuleSet) -> None:
        self.rules = rules


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    saved: str
    counters: list


def restore(dump: str, cached: bool, capsys, **options) -> Run:
    store = _Store()
    out = Output("iptables-restore", "1.8.9", io.StringIO(), io.StringIO())
    restorer = Restorer(RestoreOptions(**options), out, lambda wait: contextlib.nullcontext(store))
    if not cached:
        restorer.parse_cache = FullParse()
    status = restorer.run(read_statements(dump.encode()))
    warnings = capsys.readouterr().err  # what extensions write to sys.stderr
    table = store.rules.tables.get("filter")
    counters = [] if table is None else [
        (c.name, c.counters, [r.counters for r in c.rules]) for c in table.ordered_chains()]
    return Run(status, out.stdout.getvalue(), out.stderr.getvalue() + warnings,
               "" if table is None else save_table(table, True, now=0), counters)


def same_either_way(dump: str, capsys, **options) -> Run:
    cached = restore(dump, True, capsys, **options)
    full = restore(dump, False, capsys, **options)
    assert cached == full
    return cached


@pytest.mark.parametrize("name", ["classbench-fw1-1k.rules", "classbench-acl1-1k.rules"])
def test_classbench_dumps(name: str, capsys) -> None:
    text = ruleset(name).read_text()
    run = same_either_way(text, capsys)
    assert run.status == 0 and run.saved.count("] -A INPUT ") == text.count("\n-A INPUT ")


@pytest.mark.parametrize("lines", [
    # an address option's word taken as another option's argument: no template
    ["-A INPUT -m comment --comment -s -j DROP", "-A INPUT -m comment --comment -s -j ACCEPT",
     "-A INPUT -m comment --comment -s -x DROP"],
    # the same shape, then a bad address, a host name, several addresses
    ["-A INPUT -s 1.2.3.4/32 -j DROP", "-A INPUT -s 1.2.3.5/32 -j DROP",
     "-A INPUT -s 1.2.3.300/32 -j DROP"],
    ["-A INPUT -s 1.2.3.4 -j DROP", "-A INPUT -s localhost -j DROP",
     "-A INPUT -s 1.1.1.1,2.2.2.2/31 -j DROP", "-A INPUT -s 010.1.1.1/08 -j DROP"],
    ["-A INPUT ! -s 1.2.3.4/32 -j DROP", "-A INPUT ! -s 1.2.3.4/32,5.6.7.8 -j DROP"],
    ["-A INPUT -s 1.2.3.4/32 -d 0.0.0.0/0 -j DROP", "-A INPUT -d 5.0.0.0/8 -s 1.0.0.0/1 -j DROP",
     "-A INPUT -s 1.2.3.4/33 -d 0.0.0.0/0 -j DROP"],
    ["-I INPUT -s 1.2.3.4 -j DROP", "-R INPUT 1 -s 1.2.3.5 -j DROP",
     "-R INPUT 1 -s 1.2.3.6,1.2.3.7 -j DROP"],
    ["-A INPUT -s 1.2.3.4 -s 1.2.3.5 -j DROP"],
    ["-A INPUT -s 1.2.3.4 --src 1.2.3.5 -j DROP"],
    ["-A INPUT --source 1.2.3.4 -j DROP", "-A INPUT --source 1.2.3.5 -j DROP",
     "-A INPUT --dst 1.2.3.5 -j DROP", "-A INPUT --dst 1.2.3.6 -j DROP"],
    # a warning is printed for each line that has it
    ["-A INPUT -s 1.0.0.1 -m iprange --src-range 2.0.0.9-2.0.0.1 -j DROP",
     "-A INPUT -s 1.0.0.2 -m iprange --src-range 2.0.0.9-2.0.0.1 -j DROP"],
    # -v prints each rule with its own addresses
    ["-v -A INPUT -s 1.2.3.4 -p tcp --dport 80 -j ACCEPT",
     "-v -A INPUT -s 1.2.3.5 -p tcp --dport 80 -j ACCEPT"],
    ["-A INPUT -s 1.2.3.4 -p tcp --dport 80 -j ACCEPT", "-A INPUT -s 1.2.3.5 -p tcp --dport 8o -j ACCEPT"],
])
def test_shapes(lines: list[str], capsys) -> None:
    dump = "*filter\n:INPUT ACCEPT [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    same_either_way(dump, capsys)


def test_announced_chains_change_what_a_jump_means(capsys) -> None:
    """-j LOG loads the target until a chain LOG is announced."""
    dump = ("*filter\n-A INPUT -s 1.2.3.4 -j LOG\n:LOG - [0:0]\n-A INPUT -s 1.2.3.5 -j LOG\n"
            "COMMIT\n")
    run = same_either_way(dump, capsys)
    assert run.status == 0 and "-j LOG" in run.saved


def test_counters_and_verbose(capsys) -> None:
    dump = ("*filter\n:INPUT DROP [5:6]\n[1:2] -A INPUT -s 1.2.3.4 -j ACCEPT\n"
            "[3:4] -A INPUT -s 1.2.3.5 -j ACCEPT\n-Z INPUT\n[7:8] -A INPUT -s 9.9.9.9 -j DROP\n"
            "COMMIT\n")
    run = same_either_way(dump, capsys, counters=True, verbose=1)
    assert [c.packets for c in run.counters[0][2]] == [0, 0, 7]


def test_a_shape_is_parsed_once() -> None:
    cache = ParseCache()
    calls = []

    def full(argv):
        def make():
            calls.append(argv)
            return P.CommandParser(argv, restore=True)
        return make

    for i in range(5):
        argv = ["iptables-restore", "-t", "filter", "-A", "INPUT", "-s", f"10.0.0.{i}/32",
                "-p", "udp", "--dport", "53", "-j", "ACCEPT"]
        p = cache.parse(argv, full(argv))
        assert [s.addr for s in p.sources] == [0x0A000000 + i]
    assert len(calls) == 1
    assert shape(["x", "-s", "a", "-d"]) == ("x", "-s", None, "-d")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789./,x ", max_size=20))
def test_addresses_equal_ipparse_multiple(text: str) -> None:
    if "x" not in text:  # no host names: no resolver queries
        assert outcome(addresses, text) == outcome(ipparse_multiple, text)


def outcome(fn, text: str):
    try:
        return fn(text)
    except XtablesError as exc:
        return exc.message


@pytest.mark.parametrize("text", ["1.2.3.4/32", "0.0.0.0/0", "255.255.255.255/1", "1.2.3.4/08",
                                  "1.2.3.4/", "1.2.3.4", "01.2.3.4/8", "1.2.3.4/033",
                                  "1.2.3.4/255.0.0.0", "1.2.3/24"])
def test_addresses_on_save_like_text(text: str) -> None:
    assert outcome(addresses, text) == outcome(ipparse_multiple, text)
