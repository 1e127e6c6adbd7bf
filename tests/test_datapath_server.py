"""The command server of an attached namespace (bpf_iptables/datapath/server.py,
cli/client.py): commands it runs give what they give in-process (stdout,
stderr, exit status), the client imports nothing heavy, a dead server makes
commands run in-process and is restarted by the watcher, a request the
server died in is never applied twice, and the server ends with the
attachment and with the namespace.

Two namespaces get the same commands: one through its server, one with
BPF_IPTABLES_SERVER=off (in-process, as before the server). A command went
through the server when the server's note of the request holding the lock
(``server.request`` in the state directory) changed.

This module takes a lock file of its own ($XTABLES_LOCKFILE), as the
watcher's tests do, and becomes a child subreaper so that the daemons it
starts can be reaped here."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.netns import Namespace, Result, bpf_command, namespace
from tests.test_datapath_traffic import datapath_command, ensure_bpffs

PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
SERVER_MODULE = "bpf_iptables.datapath.server"
OFF = {"BPF_IPTABLES_SERVER": "off"}


@pytest.fixture(scope="module", autouse=True)
def own_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ensure_bpffs()
    old = os.environ.get("XTABLES_LOCKFILE")
    os.environ["XTABLES_LOCKFILE"] = str(tmp_path_factory.mktemp("lock") / "xtables.lock")
    assert _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if old is None:
            del os.environ["XTABLES_LOCKFILE"]
        else:
            os.environ["XTABLES_LOCKFILE"] = old
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        while True:   # daemons reparented to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def wait_for(what: str | Callable[[], str], cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, \
            f"not within {timeout} s: {what if isinstance(what, str) else what()}"
        time.sleep(0.05)


def _netns_ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class Attached:
    """An attached namespace seen from outside: its state directory and server."""

    def __init__(self, ns: Namespace):
        self.ns = ns
        self.ino = _netns_ino(f"/run/netns/{ns.name}")
        out = ns.run([sys.executable, "-c",
                      "from bpf_iptables import state; print(state.namespace_dir())"])
        self.dir = Path(out.stdout.strip())

    def cmd(self, *args: str, input: str | None = None, env: dict | None = None,
            tool: str = "iptables") -> Result:
        return self.ns.run(bpf_command(tool, *args), input=input, env=env)

    def mark(self) -> str:
        try:
            return (self.dir / "server.request").read_text()
        except FileNotFoundError:
            return ""

    def servers(self) -> list[int]:
        """Server processes in this namespace."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if SERVER_MODULE.encode() in argv and stat[stat.rindex(")") + 2] not in "ZX" \
                    and _netns_ino(f"/proc/{pid}/ns/net") == self.ino:
                out.append(int(pid))
        return out

    def served(self, *args: str, **kw) -> Result:
        """Run a command; assert the server ran it."""
        before = self.mark()
        r = self.cmd(*args, **kw)
        assert self.mark() not in ("", before), f"not served: {args}"
        return r

    def log(self) -> str:
        try:
            return (self.dir / "watch.log").read_text()[-2000:]
        except OSError:
            return ""

    def wait_server(self) -> int:
        wait_for(lambda: f"one command server (have {self.servers()}); watch.log: {self.log()}",
                 lambda: len(self.servers()) == 1)
        # listening: a served command notes itself
        pid = self.servers()[0]
        wait_for("the server answering", lambda: self.probe())
        return pid

    def probe(self) -> bool:
        before = self.mark()
        self.cmd("-S", "INPUT")
        return self.mark() not in ("", before)


@pytest.fixture()
def attached() -> Iterator[Attached]:
    with namespace("bpft-srv") as ns:
        ns.run(["ip", "link", "set", "lo", "up"])
        r = ns.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        try:
            yield Attached(ns)
        finally:
            ns.run(datapath_command("detach"))


SETUP = ["-A INPUT -s 10.0.0.1 -j DROP", "-A INPUT -p icmp -j ACCEPT",
         "-A OUTPUT -p icmp -j ACCEPT"]
# commands with output, errors, refusals, waits, counters
COMMANDS = [
    "-A INPUT -s 10.0.0.2 -p tcp --dport 22 -j ACCEPT",
    "-I INPUT 1 -s 10.0.0.3 -j DROP",
    "-C INPUT -s 10.0.0.1 -j DROP",
    "-C INPUT -s 10.0.0.9 -j DROP",
    "-D INPUT -s 10.9.9.9 -j DROP",
    "-A INPUT -j LOG --log-uid",   # refused (the data path has no socket credentials)
    "-A INPUT --bogus",
    "-L NOSUCH",
    "-N CH", "-A CH -s 10.1.0.0/16 -j RETURN", "-A INPUT -j CH",
    "-X CH",
    "-L -n -v -x",
    "-w 1 -S",
    "-w -L INPUT -n --line-numbers",
    "-Z INPUT",
    "-L -v -n",
    "-D INPUT 2",
    "-V",
    "-h",
]
# three datagrams to a closed port: each answered by an ICMP error (OUTPUT, INPUT)
SEND = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(3):\n    s.sendto(b'x' * 20, ('127.0.0.1', 9))\n    time.sleep(0.05)\n")
RESTORE = "*filter\n-A INPUT -s 10.5.0.0/16 -j DROP\nCOMMIT\n"


def undated(text: str) -> str:
    """bpf-iptables-save's output without its time stamps."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith(("# Generated by", "# Completed on")))


def test_served_equals_in_process(attached: Attached) -> None:
    with namespace("bpft-srv") as other_ns:
        other_ns.run(["ip", "link", "set", "lo", "up"])
        assert other_ns.run(datapath_command("attach")).returncode == 0
        other = Attached(other_ns)
        try:
            attached.wait_server()
            for line in SETUP:
                assert attached.served(*line.split()).returncode == 0
                assert other.cmd(*line.split(), env=OFF).returncode == 0
            for ns in (attached, other):   # the same packets counted in both
                r = ns.ns.run([sys.executable, "-c", SEND])
                assert r.returncode == 0, r.stderr
            runs: list[tuple[str, list[str], str | None, str]] = \
                [("iptables", line.split(), None, line) for line in COMMANDS]
            runs += [("iptables-restore", ["-n"], RESTORE, "restore -n"),
                     ("iptables-restore", ["-t"], "*filter\n-A INPUT -j LOG --log-uid\nCOMMIT\n",
                      "restore -t (refused)"),
                     ("iptables-restore", ["--bogus"], "", "restore --bogus"),
                     ("iptables-save", ["-c"], None, "save -c"),
                     ("iptables-save", ["-t", "nat"], None, "save -t nat"),
                     ("iptables", ["-L", "-v", "-n"], None, "-L after restore")]
            counted = False
            for tool, argv, stdin, what in runs:
                got = attached.cmd(*argv, input=stdin, tool=tool)
                if what == "-L -n -v -x":   # the datagrams and ICMP errors were counted
                    counted = any(line.split()[:1] not in ([], ["0"], ["pkts"], ["Chain"])
                                  for line in got.stdout.splitlines())
                want = other.cmd(*argv, input=stdin, tool=tool, env=OFF)
                assert (undated(got.stdout), got.stderr, got.returncode) == \
                    (undated(want.stdout), want.stderr, want.returncode), what
            assert counted
            # and it was the server that ran them (not a silent fallback); what
            # it stored (appends as journal records) reads the same in-process
            served = attached.served("-S")
            assert served.stdout == attached.cmd("-S", env=OFF).stdout == other.cmd("-S").stdout
        finally:
            other_ns.run(datapath_command("detach"))


def test_client_imports_nothing_heavy(attached: Attached) -> None:
    attached.wait_server()
    before = attached.mark()
    r = attached.ns.run([sys.executable, "-X", "importtime", "-m", "bpf_iptables.cli.iptables",
                         "-S", "INPUT"])
    assert r.returncode == 0 and r.stdout == "-P INPUT ACCEPT\n"
    assert attached.mark() != before
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "bpf_iptables.cli.client" in imported
    ours = {m for m in imported if m.split(".")[0] == "bpf_iptables"}
    assert ours == {"bpf_iptables", "bpf_iptables.cli", "bpf_iptables.cli.client"}
    assert not {m for m in imported if m.split(".")[0] in ("bcc", "numpy", "lark")}


def test_killed_or_hung_server_falls_back_and_restarts(attached: Attached) -> None:
    pid = attached.wait_server()
    os.kill(pid, signal.SIGKILL)
    wait_for("the server gone", lambda: pid not in attached.servers())
    before = attached.mark()
    r = attached.cmd("-A", "INPUT", "-s", "10.7.0.1", "-j", "DROP")   # in-process
    assert r.returncode == 0, r.stderr
    new = attached.wait_server()
    assert new != pid
    r = attached.served("-S", "INPUT")
    assert r.stdout.count("-A INPUT -s 10.7.0.1/32 -j DROP\n") == 1
    assert before != attached.mark()
    # hung (stopped): not waited for past the ready timeout; runs in-process
    os.kill(new, signal.SIGSTOP)
    try:
        before = attached.mark()
        r = attached.cmd("-A", "INPUT", "-s", "10.7.0.2", "-j", "DROP")
        assert r.returncode == 0, r.stderr
        assert attached.mark() == before   # the server did not run it
    finally:
        os.kill(new, signal.SIGCONT)
    # woken, it finds that client gone and serves the next one
    r = attached.served("-S", "INPUT")
    assert r.stdout.count("-A INPUT -s 10.7.0.2/32 -j DROP\n") == 1
    assert attached.servers() == [new]


def test_death_during_a_request_never_applies_it_twice(attached: Attached,
                                                      tmp_path: Path) -> None:
    attached.wait_server()
    # dies before taking the lock: the client runs the command itself
    r = attached.cmd("-A", "INPUT", "-s", "10.8.0.1", "-j", "DROP",
                     env={"BPF_IPTABLES_SERVER_DIE_AT": "begin"})
    assert (r.returncode, r.stderr) == (0, "")
    attached.wait_server()
    # dies once the command was applied: the client says so and does not rerun it
    r = attached.cmd("-A", "INPUT", "-s", "10.8.0.2", "-j", "DROP",
                     env={"BPF_IPTABLES_SERVER_DIE_AT": "done"})
    assert r.returncode == 0 and "ended after applying the command" in r.stderr
    # a restore reading a file on stdin reads it again from where it was
    rules = tmp_path / "test.rules"
    rules.write_text("*filter\n-A INPUT -s 10.8.0.3 -j DROP\nCOMMIT\n")
    restore = " ".join(bpf_command("iptables-restore", "-n"))
    r = attached.ns.run(["sh", "-c", f"{restore} < {rules}"],
                        env={"BPF_IPTABLES_SERVER_DIE_AT": "begin"})
    assert (r.returncode, r.stderr) == (0, "")
    attached.wait_server()
    # from a pipe it cannot: nothing is applied, and the client says so
    r = attached.cmd("-n", input="*filter\n-A INPUT -s 10.8.0.5 -j DROP\nCOMMIT\n",
                     tool="iptables-restore", env={"BPF_IPTABLES_SERVER_DIE_AT": "begin"})
    assert r.returncode == 1 and "nothing was changed" in r.stderr
    attached.wait_server()
    rules_now = attached.served("-S", "INPUT").stdout
    for addr in ("10.8.0.1", "10.8.0.2", "10.8.0.3"):
        assert rules_now.count(f"-A INPUT -s {addr}/32 -j DROP\n") == 1, rules_now
    assert "10.8.0.5" not in rules_now
    # the test hooks that kill an update belong to the command's process: refused
    before = attached.mark()
    r = attached.cmd("-A", "INPUT", "-s", "10.8.0.4", "-j", "DROP",
                     env={"BPF_IPTABLES_DATAPATH_DIE_AT": "prepared"})
    assert r.returncode == 137 and attached.mark() == before
    r = attached.cmd("-S", "INPUT")   # in-process or served: the interrupted update is resolved
    assert "10.8.0.4" not in r.stdout


def test_detach_and_namespace_deletion_end_it(attached: Attached) -> None:
    pid = attached.wait_server()
    assert attached.ns.run(datapath_command("detach")).returncode == 0
    wait_for("the server ended by detach", lambda: not attached.servers(), 10)
    # the next change attaches again, with a new server (the suite runs with
    # automatic attaching off: tests/conftest.py)
    assert attached.cmd("-A", "INPUT", "-s", "10.9.0.1", "-j", "DROP",
                        env={"BPF_IPTABLES_DATAPATH": "on"}).returncode == 0
    new = attached.wait_server()
    assert new != pid
    ino = attached.ino
    subprocess.run(["ip", "netns", "del", attached.ns.name], check=True)
    wait_for("the server ended with the namespace", lambda: not attached.servers(), 15)

    def exited() -> bool:
        # gone from the namespace's list may still be on its way out (a
        # clean-clone CI run saw it running just then): exited or a zombie
        try:
            return Path(f"/proc/{new}/stat").read_text().split(")")[1].split()[0] in "ZX"
        except FileNotFoundError:
            return True

    wait_for("the server process exited", exited, 15)
    assert ino is not None


# a client that sends a message longer than the server reads (the server
# must answer F, never run the argv it read cut short), run in the namespace
SEND_LONG = """\
import array, os, socket, sys
from bpf_iptables.cli import client
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(client.socket_name())
assert s.recv(1) == b"R"
words = [b"iptables", b"long.1", b"18", b"2", b"-N", b"x" * client.MAX_MESSAGE]
cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
s.sendmsg([b"\\0".join(words)],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2, cwd]).tobytes())])
sys.stdout.write(s.recv(16).decode())
"""


def test_a_message_longer_than_the_server_reads_is_never_run_cut_short(attached: Attached
                                                                       ) -> None:
    """client.MAX_MESSAGE: the client runs such a command in-process (the
    same output as with the server off); the server refuses one sent anyway
    (MSG_TRUNC) rather than run the shortened argv (here: ``-N xxx...``
    read as a chain name of 64 KiB less a few bytes)."""
    from bpf_iptables.cli import client

    attached.wait_server()
    long = ["-A", "INPUT", "-m", "comment", "--comment", "c" * client.MAX_MESSAGE, "-j", "ACCEPT"]
    before = attached.mark()
    served = attached.cmd(*long)
    assert attached.mark() == before, "a message over MAX_MESSAGE was sent to the server"
    here = attached.cmd(*long, env=OFF)
    assert (served.returncode, served.stdout, served.stderr) == \
        (here.returncode, here.stdout, here.stderr)
    r = attached.ns.run([sys.executable, "-c", SEND_LONG])
    assert (r.returncode, r.stdout) == (0, "F"), r.stderr
    assert "-N " not in attached.cmd("-S").stdout   # no chain made of the shortened argv
