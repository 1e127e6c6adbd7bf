"""Every command-line error, one test each, against iptables-legacy.

All cases share one namespace pair prepared with a user chain and a few
rules (so errors about references, indexes and duplicates can occur); each
case must fail in both tools with the same message and exit status."""
from __future__ import annotations

import pytest

from tests.support.diffrun import DiffRunner, report
from tests.support.pair import pair

SETUP = ["-N used", "-N empty", "-N full", "-A full -j ACCEPT", "-A INPUT -j used",
         "-A INPUT -s 1.2.3.4 -j DROP"]

STATE = ("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N empty\n-N full\n-N used\n"
         "-A INPUT -j used\n-A INPUT -s 1.2.3.4/32 -j DROP\n-A full -j ACCEPT\n")

ERRORS = [
    # command combinations
    "", "-n", "-A INPUT -D INPUT", "-L -A INPUT", "-N x -X x", "-F -L", "-Z -S INPUT -L",
    "-A INPUT -I INPUT", "-P INPUT DROP -A INPUT",
    # options illegal with the command
    "-L -s 1.1.1.1", "-L -j ACCEPT", "-L -p tcp", "-L -i eth0", "-L -o eth0", "-L -f",
    "-L -c 1 2", "-S -n", "-S -x", "-S --line-numbers", "-F -n", "-Z -x", "-X -n used",
    "-N x -v -n", "-E used x -n", "-D INPUT 1 -s 1.1.1.1", "-P INPUT DROP -s 1.1.1.1",
    "-A INPUT -n", "-A INPUT -x", "-A INPUT --line-numbers", "-I INPUT -n",
    "-D INPUT -j DROP -s 1.2.3.4 -c 1 2", "-C INPUT -c 1 2 -j ACCEPT",
    # unknown options, missing and extra arguments
    "-A INPUT --foo", "--foo", "--foo=bar", "-Q", "-A INPUT -Q", "-A", "-I", "-R INPUT",
    "-D", "-E used", "-P INPUT", "-N", "-A INPUT -s", "-A INPUT -d", "-A INPUT -p",
    "-A INPUT -j", "-A INPUT -g", "-A INPUT -i", "-A INPUT -o", "-A INPUT -m", "-A INPUT -c",
    "-A INPUT -c 1", "-t", "-A INPUT foo", "-A INPUT -j ACCEPT extra", "-L INPUT 1 2",
    "-N a b", "-X used extra", "foo", "-A INPUT --dport 80", "-A INPUT -p tcp --bogus",
    "-A INPUT --numeric=1", "--ver", "--l", "-A INPUT -j ACCEPT -j DROP",
    "-A INPUT -s 1.1.1.1 -s 2.2.2.2", "-A INPUT -p tcp -p udp", "-A INPUT -i a -i b",
    "-A INPUT -f -f", "-L -n -n", "-A INPUT -c 1 2 -c 3 4", "-A INPUT -c x 1",
    "-A INPUT -c 1 y", "-w x -L", "-W x -w -L", "-W 10 -L", "-w 1 -W 1000000 -L",
    # an attached argument: iptables reads the whole word for -p -s -d -j -i -o
    "-A INPUT -ptcp", "-A INPUT -jACCEPT", "-A INPUT --jump=ACCEPT", "-A INPUT -s1.2.3.4",
    "-A INPUT --protocol=udp",
    # "!" in the wrong place
    "-A INPUT ! ! -s 1.2.3.4", "-A INPUT ! -j ACCEPT", "-A INPUT -s 1.1.1.1 !",
    "-A INPUT ! -g used", "-A INPUT ! -m tcp", "-A INPUT ! -t filter", "! -A INPUT",
    "-A INPUT ! -v", "-A INPUT ! -n", "-A INPUT ! -c 1 2", "-L !", "! -L",
    "-A INPUT ! -s 1.1.1.1,2.2.2.2", "-A INPUT ! -p 0", "-A INPUT ! -p all",
    # rule numbers
    "-I INPUT 0 -j DROP", "-I INPUT -1 -j DROP", "-I INPUT x -j DROP", "-I INPUT 9 -j DROP",
    "-R INPUT 0 -j DROP", "-R INPUT 3 -j DROP", "-R INPUT x -j DROP", "-D INPUT 0",
    "-D INPUT 9", "-D INPUT abc", "-D INPUT 1x", "-Z INPUT 9", "-Z INPUT 0",
    "-L INPUT 0", "-R INPUT 1 -s 1.1.1.1,2.2.2.2 -j DROP",
    "-I INPUT 4294967296 -j DROP",
    # chains
    "-N used", "-N DROP", "-N ACCEPT", "-N -x", "-N !x", f"-N {'a' * 29}",
    "-N ''", "-N 'a b'", "-E used full", "-E used DROP", "-E INPUT x", "-E nope x",
    "-X INPUT", "-X used", "-X full", "-X nope", "-F nope", "-Z nope", "-L nope", "-S nope",
    "-A nope -j ACCEPT", "-D nope -j ACCEPT", "-C nope -j ACCEPT", "-D nope 1",
    f"-A {'a' * 29} -j ACCEPT",
    # policies
    "-P INPUT FOO", "-P INPUT RETURN", "-P used ACCEPT", "-P nope DROP", "-P INPUT drop",
    "-P INPUT ACCEPT extra",
    # interfaces
    "-A INPUT -o eth0", "-A OUTPUT -i eth0", "-I INPUT -o lo", "-A INPUT -i ''",
    "-A INPUT -o ''", "-A INPUT -i abcdefghijklmnop",
    # targets
    "-A INPUT -g DROP", "-A INPUT -g nochain", "-A INPUT -j NONEXISTENT", "-A INPUT -j ''",
    f"-A INPUT -j {'a' * 29}", "-A INPUT -j 'a b'", "-A used -j used",
    "-A used -g used",
    # rules that do not exist
    "-D INPUT -j ACCEPT", "-C INPUT -j ACCEPT", "-D INPUT -s 1.2.3.4",
    "-D INPUT -s 1.2.3.4 -d 5.6.7.8,1.1.1.1 -j DROP",
    # addresses and protocols
    "-A INPUT -s 1.2.3.4/33", "-A INPUT -s 1.2.3.256", "-A INPUT -s nosuchhost.invalid",
    "-A INPUT -s 1.2.3.4/-1", "-A INPUT -s 1.2.3.4/8x", "-A INPUT -s ''", "-A INPUT -s 1.1.1.1,",
    "-A INPUT -p 256", "-A INPUT -p foo", "-A INPUT -p -1", "-A INPUT -p ''",
    # tcp options
    "-A INPUT -p tcp --dport 99999", "-A INPUT -p tcp --dport nosuch",
    "-A INPUT -p tcp --dport 80 --dport 81", "-A INPUT -p tcp --tcp-flags FOO SYN",
    "-A INPUT -p tcp --syn --tcp-flags SYN SYN", "-A INPUT -p tcp --dport",
    "-A INPUT -p udp --syn", "-A INPUT -m tcp --dport 80 -p udp",
    # tables
    "-t foo -L", "-t FILTER -L", "-t '' -L",
    # -6
    "-6 -A INPUT", "-6 -L",
]


def restore_setup(r: DiffRunner) -> None:
    problems = r.restore_reset(["empty", "full", "used"])
    problems += r.sequence([c for c in SETUP if not c.startswith("-N")], final=())
    assert not problems, report(problems)


@pytest.fixture(scope="module")
def runner():
    with pair("bpfe") as p:
        r = DiffRunner(p)
        try:
            restore_setup(r)
            yield r
        finally:
            r.close()


@pytest.mark.parametrize("command", ERRORS)
def test_error_matches_iptables(runner: DiffRunner, command: str) -> None:
    mismatch = runner.compare(command)
    assert mismatch is None, str(mismatch)
    real, ours = runner.both(["-S"])
    if (real.stdout, ours.stdout) != (STATE, STATE):
        restore_setup(runner)      # keep the other cases meaningful
        pytest.fail(f"an error case changed the rule set:\n{real.stdout}\n{ours.stdout}")


def test_error_cases_all_fail(runner: DiffRunner) -> None:
    """Each case is an error for iptables itself (guards against a list
    entry that silently tests a success)."""
    import shlex

    succeeded = [c for c in ERRORS if runner.both(shlex.split(c))[0].returncode == 0]
    assert succeeded == []
