"""The command server stores -A, -I and -D as journal records
(server.CachedStore.journal_record, state.Store's "insert" and
"delete_num" records), not as a new snapshot of the whole rule set: what
a fresh process loads from the store (the snapshot with its journal
replayed) must be what the server holds, after each command; a change
the journal cannot hold (a rule that jumps to a user chain, -R, -N) takes
a snapshot."""
from __future__ import annotations

from tests.test_datapath_server import OFF, Attached, attached, own_lock  # noqa: F401

SETUP = "*filter\n:USER - [0:0]\n" + "".join(
    f"-A INPUT -s 10.0.{i}.1 -p tcp --dport {1000 + i} -j ACCEPT\n" for i in range(6)) + \
    "-A USER -j RETURN\nCOMMIT\n"
# (command, stored as a journal record)
COMMANDS = [
    ("-I INPUT 1 -s 10.1.0.1 -j DROP", True),
    ("-I INPUT 4 -s 10.1.0.2 -j DROP", True),
    ("-A INPUT -s 10.1.0.3 -j DROP", True),
    ("-D INPUT 2", True),
    ("-D INPUT -s 10.0.3.1 -p tcp --dport 1003 -j ACCEPT", True),
    ("-I INPUT 2 -s 10.1.0.4 -c 5 300 -j ACCEPT", True),
    ("-D INPUT 1", True),
    ("-I INPUT 3 -j USER", False),   # a jump to a user chain: the index changes
    ("-D INPUT 3", False),
    ("-R INPUT 2 -s 10.1.0.5 -j DROP", False),
    ("-A INPUT -s 10.1.0.6 -j DROP", True),
    ("-D INPUT 9", None),   # no such rule: nothing stored
]


def stored(a: Attached) -> tuple[str, int]:
    gen = (a.dir / "current").read_text().strip()
    journal = a.dir / f"journal-{gen}"
    return gen, journal.stat().st_size if journal.exists() else 0


def test_journal_records_load_as_the_server_holds_them(attached: Attached) -> None:
    a = attached
    a.wait_server()
    assert a.cmd(input=SETUP, tool="iptables-restore").returncode == 0
    for command, journaled in COMMANDS:
        before = stored(a)
        r = a.served(*command.split())
        assert r.returncode == (1 if journaled is None else 0), (command, r.stderr)
        after = stored(a)
        if journaled:
            assert after[0] == before[0] and after[1] > before[1], (command, before, after)
        elif journaled is False:
            assert after[0] != before[0], (command, before, after)
        else:
            assert after == before
        served = a.served("-S", "-v").stdout
        fresh = a.cmd("-S", "-v", env=OFF)   # the store read anew: snapshot + journal
        assert fresh.returncode == 0, fresh.stderr
        # rule counters: the data path's in both (policies: the snapshot's
        # own, reset by each replayed commit as by the commands)
        assert served == fresh.stdout, command
    assert "-s 10.1.0.4/32 -c 5 300 -j ACCEPT" in served
