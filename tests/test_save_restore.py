"""bpf-iptables-save / bpf-iptables-restore against iptables-legacy-save /
iptables-legacy-restore, each in its own fresh namespace.

Every test compares exit status, stdout and stderr (program names
normalised) and the rule set both tools hold afterwards (save -c)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from bpf_iptables import extensions as registry
from tests.support.compare import normalize
from tests.support.netns import Namespace, bpf_command, namespace
from tests.support.shared import rulesets

RULESETS = rulesets()
REAL = {"iptables-save": "iptables-legacy-save", "iptables-restore": "iptables-legacy-restore",
        "iptables": "iptables-legacy"}

# Besides the "PROG vVERSION: " prefix, save and restore name themselves
# inside messages (glibc's getopt uses argv[0], "line N table name invalid",
# "Try `iptables-restore -h'", "manual page `iptables-save.8'").
_NAMES = re.compile(r"\b(?:bpf-)?iptables(?:-legacy)?-(save|restore)"
                    r"(?: v[0-9.]+ \((?:legacy|bpf)\))?")


def norm(text: str) -> str:
    return _NAMES.sub(r"PROG-\1", normalize(text))


class Both:
    """The same commands in a namespace with real iptables and one with ours."""

    def __init__(self, real: Namespace, ours: Namespace):
        self.real, self.ours = real, ours

    def run(self, tool: str, *args: str, input: str | None = None) -> tuple[tuple, tuple]:
        r = self.real.run([REAL[tool], *args], input=input)
        o = self.ours.run(bpf_command(tool, *args), input=input)
        return ((r.returncode, norm(r.stdout), norm(r.stderr)),
                (o.returncode, norm(o.stdout), norm(o.stderr)))

    def same(self, tool: str, *args: str, input: str | None = None) -> tuple:
        real, ours = self.run(tool, *args, input=input)
        assert ours == real, f"{tool} {args}\ninput:\n{input}"
        return real

    def saves(self) -> tuple[str, str]:
        real, ours = self.run("iptables-save", "-c")
        return real[1], ours[1]

    def same_rules(self) -> str:
        real, ours = self.saves()
        assert ours == real
        return real

    def ours_save(self) -> str:
        return norm(self.ours.run(bpf_command("iptables-save", "-c")).stdout)


@contextmanager
def both() -> Iterator[Both]:
    with namespace("bpfsr") as real, namespace("bpfso") as ours:
        yield Both(real, ours)


# -- round trips --------------------------------------------------------------

@pytest.mark.parametrize("path", RULESETS, ids=[p.name for p in RULESETS])
def test_classbench_round_trip(path: Path) -> None:
    text = path.read_text()
    with both() as b:
        b.same("iptables-restore", input=text)
        saved = b.same_rules()
        assert saved.count("\n-A ") + saved.count("] -A ") >= text.count("\n-A ")
        # our own dump restores to the same rule set
        ours_dump = b.ours.run(bpf_command("iptables-save")).stdout
        b.same("iptables-restore", input=ours_dump)
        assert b.same_rules() == saved


def test_ruleset_count_is_all_four() -> None:
    assert len(RULESETS) == 4


BASE = """# a hand-written dump
*filter
:INPUT DROP [10:2000]
:FORWARD ACCEPT [3:4]
:OUTPUT ACCEPT [0:0]
:zeta - [0:0]
:alpha - [7:7]
:LOGDROP - [0:0]

[1:100] -A INPUT -i lo -j ACCEPT
[2:200] -A INPUT -s 10.0.0.0/8 ! -d 192.168.1.1/32 -p tcp --dport 22 -j alpha
[0:0] -A INPUT ! -i eth+ -p tcp -m tcp ! --sport 1024:65535 --tcp-flags SYN,RST,ACK SYN -g zeta
[5:6] -A INPUT -f -j DROP
-A INPUT -s 1.2.3.4,5.6.7.8 -j LOGDROP
-A FORWARD ! -o "eth0" -p 6 -j RETURN
-A alpha -p tcp ! --syn -j ACCEPT
-A alpha
-A zeta -j RETURN
-A LOGDROP -j DROP
COMMIT
"""


@pytest.mark.parametrize("options", [(), ("-c",), ("--counters", "--verbose"), ("-n", "-c")])
def test_hand_written_dump(options: tuple[str, ...]) -> None:
    with both() as b:
        b.same("iptables-restore", *options, input=BASE)
        b.same_rules()
        b.same("iptables-save")
        b.same("iptables-save", "-c", "-t", "filter")


# One sample rule (or more) per extension, used when the extension exists.
EXTENSION_SAMPLES: dict[str, list[str]] = {
    "tcp": ["-A INPUT -p tcp -m tcp --sport 1:1024 --dport 22 --tcp-flags SYN,ACK SYN -j ACCEPT",
            "-A INPUT -p tcp --tcp-option 2 ! --syn -j DROP"],
    "udp": ["-A INPUT -p udp -m udp --sport 53 ! --dport 1000:2000 -j DROP",
            "-A INPUT -p udp --dport domain -j ACCEPT"],
    "icmp": ["-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT",
             "-A INPUT -p icmp ! --icmp-type 3/1 -j DROP"],
    "multiport": ["-A INPUT -p tcp -m multiport --dports 22,80,443:445 -j ACCEPT",
                  "-A INPUT -p udp -m multiport ! --sports 53,123 -j DROP"],
    "iprange": ["-A INPUT -m iprange --src-range 10.0.0.1-10.0.0.9 "
                "! --dst-range 192.168.0.1-192.168.0.5 -j DROP"],
    "mac": ["-A INPUT -m mac --mac-source 00:11:22:33:44:55 -j ACCEPT"],
    "comment": ['-A INPUT -m comment --comment "hello world" -j ACCEPT',
                '-A INPUT -m comment --comment "say \\"hi\\" \\\\ back" -j DROP',
                "-A INPUT -m comment --comment plain"],
    "mark": ["-A INPUT -m mark --mark 0x1/0xff -j ACCEPT", "-A INPUT -m mark ! --mark 7"],
    "length": ["-A INPUT -m length --length 100:200 -j DROP"],
    "ttl": ["-A INPUT -m ttl --ttl-gt 5 -j ACCEPT", "-A INPUT -m ttl ! --ttl-eq 64"],
    "conntrack": ["-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                  "-A INPUT -m conntrack --ctproto tcp --ctorigsrc 10.0.0.0/8 -j DROP"],
    "state": ["-A INPUT -m state --state NEW,INVALID -j DROP"],
    "limit": ["-A INPUT -m limit --limit 5/min --limit-burst 10 -j ACCEPT"],
    "tos": ["-A INPUT -m tos --tos 0x10 -j ACCEPT"],
    "dscp": ["-A INPUT -m dscp --dscp 0x0a -j ACCEPT"],
    "addrtype": ["-A INPUT -m addrtype --dst-type LOCAL -j ACCEPT"],
    "pkttype": ["-A INPUT -m pkttype --pkt-type broadcast -j DROP"],
    "REJECT": ["-A INPUT -p tcp -j REJECT --reject-with tcp-reset", "-A FORWARD -j REJECT"],
    "LOG": ['-A INPUT -j LOG --log-prefix "dropped: " --log-level 4 --log-tcp-options'],
}


def present_samples() -> list[tuple[str, str]]:
    names = set(registry.matches()) | set(registry.targets())
    return [(ext, rule) for ext, rules in EXTENSION_SAMPLES.items() if ext in names
            for rule in rules]


def test_extensions_round_trip() -> None:
    samples = present_samples()
    assert any(ext == "tcp" for ext, _ in samples)
    dump = "*filter\n:INPUT ACCEPT [0:0]\n" + "".join(
        f"[{i}:{i * 10}] {rule}\n" for i, (_, rule) in enumerate(samples)) + "COMMIT\n"
    with both() as b:
        b.same("iptables-restore", "-c", input=dump)
        saved = b.same_rules()
        # and the saved text restores to itself
        b.same("iptables-restore", "-c", input=b.ours.run(
            bpf_command("iptables-save", "-c")).stdout)
        assert b.same_rules() == saved


@pytest.mark.parametrize("ext,rule", present_samples())
def test_extension_sample(ext: str, rule: str) -> None:
    with both() as b:
        b.same("iptables-restore", input=f"*filter\n{rule}\nCOMMIT\n")
        b.same_rules()


def test_quoting_and_comments() -> None:
    dump = ('# leading comment\n\n*filter\n# inside\n:odd - [0:0]\n'
            '-A INPUT -s "10.0.0.1" -j "odd"\n'
            '-A\t"INPUT"\t-p "tcp"  --dport "80" -j A"CCEPT"\n'
            "-A INPUT -i eth\\0 -j DROP\n"
            '-A INPUT -i e"th"1 -j DROP\n'
            "COMMIT\n# trailing\n")
    with both() as b:
        b.same("iptables-restore", input=dump)
        b.same_rules()
        b.same("iptables-restore", "-v", input=dump)


def test_policies_and_counters() -> None:
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        # without -c policies stay as given, counters restart from zero
        b.same("iptables-restore", input="*filter\n:OUTPUT DROP [9:9]\nCOMMIT\n")
        b.same_rules()
        b.same("iptables-restore", "-c", input=BASE)
        # --noflush keeps rules and their counters, and adds to them
        b.same("iptables-restore", "-n", "-c",
               input="*filter\n:alpha - [0:0]\n[3:3] -A alpha -j RETURN\n"
                     ":FORWARD DROP [1:1]\n-P OUTPUT DROP\n-I INPUT 2 -j zeta\nCOMMIT\n")
        b.same_rules()
        # policy counters set in the header survive later command lines
        b.same("iptables-restore", "-c",
               input="*filter\n:INPUT ACCEPT [4:5]\n-A INPUT -j ACCEPT\n-Z FORWARD\nCOMMIT\n")
        b.same_rules()


def test_command_lines_in_restore() -> None:
    # (-S/-L come first: iptables-legacy cannot list jumps to chains made
    # earlier in the same transaction)
    dump = ("*filter\n-A OUTPUT -p udp -j DROP\n-S\n-L -n\n-L -v -x\n"
            "-N one\n-N two\n-A one -j two\n-I INPUT -j one\n-R INPUT 1 -j two\n"
            "-P FORWARD DROP\n-A OUTPUT -p tcp -j ACCEPT\n-E two three\n"
            "-D OUTPUT -p tcp -j ACCEPT\n-A OUTPUT -j ACCEPT\n-D OUTPUT 1\n-F one\n-X one\n"
            "-C INPUT -j three\n-Z\nCOMMIT\n")
    with both() as b:
        b.same("iptables-restore", input=dump)
        b.same_rules()
        b.same("iptables-restore", "-n", "-v", input=dump.replace("-N one\n", "-N one\n-N x\n"))
        b.same_rules()


@pytest.mark.parametrize("line", ["-h", "-V", "-6 -A INPUT -j DROP", "-4 -A INPUT -j DROP",
                                  "-A INPUT -j ACCEPT -h", "-L -V", "--help"])
def test_special_options_in_lines(line: str) -> None:
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        b.same("iptables-restore", input=f"*filter\n-A INPUT -j DROP\n{line}\nCOMMIT\n")
        # help and version end the run: nothing is committed (in neither tool)
        b.same_rules()


@pytest.mark.parametrize("dump", [
    # a chain named by a ":" line is never taken for an extension (no warning)
    "*filter\n:REJECT - [0:0]\n-A INPUT -j REJECT\nCOMMIT\n",
    "*filter\n:LOG - [0:0]\n:SNAT - [0:0]\n-A INPUT -j LOG\n-A INPUT -j SNAT\nCOMMIT\n",
    # one made by -N is, with iptables' warning
    "*filter\n-N REJECT\n-A INPUT -j REJECT\nCOMMIT\n",
    "*filter\n:-odd - [0:0]\n:a\\b - [0:0]\n-A INPUT -j -odd\n-A INPUT -j a\\b\nCOMMIT\n",
])
def test_chains_named_in_headers(dump: str) -> None:
    with both() as b:
        b.same("iptables-restore", input=dump)
        b.same_rules()


@pytest.mark.parametrize("dump", [
    "*filter\n-A INPUT -j ACCEPT\n-D INPUT -j DROP\nCOMMIT\n",
    "*filter\n-A INPUT -s 1.1.1.1,2.2.2.2 -j ACCEPT\n-D INPUT -s 1.1.1.1,3.3.3.3 -j ACCEPT\n"
    "COMMIT\n",
    "*filter\n-N x\n-A x -j ACCEPT\n-A INPUT -j x\n-X\nCOMMIT\n",
])
def test_verbose_output_of_a_failing_line(dump: str) -> None:
    with both() as b:
        b.same("iptables-restore", "-v", input=dump)


def test_two_blocks_and_table_option() -> None:
    first = "*filter\n:A - [0:0]\n-A INPUT -j A\nCOMMIT\n"
    second = "*filter\n:B - [0:0]\n-A OUTPUT -j B\nCOMMIT\n"
    with both() as b:
        b.same("iptables-restore", input=first + second)
        b.same_rules()
        b.same("iptables-restore", "-n", input=first + second)
        b.same_rules()
        b.same("iptables-restore", "-T", "filter", input=first)
        b.same_rules()
        # a block of another table is skipped with its lines, however broken
        b.same("iptables-restore", "--table=filter",
               input="*nat\n:BAD\nnonsense\nCOMMIT\n" + second)
        b.same_rules()


def test_test_option_changes_nothing() -> None:
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        before = b.same_rules()
        b.same("iptables-restore", "--test", input="*filter\n-A INPUT -j DROP\nCOMMIT\n")
        assert b.same_rules() == before
        # -t does not commit, so the kernel's checks do not run either
        b.same("iptables-restore", "-t",
               input="*filter\n-A INPUT -m tcp --dport 1 -j DROP\nCOMMIT\n")
        assert b.same_rules() == before


def test_input_from_file(tmp_path: Path) -> None:
    path = tmp_path / "dump.rules"
    path.write_text(BASE)
    with both() as b:
        b.same("iptables-restore", "-c", str(path))
        b.same_rules()
        b.same("iptables-restore", str(tmp_path / "missing.rules"))
        b.same("iptables-restore", str(path), str(path))


# -- malformed input: same message and status, nothing changed ------------------

MALFORMED = {
    "missing-commit": "*filter\n-A INPUT -j DROP\n",
    "commit-without-newline": "*filter\n-A INPUT -j DROP\nCOMMIT",
    "commit-with-space": "*filter\nCOMMIT \n",
    "unknown-table": "*foo\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
    "empty-table-name": "*\nCOMMIT\n",
    "commit-outside-table": "COMMIT\n",
    "chain-outside-table": ":FOO - [0:0]\n",
    "rule-outside-table": "-A INPUT -j ACCEPT\n*filter\nCOMMIT\n",
    "bad-policy": "*filter\n:INPUT BLAH [0:0]\nCOMMIT\n",
    "user-chain-policy": "*filter\n:FOO ACCEPT [0:0]\nCOMMIT\n",
    "missing-policy": "*filter\n:INPUT\nCOMMIT\n",
    "empty-chain-name": "*filter\n:\nCOMMIT\n",
    "long-chain-name": "*filter\n:" + "c" * 29 + " - [0:0]\nCOMMIT\n",
    "duplicate-chain": "*filter\n:A - [0:0]\n:A - [0:0]\nCOMMIT\n",
    "unknown-option": "*filter\n-A INPUT --foo 1 -j ACCEPT\nCOMMIT\n",
    "bad-argument": "*filter\nfoo bar\nCOMMIT\n",
    "table-option-in-line": "*filter\n-t filter -A INPUT -j ACCEPT\nCOMMIT\n",
    "wait-option-in-line": "*filter\n-w -A INPUT -j ACCEPT\nCOMMIT\n",
    "no-such-chain": "*filter\n-A NOPE -j ACCEPT\nCOMMIT\n",
    "delete-missing-rule": "*filter\n-D INPUT -j ACCEPT\nCOMMIT\n",
    "unknown-target": "*filter\n-A INPUT -j NOPE\nCOMMIT\n",
    "unknown-match": "*filter\n-A INPUT -m nope -j ACCEPT\nCOMMIT\n",
    "loop-at-commit": "*filter\n:A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n-A A -j B\n"
                      "-A B -j A\nCOMMIT\n",
    "kernel-rejects-at-commit": "*filter\n-A INPUT -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
    "counters-need-bracket": "*filter\n[1:2 -A INPUT -j ACCEPT\nCOMMIT\n",
    "counters-need-colon": "*filter\n[12] -A INPUT -j ACCEPT\nCOMMIT\n",
    "counters-not-numeric": "*filter\n[a:b] -A INPUT -j ACCEPT\nCOMMIT\n",
    "quoted-option": '*filter\n-A INPUT "--jump ACCEPT"\nCOMMIT\n',
    "quoted-chain-line": '*filter\n:"odd" - [0:0]\n-A INPUT -j "odd"\nCOMMIT\n',
    "unterminated-quote": '*filter\n-A INPUT -j "ACCEPT\nCOMMIT\n',
    "no-command": "*filter\n-p tcp\nCOMMIT\n",
    "verdict-named-chain": "*filter\n:RETURN - [0:0]\nCOMMIT\n",
    "crlf-line-ends": "*filter\r\n:INPUT ACCEPT [0:0]\r\nCOMMIT\r\n",
    "crlf-commit": "*filter\nCOMMIT\r\n",
    "announced-chain-with-target-options": "*filter\n:REJECT - [0:0]\n"
                                           "-A INPUT -j REJECT --reject-with tcp-reset\nCOMMIT\n",
    "table-inside-table": "*filter\n*filter\nCOMMIT\n",
    "comment-then-header-in-block": "*filter\n# x\n*nat junk\nCOMMIT\n",
    "second-block-fails": "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*filter\n-A NOPE\nCOMMIT\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input(name: str) -> None:
    text = MALFORMED[name]
    options = ("-c",) if name.startswith("counters") else ()
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        before = b.ours_save()
        real, ours = b.run("iptables-restore", *options, input=text)
        assert real[0] != 0
        assert ours == real
        # a failed restore leaves our rule set and counters as they were
        assert b.ours_save() == before


def test_invalid_policy_counters() -> None:
    with both() as b:
        for text in ("*filter\n:INPUT ACCEPT\nCOMMIT\n", "*filter\n:INPUT ACCEPT [1:x]\nCOMMIT\n",
                     "*filter\n:INPUT ACCEPT 1:2\nCOMMIT\n"):
            real = b.same("iptables-restore", "-c", input=text)
            assert real[0] == 2
        b.same_rules()


def test_unsupported_table_is_refused() -> None:
    with namespace("bpfsn") as ns:
        ns.run(bpf_command("iptables-restore", "-c"), input=BASE)
        before = ns.run(bpf_command("iptables-save", "-c")).stdout
        r = ns.run(bpf_command("iptables-restore"), input="*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
        assert r.returncode == 2
        assert "table `nat' is not supported by bpf-iptables" in r.stderr
        assert "Error occurred at line: 1" in r.stderr
        assert norm(ns.run(bpf_command("iptables-save", "-c")).stdout) == norm(before)
        s = ns.run(bpf_command("iptables-save", "-t", "nat"))
        assert s.returncode == 2 and "not supported" in s.stderr


# -- options of the two programs ----------------------------------------------

@pytest.mark.parametrize("args", [
    ("-h",), ("--help",), ("-V",), ("-b",), ("-x",), ("--foo",), ("--t",), ("--ver",),
    ("--counters=1",), ("-T",), ("a", "b"), ("-w", "abc"), ("--wait=x",), ("-W", "5000000"),
    ("-W",), ("-W", "5"), ("-w", "1", "-W", "5"), ("-w", "-W", "7"), ("--wait-interval=3",),
    ("-M", "/bin/false"), ("-cvn",),
])
def test_restore_options(args: tuple[str, ...]) -> None:
    with both() as b:
        b.same("iptables-restore", *args, input="")


@pytest.mark.parametrize("args", [
    (), ("-c",), ("-t", "filter"), ("-t", "foo"), ("-x",), ("--t",), ("-t",), ("a",),
    ("-V",), ("-b", "-c"), ("-M", "x", "-c"), ("--counters", "--table=filter"), ("-f", "/nonexistent/x"),
    ("-d",), ("-t", "filter", "-d"), ("--dump",),
])
def test_save_options(args: tuple[str, ...]) -> None:
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        b.same("iptables-save", *args)


def test_save_to_file(tmp_path: Path) -> None:
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        real_file, ours_file = tmp_path / "real", tmp_path / "ours"
        r = b.real.run([REAL["iptables-save"], "-c", "-f", str(real_file)])
        o = b.ours.run(bpf_command("iptables-save", "-c", "-f", str(ours_file)))
        assert (o.returncode, o.stdout, o.stderr) == (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert norm(ours_file.read_text()) == norm(real_file.read_text())


def test_save_of_fresh_namespace() -> None:
    with both() as b:
        b.same("iptables-save")
        b.same("iptables-save", "-t", "filter")
        b.same("iptables-save")  # the table now exists


# -- random dumps ----------------------------------------------------------------

_LINES = [
    "*filter", "*filter x", "*", "*bogus", "COMMIT", "COMMIT ", "", "# note", ":INPUT DROP [1:2]",
    ":FORWARD ACCEPT", ":U - [0:0]", ":V - [3:4]", ":U", ":OUTPUT BAD [0:0]", "-A INPUT -j U",
    "[5:6] -A U -p tcp --dport 80 -j ACCEPT", "-A V -j U", "-A U -j V", "-N W", "-X W",
    "-F", "-Z", "-D INPUT 1", "-I INPUT 2 -j DROP", "-A INPUT -s 10.0.0.0/8,1.2.3.4 -j RETURN",
    "[1:2 -A INPUT", "[7:8]", "-A INPUT \"-p\" tcp", "-P INPUT ACCEPT", "-A NOPE", "junk",
    "-A INPUT -m tcp --dport 1", "-E V V2", "-X U",
]


@settings(max_examples=int(os.environ.get("RESTORE_EXAMPLES", "25")), deadline=None)
@given(lines=st.lists(st.sampled_from(_LINES), max_size=12),
       options=st.sampled_from([(), ("-c",), ("-n",), ("-n", "-c"), ("-v",), ("-t",)]))
def test_random_dumps(lines: list[str], options: tuple[str, ...]) -> None:
    text = "".join(line + "\n" for line in lines)
    with both() as b:
        b.same("iptables-restore", "-c", input=BASE)
        before = b.ours_save()
        real, ours = b.run("iptables-restore", *options, input=text)
        assert ours == real, text
        if real[0] == 0:
            b.same_rules()
        else:
            assert b.ours_save() == before  # all or nothing (iptables commits per table)
