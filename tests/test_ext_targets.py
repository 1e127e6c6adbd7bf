"""REJECT and LOG front end, against real iptables-legacy.

Every rule line of iptables' own libipt_REJECT.t and libipt_LOG.t (read from
shared/ beside the repository at test time) plus our own edge and error cases is run with
iptables-legacy and with bpf-iptables, each in a fresh namespace, and
stdout, stderr and exit status of -A, -C, -S, -L, -L -n -v and -D must be
identical after normalising the program name. -j QUEUE, which iptables
accepts, must be refused by us (not supported, exit 2)."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.support.netns import REPO, Namespace, bpf_command, namespace
from tests.support.tfiles import TLine, read_t_file
from tests.support.pair import Pair, pair

LISTINGS = (("-S",), ("-L",), ("-L", "-n", "-v"))


def collect(p: Pair, args: tuple[str, ...], problems: list[str]) -> None:
    diff = p.differs(*args)
    if diff is not None:
        problems.append(diff)


def run_t_lines(lines: list[TLine]) -> None:
    """Append every line in every chain it names, compare the listings and
    the canonical save text, then -C and -D each accepted rule (once, in its
    first chain: neither depends on the chain); one namespace pair per file.

    Every invocation of our CLI costs a Python start, so listings are
    compared once, after all appends, rather than after each."""
    problems: list[str] = []
    with pair() as p:
        accepted: list[tuple[str, list[str]]] = []
        expected_save: list[str] = []
        for line in lines:
            argv = shlex.split(line.rule)
            for chain in line.chains:
                real, ours = p.both("-A", chain, *argv)
                if real != ours:
                    problems.append(p.differs("-A", chain, *argv) or "flaky")
                # the .t expectation holds for the real tool (and so for us)
                assert (real.returncode == 0) == line.ok, f"{line}: real {real}"
                if line.ok:
                    expected_save.append(f"-A {chain} {line.save}\n")
            if line.ok:
                accepted.append((line.chains[0], argv))
        for listing in LISTINGS:
            collect(p, listing, problems)
        saved = p.both("-S")[1].stdout
        rules = [ln + "\n" for ln in saved.splitlines() if ln.startswith("-A ")]
        # -S lists chain by chain, so compare per chain
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            want = [r for r in expected_save if r.startswith(f"-A {chain} ")]
            got = [r for r in rules if r.startswith(f"-A {chain} ")]
            assert got == want, f"-S {chain}: {got} != {want}"
        for chain, argv in accepted:
            collect(p, ("-C", chain, *argv), problems)
        for chain, argv in accepted:
            collect(p, ("-D", chain, *argv), problems)
        chain, argv = accepted[0]
        collect(p, ("-C", chain, *argv), problems)   # now gone
        collect(p, ("-S",), problems)
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize("name", ["libipt_REJECT.t", "libipt_LOG.t"])
def test_iptables_t_file(name: str) -> None:
    lines = read_t_file(name)
    assert len(lines) >= 8
    run_t_lines(lines)


def run_sequence(commands: list[list[str]]) -> None:
    """Run commands in order in both tools, comparing each result, then
    compare every listing of the resulting table."""
    problems: list[str] = []
    with pair() as p:
        for argv in commands:
            collect(p, tuple(argv), problems)
        for listing in LISTINGS:
            collect(p, listing, problems)
    assert not problems, "\n\n".join(problems)


REJECT_TYPES = ["icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable",
                "icmp-proto-unreachable", "icmp-net-prohibited", "icmp-host-prohibited",
                "icmp-admin-prohibited", "net-unreach", "host-unreach", "port-unreach",
                "proto-unreach", "net-prohib", "host-prohib", "admin-prohib"]


def test_reject_types_aliases_and_prefixes() -> None:
    """Every name and alias, and the prefix/case forms libipt_REJECT accepts."""
    words = REJECT_TYPES + ["", "icmp", "icmp-h", "HOST-P", "Port", "a", "net", "proto",
                            "icmp-admin", "icmp-port-unreachablex", "bogus", "echo-reply",
                            "echo", "e", "ECHOREPLY", "icmp-echo-reply"]
    commands = [["-A", "INPUT", "-j", "REJECT", "--reject-with", w] for w in words]
    # -C/-D compare the type: by name, alias and prefix alike
    commands += [["-C", "INPUT", "-j", "REJECT", "--reject-with", "host-prohib"],
                 ["-D", "INPUT", "-j", "REJECT", "--reject-with", "icmp-host-prohib"],
                 ["-D", "INPUT", "-j", "REJECT", "--reject-with", "icmp-host-prohib"],
                 ["-D", "INPUT", "-j", "REJECT"],
                 ["-C", "INPUT", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]]
    run_sequence(commands)


def test_reject_tcp_reset_needs_tcp() -> None:
    """The kernel accepts tcp-reset only in rules limited to -p tcp."""
    run_sequence([
        ["-A", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "-p", "6", "-j", "REJECT", "--reject-with", "tcp-rst"],
        ["-A", "FORWARD", "-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "TCP"],
        ["-A", "INPUT", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "-p", "udp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "!", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "-p", "all", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-N", "user"],
        ["-A", "user", "-p", "udp", "-j", "REJECT", "--reject-with", "tcp-rst"],
        ["-A", "user", "-p", "udp", "-j", "REJECT", "--reject-with", "icmp-net-prohibited"],
        ["-I", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-R", "INPUT", "1", "-p", "udp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-C", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-D", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ])


def test_reject_option_errors() -> None:
    run_sequence([
        ["-A", "INPUT", "-j", "REJECT", "--reject-with"],
        ["-A", "INPUT", "-j", "REJECT", "!", "--reject-with", "net-unreach"],
        ["-A", "INPUT", "-j", "REJECT", "--reject-with", "net-unreach", "--reject-with",
         "host-unreach"],
        ["-A", "INPUT", "-j", "REJECT", "--reject-wit", "net-unreach"],
        ["-A", "INPUT", "-j", "REJECT", "--reject-with=host-unreach"],
        ["-A", "INPUT", "-j", "REJECT", "--reject", "host-unreach"],
        ["-A", "INPUT", "--reject-with", "host-unreach", "-j", "REJECT"],
        ["-A", "INPUT", "-j", "REJECT", "--log-prefix", "x"],
        ["-A", "INPUT", "-j", "REJECT", "-j", "LOG"],
        ["-A", "INPUT", "-g", "REJECT"],
        ["-A", "INPUT", "-j", "reject"],
        ["-A", "INPUT", "-j", "REJECT", "extra"],
    ])


def test_log_options() -> None:
    prefixes = ["x: ", "test: ", "with space", 'quo"te', "back\\slash", "apos'trophe",
                "plain_word-1", "%d%s", "a" * 29, "b" * 30, "c" * 64, "é" * 14, "z" + "é" * 14]
    commands = [["-A", "INPUT", "-j", "LOG", "--log-prefix", pre] for pre in prefixes]
    levels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "-1", "0x7", "07", "08", " 3",
              "emerg", "alert", "crit", "error", "err", "warning", "warn", "notice", "info",
              "debug", "panic", "none", "WARNING", ""]
    commands += [["-A", "OUTPUT", "-j", "LOG", "--log-level", lvl] for lvl in levels]
    flag_sets = [["--log-tcp-sequence"], ["--log-tcp-options"], ["--log-ip-options"],
                 ["--log-uid"], ["--log-macdecode"],
                 ["--log-macdecode", "--log-uid", "--log-ip-options", "--log-tcp-options",
                  "--log-tcp-sequence", "--log-level", "debug", "--log-prefix", "all: "]]
    commands += [["-A", "FORWARD", "-p", "tcp", "-j", "LOG", *flags] for flags in flag_sets]
    commands += [["-C", "INPUT", "-j", "LOG", "--log-prefix", "c" * 29],   # cut prefixes compare
                 ["-D", "INPUT", "-j", "LOG", "--log-prefix", "c" * 40],
                 ["-C", "OUTPUT", "-j", "LOG", "--log-level", "warning"],
                 ["-D", "OUTPUT", "-j", "LOG", "--log-level", "4", "--log-uid"],
                 ["-D", "OUTPUT", "-j", "LOG"]]
    run_sequence(commands)


def run_bytes(ns: Namespace, argv: list[str]) -> tuple[bytes, bytes, int]:
    """Run in ``ns`` keeping raw bytes: a cut prefix may end mid-character."""
    env = dict(os.environ, LC_ALL="C", PYTHONPATH=str(REPO))
    proc = subprocess.run(["ip", "netns", "exec", ns.name, *argv], capture_output=True,
                          env=env, timeout=60)
    return proc.stdout, proc.stderr, proc.returncode


def test_log_prefix_cut_inside_a_character() -> None:
    """29 bytes are kept even when that splits a UTF-8 sequence; -S and -L
    then print the lone byte, exactly as iptables does."""
    prefix = "\u00a1" * 20   # 40 bytes of 2-byte characters
    with pair() as p:
        for args in (["-A", "INPUT", "-j", "LOG", "--log-prefix", prefix], ["-S"], ["-L"],
                     ["-L", "-n", "-v"], ["-C", "INPUT", "-j", "LOG", "--log-prefix", prefix],
                     ["-D", "INPUT", "-j", "LOG", "--log-prefix", prefix[:15]], ["-S"]):
            real = run_bytes(p.real, ["iptables-legacy", *args])
            ours = run_bytes(p.ours, bpf_command("iptables", *args))
            assert real[0] == ours[0] and real[2] == ours[2], (args, real, ours)
            assert (real[1] == b"") == (ours[1] == b""), (args, real, ours)
            if args == ["-S"] and b"LOG" in real[0]:
                assert b'"' + prefix.encode()[:29] + b'"' in real[0]


def test_log_option_errors() -> None:
    run_sequence([
        ["-A", "INPUT", "-j", "LOG", "--log-prefix"],
        ["-A", "INPUT", "-j", "LOG", "--log-prefix", ""],
        ["-A", "INPUT", "-j", "LOG", "--log-prefix", "two\nlines"],
        ["-A", "INPUT", "-j", "LOG", "--log-prefix", "a", "--log-prefix", "b"],
        ["-A", "INPUT", "-j", "LOG", "--log-level", "1", "--log-level", "2"],
        ["-A", "INPUT", "-j", "LOG", "--log-uid", "--log-uid"],
        ["-A", "INPUT", "-j", "LOG", "!", "--log-uid"],
        ["-A", "INPUT", "-j", "LOG", "!", "--log-prefix", "x"],
        ["-A", "INPUT", "-j", "LOG", "--log-level", "bad"],
        ["-A", "INPUT", "-j", "LOG", "--log-level"],
        ["-A", "INPUT", "-j", "LOG", "--log-bogus"],
        ["-A", "INPUT", "-j", "LOG", "--log-u"],
        ["-A", "INPUT", "-j", "LOG", "--log-tcp"],
        ["-A", "INPUT", "-j", "LOG", "--reject-with", "tcp-reset"],
        ["-A", "INPUT", "-j", "LOG", "--log-uid=1"],
        ["-A", "INPUT", "-j", "LOG", "--log-level=3", "--log-prefix=eq"],
    ])


def test_queue_is_refused() -> None:
    """iptables accepts -j QUEUE; we cannot deliver to user space: exit 2."""
    with namespace() as ns:
        assert ns.iptables("-A", "INPUT", "-j", "QUEUE").returncode == 0
        for argv in (["-A", "INPUT", "-j", "QUEUE"], ["-I", "INPUT", "-p", "tcp", "-j", "QUEUE"],
                     ["-C", "INPUT", "-j", "QUEUE"]):
            res = ns.bpf_iptables(*argv)
            assert res.returncode == 2, res
            assert "target `QUEUE' is not supported by bpf-iptables" in res.stderr
            assert res.stdout == ""
        res = ns.bpf_iptables("-S")
        assert res.returncode == 0 and "QUEUE" not in res.stdout
        # in a restore file too: refused at its line, nothing committed
        dump = "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j QUEUE\nCOMMIT\n"
        res = ns.run(bpf_command("iptables-restore"), input=dump)
        assert res.returncode == 2, res
        assert "target `QUEUE' is not supported by bpf-iptables" in res.stderr
        assert "Error occurred at line: 3" in res.stderr
        assert "-A INPUT" not in ns.bpf_iptables("-S").stdout
    with pair() as p:
        # no change to the parse of the other standard verdicts or of -g
        for argv in (["-A", "INPUT", "-j", "ACCEPT"], ["-A", "INPUT", "-j", "DROP"],
                     ["-A", "INPUT", "-j", "RETURN"], ["-A", "INPUT", "-g", "QUEUE"],
                     ["-N", "QUEUE"], ["-S"]):
            p.assert_same(*argv)


def test_help_texts() -> None:
    """-h after -j REJECT / -j LOG appends the target's help text."""
    with pair() as p:
        for argv in (["-j", "REJECT", "-h"], ["-j", "LOG", "-h"], ["-p", "tcp", "-j", "LOG", "-h"]):
            real, ours = p.both(*argv)
            # the usage lines name the program: only that may differ
            assert (real.returncode, real.stderr) == (ours.returncode, ours.stderr)
            assert real.stdout == ours.stdout.replace("bpf-iptables", "iptables")
            assert ("REJECT target options:" in real.stdout) == ("REJECT" in argv)
            assert ("LOG target options:" in real.stdout) == ("LOG" in argv)


def test_verbose_append_and_single_rule_listings() -> None:
    """-v prints the rule as added; -L/-S CHAIN N; -Z then -S -v counters."""
    run_sequence([
        ["-v", "-A", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-rst"],
        ["-v", "-A", "INPUT", "-j", "LOG", "--log-prefix", "v: ", "--log-level", "crit",
         "--log-ip-options"],
        ["-v", "-I", "INPUT", "2", "-s", "10.0.0.0/8", "-j", "REJECT"],
        ["-v", "-n", "-C", "INPUT", "-s", "10.0.0.0/8", "-j", "REJECT"],
        ["-L", "INPUT", "2"], ["-L", "INPUT", "3", "-n"], ["-S", "INPUT", "3"],
        ["-L", "INPUT", "-v", "-x", "--line-numbers"],
        ["-S", "-v"], ["-Z", "INPUT", "2"], ["-S", "INPUT", "-v"],
        ["-v", "-D", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-v", "-R", "INPUT", "1", "-j", "LOG", "--log-uid"],
    ])


def test_save_restore_round_trip() -> None:
    """iptables-restore takes the saved text back; quoting survives."""
    dump = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -p tcp -j REJECT --reject-with tcp-reset\n"
            "-A INPUT -j LOG --log-prefix \"a \\\"quoted\\\" 'prefix'\" --log-level 6\n"
            "-A FORWARD -j REJECT --reject-with admin-prohib\n"
            "-A FORWARD -j LOG --log-tcp-sequence --log-prefix x\n"
            "COMMIT\n")
    problems: list[str] = []
    with pair() as p:
        diff = p.differs(tool="iptables-restore", input=dump)
        if diff:
            problems.append(diff)
        real, ours = p.both(tool="iptables-save")
        if real != ours:
            problems.append(p.differs(tool="iptables-save") or "flaky")
        assert "--reject-with icmp-admin-prohibited" in real.stdout
        # a restore of the saved text gives the same save again
        for args in (("-F",),):
            collect(p, args, problems)
        diff = p.differs(tool="iptables-restore", input=real.stdout)
        if diff:
            problems.append(diff)
        again = p.both(tool="iptables-save")
        assert again[0] == again[1] and again[0].stdout == real.stdout
        # a bad reject type inside a restore file: same line number and text
        bad = "*filter\n-A INPUT -j LOG\n-A INPUT -j REJECT --reject-with nope\nCOMMIT\n"
        diff = p.differs(tool="iptables-restore", input=bad)
        if diff:
            problems.append(diff)
    assert not problems, "\n\n".join(problems)
