"""The lark grammars of the restore format (grammar/restore.lark, line
classification) and of rule-line argv splitting (grammar/cmdline.lark,
add_param_to_argv), plus the fgets() emulation around them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from bpf_iptables.restore_grammar import parse_lines, parse_lines_lark, split_words, word_parser
from bpf_iptables.restore_input import BUFFER_SIZE, read_statements
from tests.support.netns import bpf_command, namespace
from tests.support.shared import ruleset


def kinds(text: str) -> list[tuple[str, int]]:
    return [(s.kind, s.line) for s in parse_lines(text)]


# -- restore.lark ---------------------------------------------------------------

def test_line_kinds_and_numbers() -> None:
    text = ("# c\n\n*filter\n:INPUT ACCEPT [1:2]\n[3:4] -A INPUT -j ACCEPT\n"
            "-N x\n\n\nCOMMIT\n")
    assert kinds(text) == [("comment", 1), ("table", 3), ("chain", 4), ("rule", 5),
                           ("rule", 6), ("commit", 9)]


def test_header_fields_are_strtok_words() -> None:
    table, chain, user = parse_lines("*  filter\textra \n:INPUT\tDROP  [5:6] junk\n:U - [0:0]\n")
    assert table.fields == ("filter", "extra")
    assert chain.fields == ("INPUT", "DROP", "[5:6]", "junk")
    assert user.fields == ("U", "-", "[0:0]")
    assert parse_lines("*\n")[0].fields == ()
    assert parse_lines(": \t\n")[0].fields == ()


@pytest.mark.parametrize("text,kind", [
    ("COMMIT\n", "commit"),
    ("COMMIT", "rule"),          # no newline: strcmp(buffer, "COMMIT\n") fails
    ("COMMIT \n", "rule"),
    ("COMMITTED\n", "rule"),
    (" COMMIT\n", "rule"),
    ("#COMMIT\n", "comment"),
    ("*filter", "table"),
    (":X", "chain"),
    ("[1:2]\n", "rule"),
    ("[1:2\n", "rule"),
    ("  \n", "rule"),
])
def test_line_classification(text: str, kind: str) -> None:
    (statement,) = parse_lines(text)
    assert statement.kind == kind
    assert statement.newline == text.endswith("\n")
    assert statement.text == text


def test_rule_counters_prefix() -> None:
    rule = parse_lines("[10:200] -A INPUT -j DROP\n")[0]
    assert (rule.counters, rule.command) == ("[10:200]", " -A INPUT -j DROP\n")
    odd = parse_lines("[1] -A x:y]\n")[0]
    assert (odd.counters, odd.command) == ("[1]", " -A x:y]\n")
    plain = parse_lines("-A INPUT [1:2]")[0]
    assert (plain.counters, plain.command) == (None, "-A INPUT [1:2]")


def test_empty_input() -> None:
    assert parse_lines("") == []
    assert parse_lines("\n\n") == []


# -- cmdline.lark -----------------------------------------------------------------

@pytest.mark.parametrize("text,words", [
    ("-A INPUT -j ACCEPT\n", ["-A", "INPUT", "-j", "ACCEPT"]),
    ("  -A\t\tINPUT  \n", ["-A", "INPUT"]),
    ('"a b"', ["a b"]),
    ('ab"c d"e', ["abc d", "e"]),          # the closing quote ends the word
    ('"x""y"', ["x", "y"]),
    ('""', [""]),                           # an empty quoted word is a word
    ('a "" b', ["a", "", "b"]),
    ('"a\\"b"', ['a"b']),
    ('"a\\\\b"', ["a\\b"]),
    ('"a\\nb"', ["anb"]),
    ("a\\ b", ["a\\", "b"]),               # no escapes outside quotes
    ('"open end\n', ["open end\n"]),       # the newline is kept inside quotes
    ('"open', ["open"]),
    ('a "', ["a"]),                         # an open quote that collected nothing
    ('a "\\', ["a"]),
    ('"tab\there"', ["tab\there"]),
    ("a\rb\x0bc", ["a\rb\x0bc"]),           # only space, tab and newline separate
])
def test_split_words(text: str, words: list[str]) -> None:
    assert split_words(text) == words
    assert word_parser().parse(text) == words


def add_param_to_argv(text: str) -> list[str]:
    """An independent transcription of xshared.c's loop, for comparison."""
    out: list[str] = []
    param: list[str] = []
    quote_open = escaped = False
    for ch in text:
        if quote_open:
            if escaped:
                param.append(ch)
                escaped = False
                continue
            if ch == "\\":
                escaped = True
                continue
            if ch == '"':
                quote_open = False
            else:
                param.append(ch)
                continue
        elif ch == '"':
            quote_open = True
            continue
        if ch == '"':
            pass
        elif ch in " \t\n":
            if not param:
                continue
        else:
            param.append(ch)
            continue
        out.append("".join(param))
        param = []
    if param:
        out.append("".join(param))
    return out


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=' \t\n"\\ab-\r', max_size=30))
def test_grammar_matches_add_param_to_argv(text: str) -> None:
    assert word_parser().parse(text) == add_param_to_argv(text)
    assert split_words(text) == add_param_to_argv(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \t\nab\\-!'\x0b", max_size=30))
def test_fast_path_equals_grammar(text: str) -> None:
    """Without a double quote split_words skips lark; it must agree."""
    assert split_words(text) == word_parser().parse(text)


@pytest.mark.parametrize("tail", ['"x y"', 'a"b c"d', '"a\\"b"', '"\\\\x"', 'e"th"1 z', '"" q',
                                  '"tab\there"', '"open'])
def test_words_as_real_iptables_restore_sees_them(tail: str) -> None:
    """iptables-restore quotes the first stray word in "Bad argument `...'"."""
    dump = f"*filter\n-A INPUT -j ACCEPT {tail}\nCOMMIT\n"
    with namespace("bpfgr") as ns:
        real = ns.run(["iptables-legacy-restore"], input=dump)
        ours = ns.run(bpf_command("iptables-restore"), input=dump)
    first = split_words(tail + "\n")[0]
    assert f"Bad argument `{first}'" in real.stderr
    assert real.returncode == ours.returncode == 2
    assert ours.stderr.replace("bpf-iptables-restore", "iptables-restore") == real.stderr


# -- fgets() emulation ---------------------------------------------------------

def test_long_lines_are_read_in_buffer_sized_pieces() -> None:
    limit = BUFFER_SIZE - 1
    data = b"*filter\n#" + b"x" * (limit + 5) + b"\n-A INPUT\nCOMMIT\n"
    statements = read_statements(data)
    assert [(s.kind, s.line) for s in statements] == [
        ("table", 1), ("comment", 2), ("rule", 3), ("rule", 4), ("commit", 5)]
    assert statements[2].text == "xxxxxx\n"


def test_nul_ends_a_line() -> None:
    statements = read_statements(b"*filter\n-A INPUT\x00 junk\n\x00\nCOMMIT\n")
    assert [(s.kind, s.line, s.text) for s in statements] == [
        ("table", 1, "*filter\n"), ("rule", 2, "-A INPUT"), ("rule", 3, ""),
        ("commit", 4, "COMMIT\n")]


@pytest.mark.parametrize("dump", [
    "*filter\n#" + "x" * 10300 + "\n-A NOPE\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT -m comment --comment " + "y" * 10300 + "\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\x00 garbage\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\nCOMMIT\x00\n",
    "*filter\n-A INPUT -m comment --comment " + "z" * 1023 + " -j ACCEPT\nCOMMIT\n",
    "*filter\n-A INPUT -m comment --comment " + "z" * 1024 + " -j ACCEPT\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT" + " -v" * 248 + "\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT" + " -v" * 249 + "\nCOMMIT\n",
])
def test_fgets_quirks_against_real_restore(dump: str) -> None:
    with namespace("bpfgf") as ns:
        real = ns.run(["iptables-legacy-restore"], input=dump)
        real_rules = ns.run(["iptables-legacy", "-S"]).stdout
    with namespace("bpfgf") as ns:
        ours = ns.run(bpf_command("iptables-restore"), input=dump)
        our_rules = ns.run(bpf_command("iptables", "-S")).stdout

    def norm(text: str) -> str:
        return text.replace("bpf-iptables-restore v0.1.0 (bpf)",
                            "iptables-restore v1.8.9 (legacy)").replace(
            "bpf-iptables-restore", "iptables-restore")

    assert (ours.returncode, norm(ours.stderr), ours.stdout) == (
        real.returncode, real.stderr, real.stdout)
    assert our_rules == real_rules


# -- the loop that classifies lines without lark -----------------------------------

@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(["COMMIT", "COMMIT ", "*", "* filter", ":", ":X\tY [1:2]", "#",
                                 "# c", "[", "[1:2]", "[1:2] -A X", "[]", "]", "-A X [", " ",
                                 "\t", "", "x", "\r", "[a]b]c", "C"]),
                max_size=8),
       st.booleans())
def test_line_loop_equals_restore_grammar(lines: list[str], final_newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if final_newline else "")
    assert parse_lines(text) == parse_lines_lark(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="COMIT*:#[]-A \t\nx", max_size=40))
def test_line_loop_equals_restore_grammar_on_any_text(text: str) -> None:
    assert parse_lines(text) == parse_lines_lark(text)


def test_line_loop_on_a_classbench_dump() -> None:
    text = ruleset("classbench-fw1-1k.rules").read_text()
    assert parse_lines(text) == parse_lines_lark(text)
