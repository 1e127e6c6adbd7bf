"""The installed commands' C client (bpf_iptables/cli/client.c) against the
Python client (cli/client.py, ``python -m bpf_iptables.cli.<x>``).

The client is built from source into a directory of its own, beside a
``python`` that runs the interpreter of the tests (a script, not a link: a
link to the venv's python outside the venv would lose the venv's
packages), so its fallbacks run this worktree's code (PYTHONPATH).

Two namespaces get the same commands, one through the C client, one
through ``python -m``; their first rule attaches the data path (and starts
the command server), so the C client's first command is its no-server
fallback. Then: output and status byte for byte the same, served (the
server's note of the request holding the lock changed), the private
variable the C client hands its fallback never reaches the processes the
command started, and a server dying in a request gives what the Python
client gives, with each command applied once."""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest

from bpf_iptables.cli import build_client, client, entry
from tests.support.netns import Namespace, Result, namespace
from tests.test_datapath_server import Attached, undated
from tests.test_datapath_server import own_lock  # noqa: F401  (autouse: a lock file of its own)
from tests.test_datapath_traffic import datapath_command

TOOLS = {"iptables": "bpf-iptables", "iptables-save": "bpf-iptables-save",
         "iptables-restore": "bpf-iptables-restore"}
MODULES = {"iptables": "iptables", "iptables-save": "save", "iptables-restore": "restore"}
DIE_AT = "BPF_IPTABLES_SERVER_DIE_AT"
# the first rule attaches (tests/conftest.py makes "off" the default)
ATTACH = {"BPF_IPTABLES_DATAPATH": "on"}


@pytest.fixture(scope="module")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cclient")
    build_client.build(d)
    python = d / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    return d


class Side:
    """One namespace and how its commands are run: by the C client or by Python."""

    def __init__(self, ns: Namespace, bindir: Path | None):
        self.ns, self.bindir = ns, bindir
        self.attached: Attached | None = None

    def argv(self, tool: str, *args: str) -> list[str]:
        if self.bindir is not None:
            return [str(self.bindir / TOOLS[tool]), *args]
        return [sys.executable, "-m", f"bpf_iptables.cli.{MODULES[tool]}", *args]

    def cmd(self, tool: str, *args: str, input: str | None = None,
            env: dict | None = None) -> Result:
        return self.ns.run(self.argv(tool, *args), input=input, env=env)

    def from_file(self, tool: str, path: Path, *args: str, env: dict | None = None) -> Result:
        """stdin a file (seekable), as the shell's < gives it"""
        line = " ".join(self.argv(tool, *args))
        return self.ns.run(["sh", "-c", f"exec {line} < {path}"], env=env)


def same(c: Result, py: Result) -> tuple:
    """What must be byte-identical (save's time stamps aside)."""
    return (undated(c.stdout), c.stderr, c.returncode), (undated(py.stdout), py.stderr,
                                                        py.returncode)


def our_processes(ino: int | None) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def pair(bindir: Path) -> Iterator[tuple[Side, Side]]:
    """Two namespaces, attached by their first rule: (C client, Python)."""
    with namespace("bpft-cc") as c_ns, namespace("bpft-cc") as py_ns:
        sides = (Side(c_ns, bindir), Side(py_ns, None))
        try:
            for side in sides:
                side.ns.run(["ip", "link", "set", "lo", "up"])
            first = [s.cmd("iptables", "-A", "INPUT", "-s", "10.0.0.1", "-j", "DROP", env=ATTACH)
                     for s in sides]
            a, b = same(*first)
            assert a == b == (("", "", 0)), a
            for side in sides:
                side.attached = Attached(side.ns)
                side.attached.wait_server()
            yield sides
        finally:
            for side in sides:
                side.ns.run(datapath_command("detach"))


def test_constants_match_client_py() -> None:
    """client.c's #defines are client.py's values: the two cannot drift apart."""
    text = build_client.SOURCE.read_text()
    defines = {m[1]: m[2].strip() for m in re.finditer(r"^#define (\w+) (.+)$", text, re.M)}

    def strings(name: str) -> tuple[str, ...]:
        body = defines[name]
        assert re.fullmatch(r'"[^"]*"(\s*,\s*"[^"]*")*', body), (name, body)
        return tuple(re.findall(r'"([^"]*)"', body))

    assert b"\0" + strings("SOCKET_NAME")[0].encode() == client.SOCKET_NAME
    (run_dir,) = strings("RUN_DIR_ENV")
    assert client.socket_name({run_dir: "/x"}) == client.SOCKET_NAME + b":/x"
    assert client.socket_name({run_dir: ""}) == client.SOCKET_NAME
    assert int(defines["READY_WAIT_MS"]) == round(client.READY_WAIT * 1000)
    assert strings("ENV_PREFIXES") == client.ENV_PREFIXES
    assert strings("CLIENT_ENV") == (client.CLIENT_ENV,)
    assert strings("CLIENT_LOCAL") == (client.LOCAL,)
    assert strings("ENTRY_MODULE") == (client.ENTRY_MODULE,) == (entry.__name__,)
    assert strings("SERVER_ENV") == (client.SERVER_ENV,)
    assert strings("SERVER_OFF") == (client.SERVER_OFF,)
    shift = re.match(r"\(1 << (\d+)\)", defines["MAX_MESSAGE"])
    assert shift is not None and 1 << int(shift[1]) == client.MAX_MESSAGE
    progs = [strings(name) for name in ("PROG_IPTABLES", "PROG_SAVE", "PROG_RESTORE")]
    assert tuple(installed for installed, _ in progs) == build_client.COMMANDS
    assert sorted(p for _, p in progs) == sorted(client.PROGS) == sorted(entry.ENTRIES)


def test_unknown_program_name_and_no_python(bindir: Path, tmp_path: Path) -> None:
    """(in a namespace of its own, as any run of our commands)"""
    other = tmp_path / "iptables"
    shutil.copy2(bindir / "bpf-iptables", other)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy2(bindir / "bpf-iptables", lone / "bpf-iptables")   # no python beside it
    with namespace("bpft-cc") as ns:
        r = ns.run([str(other), "-S"])
        assert r.returncode == 2 and r.stdout == ""
        assert "unknown program name 'iptables'" in r.stderr
        r = ns.run([str(lone / "bpf-iptables"), "-S"],
                   env={client.SERVER_ENV: client.SERVER_OFF})
        assert (r.returncode, r.stdout) == (1, "")
        assert f"cannot run {lone}/python: No such file or directory" in r.stderr


def test_private_variable_reaches_no_started_process(pair: tuple[Side, Side]) -> None:
    """The C client's first -A ran in Python (no server yet), attached the
    data path and started the watcher and the server: none of them has it."""
    c_side = pair[0]
    assert c_side.attached is not None
    pids = our_processes(c_side.attached.ino)
    assert c_side.attached.servers()[0] in pids
    for pid in pids:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        assert not [e for e in env if e.startswith(client.CLIENT_ENV.encode() + b"=")], pid


SETUP = ["-A INPUT -s 10.0.0.2 -p tcp --dport 22 -j ACCEPT", "-A OUTPUT -p icmp -j ACCEPT"]
# (tool, argv, stdin, served: the server took the lock for it)
COMMANDS: list[tuple[str, str, str | None, bool]] = [
    ("iptables", "-A INPUT -s 10.0.0.3 -p udp --dport 53 -j ACCEPT", None, True),
    ("iptables", "-I INPUT 1 -s 10.0.0.4 -j DROP", None, True),
    ("iptables", "-D INPUT -s 10.0.0.3 -p udp --dport 53 -j ACCEPT", None, True),
    ("iptables", "-D INPUT 2", None, True),
    ("iptables", "-S", None, True),
    ("iptables", "-L -v -n", None, True),
    ("iptables", "-C INPUT -s 10.9.9.9 -j DROP", None, True),   # missing: exit 1
    ("iptables", "-A INPUT --bogus", None, False),               # exit 2
    ("iptables", "-h", None, False),
    ("iptables", "--version", None, False),
    ("iptables-save", "", None, True),
    ("iptables-save", "-c", None, True),
    ("iptables-restore", "--noflush", "*filter\n-A INPUT -s 10.5.0.0/16 -j DROP\nCOMMIT\n", True),
    ("iptables-restore", "", "*filter\n-A INPUT -s 10.6.0.1 -j NOSUCH\nCOMMIT\n", False),
    ("iptables", "-S", None, True),
]


def test_served_output_equals_python(pair: tuple[Side, Side], tmp_path: Path) -> None:
    c_side, py_side = pair
    assert c_side.attached is not None
    for line in SETUP:
        assert same(*(s.cmd("iptables", *line.split()) for s in pair)) == \
            same(Result("", "", 0), Result("", "", 0)), line
    for tool, args, stdin, served in COMMANDS:
        before = c_side.attached.mark()
        got = c_side.cmd(tool, *args.split(), input=stdin)
        if served:
            assert c_side.attached.mark() not in ("", before), f"not served: {tool} {args}"
        want = py_side.cmd(tool, *args.split(), input=stdin)
        a, b = same(got, want)
        assert a == b, f"{tool} {args}"
    # restore from a file on stdin, served: the server reads the client's stdin
    rules = tmp_path / "file.rules"
    rules.write_text("*filter\n:INPUT DROP [0:0]\n-A INPUT -s 10.7.0.0/16 -j ACCEPT\n"
                     "-A INPUT -i lo -j ACCEPT\nCOMMIT\n")
    before = c_side.attached.mark()
    got = c_side.from_file("iptables-restore", rules)
    assert c_side.attached.mark() not in ("", before)
    a, b = same(got, py_side.from_file("iptables-restore", rules))
    assert a == b
    # bad input: an error, nothing changed
    bad = "*filter\n-A INPUT -s 10.8.0.1 -j DROP\n-A INPUT --bogus\nCOMMIT\n"
    results = [s.cmd("iptables-restore", input=bad) for s in pair]
    a, b = same(*results)
    assert a == b and a[2] != 0 and a[1]
    listings = [s.cmd("iptables", "-S") for s in pair]
    a, b = same(*listings)
    assert a == b and "10.8.0.1" not in a[0] and "-A INPUT -s 10.7.0.0/16 -j ACCEPT" in a[0]


def test_fallbacks_equal_python(pair: tuple[Side, Side], bindir: Path) -> None:
    c_side, py_side = pair
    assert c_side.attached is not None
    # BPF_IPTABLES_SERVER=off: in-process, not served
    off = {client.SERVER_ENV: client.SERVER_OFF}
    before = c_side.attached.mark()
    for args in ("-A INPUT -s 10.1.0.1 -j DROP", "-S INPUT", "-A INPUT --bogus"):
        results = [s.cmd("iptables", *args.split(), env=off) for s in pair]
        a, b = same(*results)
        assert a == b, args
    assert c_side.attached.mark() == before
    # a hung server (stopped) is not waited for past READY_WAIT: in-process
    marks = [side.attached.mark() for side in pair if side.attached]
    servers = [side.attached.servers()[0] for side in pair if side.attached]
    for pid in servers:
        os.kill(pid, signal.SIGSTOP)
    try:
        results = [s.cmd("iptables", "-A", "INPUT", "-s", "10.1.0.2", "-j", "DROP") for s in pair]
        a, b = same(*results)
        assert a == b == ("", "", 0)
        assert [side.attached.mark() for side in pair if side.attached] == marks
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
    # namespaces without a data path (so without a server; conftest.py's
    # BPF_IPTABLES_DATAPATH=off): in-process
    with namespace("bpft-cc") as c_ns, namespace("bpft-cc") as py_ns:
        plain = (Side(c_ns, bindir), Side(py_ns, None))
        for tool, args, stdin, _ in COMMANDS:
            results = [s.cmd(tool, *args.split(), input=stdin) for s in plain]
            a, b = same(*results)
            assert a == b, f"unattached: {tool} {args}"


def _masked(r: Result) -> tuple:
    return r.returncode, re.sub(r"request [0-9]+\.[0-9a-f]+", "request N", r.stderr)


def test_server_dying_in_a_request_as_python(pair: tuple[Side, Side], tmp_path: Path) -> None:
    """DIE_AT=begin: dies before taking the lock (the client runs it);
    done: dies once it was applied (the client says so, does not rerun it)."""
    c_side, py_side = pair
    rules = tmp_path / "die.rules"
    rules.write_text("*filter\n-A INPUT -s 10.2.0.3 -j DROP\nCOMMIT\n")
    cases = [
        (lambda s: s.cmd("iptables", "-A", "INPUT", "-s", "10.2.0.1", "-j", "DROP",
                         env={DIE_AT: "begin"}), (0, "")),
        (lambda s: s.cmd("iptables", "-A", "INPUT", "-s", "10.2.0.2", "-j", "DROP",
                         env={DIE_AT: "done"}), None),
        (lambda s: s.from_file("iptables-restore", rules, "-n", env={DIE_AT: "begin"}), (0, "")),
        (lambda s: s.cmd("iptables-restore", "-n", input="*filter\n-A INPUT -s 10.2.0.5 -j DROP"
                         "\nCOMMIT\n", env={DIE_AT: "begin"}), None),
    ]
    for run, expected in cases:
        outcomes = [_masked(run(side)) for side in pair]
        for side in pair:   # the watchers restart them meanwhile
            assert side.attached is not None
            side.attached.wait_server()
        assert outcomes[0] == outcomes[1]
        if expected is not None:
            assert outcomes[0] == expected
        elif run is cases[1][0]:
            assert outcomes[0][0] == 0 and "ended after applying the command" in outcomes[0][1]
    assert outcomes[0][0] == 1 and "nothing was changed" in outcomes[0][1]
    listings = [s.cmd("iptables", "-S", "INPUT").stdout for s in pair]
    assert listings[0] == listings[1]
    for addr in ("10.2.0.1", "10.2.0.2", "10.2.0.3"):
        assert listings[0].count(f"-A INPUT -s {addr}/32 -j DROP\n") == 1, listings[0]
    assert "10.2.0.5" not in listings[0]
