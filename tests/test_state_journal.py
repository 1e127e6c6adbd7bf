"""The state store: appends and deletes go to a journal, other changes make a
new generation.

Checked through the real CLI in private namespaces, against iptables-legacy
where output is involved."""
from __future__ import annotations

from pathlib import Path

from bpf_iptables.state import Store
from tests.support.netns import bpf_command, namespace
from tests.test_state_gc import state_dir

RULES = ["-N X", "-A INPUT -s 10.0.0.1 -j ACCEPT", "-A X -p tcp --dport 22 -j DROP",
         "-A INPUT -j X", "-A OUTPUT -o lo -c 7 70", "-P FORWARD DROP -c 3 4",
         "-A INPUT -p udp -m multiport --dports 53,123 -j ACCEPT", "-A X -j LOG"]


def run_both(real, ours, commands):
    for command in commands:
        args = command.split()
        r, o = real.iptables(*args), ours.bpf_iptables(*args)
        assert (r.returncode, r.stdout) == (o.returncode, o.stdout), command


def test_appends_are_journalled_and_read_back_like_iptables():
    with namespace() as real, namespace() as ours:
        run_both(real, ours, RULES)
        files = {p.name for p in state_dir(ours).iterdir()}
        gen = (state_dir(ours) / "current").read_text()
        # the last -A (no jump to a user chain) went to the journal of the current generation
        assert f"journal-{gen}" in files and f"snapshot-{gen}" in files
        for args in (["-S", "-v"], ["-L", "-v", "-x", "-n"]):
            assert real.iptables(*args).stdout == ours.bpf_iptables(*args).stdout
        # a change other than -A and -D folds the journal into a new generation
        run_both(real, ours, ["-I INPUT -j ACCEPT"])
        files = {p.name for p in state_dir(ours).iterdir()}
        new = (state_dir(ours) / "current").read_text()
        assert new != gen and f"journal-{new}" not in files and f"snapshot-{gen}" not in files
        assert real.iptables("-S", "-v").stdout == ours.bpf_iptables("-S", "-v").stdout


def test_an_append_that_fails_journals_nothing():
    with namespace() as real, namespace() as ours:
        run_both(real, ours, ["-A INPUT -j ACCEPT", "-A OUTPUT -p udp -j ACCEPT",
                              "-A OUTPUT -j INPUT", "-A OUTPUT -m mac --mac-source 0:1:2:3:4:5",
                              "-A OUTPUT -m tcp --dport 1", "-A NOPE -j DROP"])
        assert real.iptables("-S").stdout == ours.bpf_iptables("-S").stdout


def test_a_journal_record_cut_short_by_a_crash_is_ignored(tmp_path: Path):
    with namespace() as ours:
        for command in ("-A INPUT -j ACCEPT", "-A INPUT -j DROP"):
            assert ours.bpf_iptables(*command.split()).returncode == 0
        directory = state_dir(ours)
        gen = (directory / "current").read_text()
        journal = directory / f"journal-{gen}"
        data = journal.read_bytes()
        journal.write_bytes(data + data[:-5])  # a second copy of the record, torn
        assert ours.bpf_iptables("-S", "INPUT").stdout == "-P INPUT ACCEPT\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\n"


def test_a_large_journal_is_folded_into_a_snapshot(tmp_path: Path, monkeypatch):
    """In-process: the CLI's apply() on a store whose journal is over the limit."""
    from bpf_iptables.cli.iptables import apply
    from bpf_iptables.cmdline.parse import CommandParser
    from bpf_iptables.commands import Outcome

    def command(line: str) -> None:
        apply(CommandParser(["bpf-iptables", *line.split()]).parse(), store, Outcome())

    store = Store(tmp_path)
    command("-N X")
    command("-A X -j ACCEPT")
    assert (tmp_path / "journal-1").exists() and store.load_index("filter") is not None
    monkeypatch.setattr(Store, "JOURNAL_LIMIT", 0)
    assert store.load_index("filter") is None
    command("-A X -j DROP")  # over the limit: this append saves a new generation
    assert (tmp_path / "current").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "index-2", "snapshot-2"]
    rules = store.load().tables["filter"].chains["X"].rules
    assert [r.target.name for r in rules] == ["ACCEPT", "DROP"]


def test_deletes_are_journalled_and_read_back_like_iptables():
    with namespace() as real, namespace() as ours:
        run_both(real, ours, RULES + ["-A INPUT -s 10.0.0.2,10.0.0.3 -j DROP",
                                      "-A INPUT -s 10.0.0.4 -j ACCEPT"])
        gen = (state_dir(ours) / "current").read_text()
        run_both(real, ours, ["-D INPUT 1", "-D INPUT -s 10.0.0.2,10.0.0.3 -j DROP",
                              "-D INPUT 9", "-D INPUT -s 10.0.0.9 -j DROP", "-D NOPE 1",
                              "-D X -j LOG", "-v -D INPUT -s 10.0.0.4 -j ACCEPT"])
        assert (state_dir(ours) / "current").read_text() == gen  # journal only
        for args in (["-S", "-v"], ["-L", "-v", "-x", "-n"]):
            assert real.iptables(*args).stdout == ours.bpf_iptables(*args).stdout


def test_deleting_a_jump_to_a_user_chain_updates_which_hooks_reach_it():
    """mac is allowed in INPUT, not OUTPUT: once OUTPUT no longer jumps to X,
    X may have a mac rule (a journalled delete would leave the index stale)."""
    with namespace() as real, namespace() as ours:
        run_both(real, ours, ["-N X", "-A INPUT -j X", "-A OUTPUT -j X",
                              "-A X -m mac --mac-source 0:1:2:3:4:5",
                              "-D OUTPUT -j X", "-A X -m mac --mac-source 0:1:2:3:4:5",
                              "-A OUTPUT -j X", "-D OUTPUT 1", "-D X 1", "-A OUTPUT -j X",
                              "-D X 1", "-A OUTPUT -j X"])
        assert real.iptables("-S").stdout == ours.bpf_iptables("-S").stdout


DUMP_A = """*filter
:INPUT DROP [1:2]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [3:4]
:U - [0:0]
[5:6] -A INPUT -s 10.0.0.1/32 -j U
-A U -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""
DUMP_B = """*filter
:V - [0:0]
-A INPUT -s 10.0.0.2/32 -j V
-A OUTPUT -j ACCEPT
COMMIT
"""


def test_a_restore_replacing_a_stored_table_is_like_iptables():
    """Such a restore reads only the index's policies (store.load_skeleton);
    whatever it keeps of the old table must still be what iptables keeps."""
    steps = [([], DUMP_A), (["-c"], DUMP_B), (["-n"], DUMP_A), (["-v"], DUMP_B),
             (["-t"], DUMP_A), ([], DUMP_A.replace("COMMIT", "-A NOPE -j DROP\nCOMMIT")),
             ([], "*filter\n")]
    with namespace() as real, namespace() as ours:
        for i, (options, dump) in enumerate(steps):
            r = real.run(["iptables-legacy-restore", *options], input=dump)
            o = ours.run(bpf_command("iptables-restore", *options), input=dump)
            assert (r.returncode, r.stdout) == (o.returncode, o.stdout), i
            run_both(real, ours, ["-P OUTPUT DROP"] if i == 2 else ["-A FORWARD -j DROP"])
            assert real.iptables("-S", "-v").stdout == ours.bpf_iptables("-S", "-v").stdout, i
        args = ["-L", "-v", "-x", "-n"]
        assert real.iptables(*args).stdout == ours.bpf_iptables(*args).stdout
