"""Tests of the compatibility harness itself: the .t parser, the selection,
and that the strict checks do fail when bpf-iptables misbehaves.

The per-line results live in test_iptables_t.py; these make sure a green
run there means something."""
from __future__ import annotations

from pathlib import Path

import pytest

from compat_tests import selection
from compat_tests.checks import FileSession
from compat_tests.selection import Expect, named_extensions, select_file
from compat_tests.tfile import TFileError, parse_file

SAMPLE = """\
# comment
:INPUT,FORWARD
-p tcp -m tcp --dport 1;=;OK
-j LOG --log-prefix "a b: ";=;OK
-p tcp -m tcp --sport 65536;;FAIL
@iptables -N foo
%nfct add x
-m mark --mark 1;=;OK;NFT
-m mark --mark 2;=;FAIL;NFT;NOMATCH
-m mark --mark 3;=;FAIL;LEGACY
*nat
:PREROUTING
-j ACCEPT;=;OK
"""


def write(tmp_path: Path, text: str, name: str = "libxt_x.t") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_fields_chains_and_setup(tmp_path: Path) -> None:
    tfile = parse_file(write(tmp_path, SAMPLE))
    first, log, fail = tfile.lines[:3]
    assert (first.lineno, first.chains, first.table) == (3, ("INPUT", "FORWARD"), None)
    assert first.expected_save_line("INPUT") == "-A INPUT -p tcp -m tcp --dport 1"
    assert log.rule_argv == ["-j", "LOG", "--log-prefix", "a b: "]
    assert log.expected_save_line("FORWARD") == '-A FORWARD -j LOG --log-prefix "a b: "'
    assert fail.result == "FAIL" and fail.setup == ()
    assert [c.command for c in tfile.lines[3].setup] == ["iptables -N foo", "nfct add x"]
    assert tfile.lines[3].setup[0].is_iptables and not tfile.lines[3].setup[1].is_iptables
    nat = tfile.lines[-1]
    assert (nat.table_name, nat.chains) == ("nat", ("PREROUTING",))


def test_legacy_result_follows_variant_res(tmp_path: Path) -> None:
    lines = parse_file(write(tmp_path, SAMPLE)).lines
    by_rule = {l.rule: l.legacy_result() for l in lines}
    assert by_rule["-m mark --mark 1"] == "FAIL"      # OK for NFT: inverse
    assert by_rule["-m mark --mark 2"] == "NOMATCH"   # NFT-scoped, ALT given
    assert by_rule["-m mark --mark 3"] == "FAIL"      # LEGACY-scoped: as written


def test_missing_chain_and_bad_result_are_errors(tmp_path: Path) -> None:
    with pytest.raises(TFileError, match="missing chain"):
        parse_file(write(tmp_path, "-j ACCEPT;=;OK\n"))
    with pytest.raises(TFileError, match="unknown result"):
        parse_file(write(tmp_path, ":INPUT\n-j ACCEPT;=;MAYBE\n"))


def test_selection_excludes_other_tables_and_refuses_foreign_extensions(tmp_path: Path) -> None:
    text = ":INPUT\n-m mark --mark 1 -j MARK --set-mark 2;=;OK\n-j MARK;;FAIL\n*mangle\n:INPUT\n-j ACCEPT;=;OK\n"
    chosen, dropped = select_file(parse_file(write(tmp_path, text)))
    assert [(s.line.lineno, s.expect, s.foreign) for s in chosen] == [
        (2, Expect.REFUSED, ("MARK",)), (3, Expect.FAIL, ("MARK",))]
    assert [d.what for d in dropped] == ["libxt_x.t:6"]


def test_named_extensions_spellings() -> None:
    argv = ["-mtcp", "--match=udp", "-m", "mark", "-j", "LOG", "--goto=chain", "-gX"]
    assert named_extensions(argv) == (["tcp", "udp", "mark"], ["LOG", "chain", "X"])


def test_tests_dir_env_override_and_loud_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(selection.TESTS_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(selection.TestsDirMissing, match="does not exist"):
        selection.tests_dir()
    monkeypatch.setenv(selection.TESTS_DIR_ENV, str(tmp_path))
    with pytest.raises(selection.TestsDirMissing, match="lacks the in-scope test files"):
        selection.tests_dir()


def test_default_tests_dir_is_beside_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(selection.TESTS_DIR_ENV, raising=False)
    assert selection.tests_dir() == selection.REPO.parent / "shared" / "iptables-tests"


def test_every_in_scope_file_contributes_lines() -> None:
    chosen = selection.select()
    assert set(chosen.files()) == set(selection.IN_SCOPE_FILES)
    assert all(s.line.table_name == "filter" for s in chosen.lines)


# -- the checks can fail ----------------------------------------------------

def _one(tmp_path: Path, text: str):
    chosen, _ = select_file(parse_file(write(tmp_path, text, "libxt_tcp.t")))
    return chosen


@pytest.fixture(scope="module")
def session():
    s = FileSession("harness")
    yield s
    s.close()


def test_wrong_save_text_is_caught(session: FileSession, tmp_path: Path) -> None:
    (line,) = _one(tmp_path, ":INPUT\n-p tcp -m tcp --sport 1024:;=;OK\n")
    outcome = session.check(line)
    assert not outcome.passed and "-S printed" in outcome.failures[0]


def test_fail_line_the_oracle_accepts_is_not_a_pass(session: FileSession, tmp_path: Path) -> None:
    (line,) = _one(tmp_path, ":INPUT\n-p tcp -m tcp --dport 1;;FAIL\n")
    outcome = session.check(line)
    assert not outcome.passed and "iptables-legacy accepts" in outcome.failures[0]


def test_fail_line_exit_code_comes_from_the_oracle(session: FileSession, tmp_path: Path) -> None:
    # iptables-legacy exits 1 here (the kernel refuses the rule), not 2.
    (line,) = _one(tmp_path, ":INPUT\n-m addrtype --src-type LOCAL --limit-iface-out;;FAIL\n")
    answer = session.oracle.append(line.line, "INPUT", ["-A", "INPUT", *line.line.rule_argv])
    assert answer.returncode == 1
    assert session.check(line).passed


def test_nomatch_line_printed_canonically_passes(session: FileSession, tmp_path: Path) -> None:
    (line,) = _one(tmp_path, ":INPUT\n-p tcp -m tcp --sport 1024:;=;NOMATCH\n")
    assert session.check(line).passed


def test_foreign_extension_must_be_refused(session: FileSession, tmp_path: Path) -> None:
    (line,) = _one(tmp_path, ":OUTPUT\n-m owner --uid-owner 0;=;OK\n")
    assert line.expect is Expect.REFUSED
    outcome = session.check(line)
    assert outcome.passed, outcome.failures


def test_save_fallback_to_list_rules(tmp_path: Path) -> None:
    s = FileSession("harness-fallback", use_save=False)
    try:
        (line,) = _one(tmp_path, ":INPUT\n-p tcp -m tcp --dport 22;=;OK\n")
        assert s.check(line).passed
    finally:
        s.close()


def test_accepting_a_rule_that_must_be_refused_is_caught(session: FileSession, tmp_path: Path) -> None:
    (line,) = _one(tmp_path, ":INPUT\n-p tcp -m tcp --dport 7;=;OK\n")
    pretend = selection.SelectedLine(line.line, Expect.REFUSED, ("tcp",))
    outcome = session.check(pretend)
    assert not outcome.passed and "not supported" in outcome.failures[0]


def test_restore_batch_follows_upstream_chain_order(tmp_path: Path) -> None:
    from compat_tests.checks import restore_batch
    lines = _one(tmp_path, ":OUTPUT,INPUT\n-p udp -m udp --dport 1;=;OK\n:FORWARD\n-j LOG --log-prefix \"x \";=;OK\n")
    data, expected = restore_batch(lines)
    assert data.splitlines() == ["*filter", "-A INPUT -p udp -m udp --dport 1",
                                 '-A FORWARD -j LOG --log-prefix "x "',
                                 "-A OUTPUT -p udp -m udp --dport 1", "COMMIT"]
    assert expected == [l for l in data.splitlines()[1:-1]]


def test_restore_with_wrong_save_text_is_caught(session: FileSession, tmp_path: Path) -> None:
    from compat_tests.checks import check_restore
    lines = _one(tmp_path, ":INPUT\n-p tcp -m tcp --dport 5;=;OK\n-p tcp -m tcp --sport 9:;=;OK\n")
    failures = check_restore(session, lines)
    assert failures and "-A INPUT -p tcp -m tcp --sport 9:" in failures[0]


def test_forkserver_wait_kills_a_stuck_child() -> None:
    import os
    import time
    from compat_tests.forkserver import _wait
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    started = time.monotonic()
    assert _wait(pid, 0.2) is None
    assert time.monotonic() - started < 5
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    status = _wait(pid, 10)
    assert status is not None and os.waitstatus_to_exitcode(status) == 3
