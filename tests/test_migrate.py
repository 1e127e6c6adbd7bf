"""``bpf-iptables migrate``: netfilter's filter table taken over, verdicts kept, rolled back.

A server namespace filtered by iptables-legacy is migrated with --commit:
afterwards netfilter's filter table is empty, bpf-iptables holds the same
rules (with their counters) and real traffic gets the same verdicts;
``--rollback`` brings netfilter's rule set back byte for byte. A rule set
with rules the data path cannot enforce stops the migration with exit 2 and
changes nothing; --dry-run changes nothing."""
from __future__ import annotations

import re
import sys
import time

from tests.support.netns import REPO, Namespace, bpf_command, namespace
from tests.test_datapath_traffic import Pair, ensure_bpffs, ping, tcp, topology, udp

RULES = """\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:svc - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p icmp -m comment --comment "ping" -j ACCEPT
-A INPUT -p tcp -m multiport --dports 8080,8081 -j svc
-A INPUT -s 10.99.0.0/24 -p udp -m udp --dport 5002 -j ACCEPT
-A svc -p tcp -m tcp --dport 8080 -j ACCEPT
-A svc -p tcp -m tcp --dport 8081 -j DROP
-A OUTPUT -p udp -m udp --dport 6000 -j DROP
COMMIT
"""

# ufw- and Docker-style rules, one of which the data path does not enforce
UNENFORCEABLE = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ufw-before-input - [0:0]
-A INPUT -j ufw-before-input
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw-before-input -m limit --limit 3/min -j LOG --log-prefix "[UFW BLOCK] " --log-uid
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def migrate(ns: Namespace, *args: str):
    return ns.run([sys.executable, "-m", "bpf_iptables.cli.iptables", "migrate", *args],
                  env={"PYTHONPATH": str(REPO), "BPF_IPTABLES_DATAPATH": "on"}, timeout=180)


def _text(out: str, counters: bool) -> str:
    """Save output without its dated comments (and, unless asked for,
    without the chains' counters, which iptables-save always prints)."""
    text = "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))
    return text if counters else re.sub(r"\[\d+:\d+\]", "[0:0]", text)


def legacy_save(ns: Namespace, counters: bool = True) -> str:
    r = ns.run(["iptables-legacy-save", *(["-c"] if counters else []), "-t", "filter"])
    assert r.returncode == 0, r.stderr
    return _text(r.stdout, counters)


def bpf_save(ns: Namespace) -> str:
    r = ns.run(bpf_command("iptables-save", "-t", "filter"))
    assert r.returncode == 0, r.stderr
    return _text(r.stdout, False)


def traffic(pair: Pair) -> dict[str, int]:
    out = {"icmp": ping(pair, 2), "udp5002": udp(pair, 5002, 2), "udp5003": udp(pair, 5003, 1),
           "tcp8080": tcp(pair, 8080, 1), "tcp8081": tcp(pair, 8081, 1),
           "out6000": udp(pair, 6000, 1, reverse=True), "out6001": udp(pair, 6001, 1, reverse=True)}
    time.sleep(0.1)
    return out


EMPTY = ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def test_unenforceable_rules_stop_the_migration_and_change_nothing():
    with namespace("migr") as ns:
        assert ns.run(["iptables-legacy-restore"], input=UNENFORCEABLE).returncode == 0
        before = legacy_save(ns)
        r = migrate(ns)
        assert r.returncode == 2, r.stderr
        # conntrack (h-ct) and limit + LOG are enforced now; LOG --log-uid is not
        assert "5 rules, 4 enforceable by bpf-iptables, 1 not" in r.stdout, r.stdout
        assert "cannot enforce: -A ufw-before-input -m limit --limit 3/min -j LOG" in r.stdout
        assert "stopping" in r.stderr
        assert legacy_save(ns) == before
        assert bpf_save(ns) == "*filter\n" + EMPTY + "COMMIT\n"
        r = migrate(ns, "--rollback")
        assert r.returncode == 1 and "no migration to roll back" in r.stderr
        # told to go on, it would load the others, and only those
        r = migrate(ns, "--partial", "--dry-run", "--no-verify")
        assert r.returncode == 0, r.stderr
        plan = r.stdout.split("load into bpf-iptables:\n")[1]
        assert "-A INPUT -j ufw-before-input" in plan
        assert "-A ufw-before-input -p tcp -m tcp --dport 22 -j ACCEPT" in plan
        assert "-m conntrack" in plan and "LOG" not in plan
        assert legacy_save(ns) == before


def test_plan_from_iptables_nft():
    """--source nft (and auto, when iptables-legacy has no filter table here)."""
    with namespace("mign") as ns:
        assert ns.run(["iptables-nft-restore"], input=RULES).returncode == 0
        for source in ("nft", "auto"):
            r = migrate(ns, "--source", source, "--dry-run", "--no-verify", "--commit")
            assert r.returncode == 0, r.stderr
            assert "netfilter (nft) filter table: 7 rules, 7 enforceable" in r.stdout
            plan = r.stdout.split("load into bpf-iptables:\n")[1]
            assert "[0:0] -A svc -p tcp -m tcp --dport 8081 -j DROP" in plan
            assert "then flush netfilter's (nft) filter table" in plan
        assert "-A " not in bpf_save(ns)


def test_commit_refused_when_nothing_would_enforce():
    """Model-only (data path off): --commit must not flush netfilter."""
    with namespace("migo") as ns:
        assert ns.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        before = legacy_save(ns)
        r = ns.run([sys.executable, "-m", "bpf_iptables.cli.iptables", "migrate", "--commit",
                    "--no-verify"], env={"PYTHONPATH": str(REPO), "BPF_IPTABLES_DATAPATH": "off"})
        assert r.returncode == 1 and "not flushing netfilter" in r.stderr, r.stderr
        assert legacy_save(ns) == before
        assert migrate(ns, "--rollback").returncode == 0
        assert legacy_save(ns) == before
        assert "-A " not in bpf_save(ns)


def test_migrate_commit_keeps_verdicts_and_rollback_restores_netfilter():
    ensure_bpffs()
    with topology("mig") as pair:
        server = pair.server
        assert server.run(["iptables-legacy-restore"], input=RULES).returncode == 0
        want = traffic(pair)
        assert want == {"icmp": 2, "udp5002": 2, "udp5003": 0, "tcp8080": 1, "tcp8081": 0,
                        "out6000": 0, "out6001": 1}
        rules = legacy_save(server, counters=False)

        r = migrate(server, "--dry-run", "--commit")
        assert r.returncode == 0, r.stderr
        assert "then flush netfilter's (legacy) filter table" in r.stdout
        assert legacy_save(server, counters=False) == rules
        assert "-A " not in bpf_save(server)

        before = legacy_save(server)
        r = migrate(server, "--commit")
        assert r.returncode == 0, r.stderr
        assert "7 rules, 7 enforceable" in r.stdout
        assert "verified INPUT:" in r.stdout and "data path and reference agree" in r.stdout
        assert legacy_save(server, counters=False) == "*filter\n" + EMPTY + "COMMIT\n"
        assert bpf_save(server) == rules
        # netfilter's counters came along
        counted = server.run(bpf_command("iptables-save", "-c")).stdout
        assert "[2:" in counted
        assert traffic(pair) == want

        r = migrate(server, "--rollback")
        assert r.returncode == 0, r.stderr
        assert legacy_save(server) == before
        assert bpf_save(server) == "*filter\n" + EMPTY + "COMMIT\n"
