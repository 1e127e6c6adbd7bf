"""``bpf-iptables migrate`` on a Docker host (tests/support/dockerhost.py:
two real bridges, docker.rules under iptables-legacy): with --commit,
netfilter's filter table is left empty, bpf-iptables holds the rule set
with netfilter's counters and real traffic gets the same verdicts;
``--rollback`` brings netfilter's rule set back byte for byte. With
br_netfilter on (bridged frames through iptables' FORWARD, which the data
path does not see) the migration stops with exit 2 and changes nothing."""
from __future__ import annotations

from tests.support.dockerhost import DOCKER_RULES, EXPECTED, docker_host, probes
from tests.support.netns import bpf_command, namespace
from tests.test_datapath_traffic import ensure_bpffs, sh
from tests.test_migrate import EMPTY, bpf_save, legacy_save, migrate


def test_docker_host_migrated_with_commit_and_rolled_back():
    ensure_bpffs()
    with docker_host("mgd") as d:
        host = d.host
        assert host.run(["iptables-legacy-restore"], input=DOCKER_RULES).returncode == 0
        assert probes(d) == EXPECTED
        rules = legacy_save(host, counters=False)
        before = legacy_save(host)

        r = migrate(host, "--commit")
        assert r.returncode == 0, r.stderr
        assert "19 rules, 19 enforceable" in r.stdout, r.stdout
        assert "flushed netfilter's (legacy) filter table" in r.stdout
        assert legacy_save(host, counters=False) == "*filter\n" + EMPTY + "COMMIT\n"
        assert bpf_save(host) == rules
        # netfilter's counters came along, unchanged
        saved = host.run(bpf_command("iptables-save", "-c", "-t", "filter")).stdout
        assert "".join(ln + "\n" for ln in saved.splitlines() if not ln.startswith("#")) == before
        # the bridges carry the roots, their ports none
        assert "xdp" in host.run(["ip", "-d", "link", "show", "docker0"]).stdout
        assert "xdp" not in host.run(["ip", "-d", "link", "show", "vethd"]).stdout
        assert probes(d) == EXPECTED

        r = migrate(host, "--rollback")
        assert r.returncode == 0, r.stderr
        assert legacy_save(host) == before
        assert bpf_save(host) == "*filter\n" + EMPTY + "COMMIT\n"


def test_bridge_with_br_netfilter_stops_the_migration():
    with namespace("mgb") as ns:
        sh("ip", "-n", ns.name, "link", "add", "docker0", "type", "bridge")
        sh("ip", "netns", "exec", ns.name, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        assert ns.run(["iptables-legacy-restore"], input=DOCKER_RULES).returncode == 0
        before = legacy_save(ns)
        r = migrate(ns, "--commit")
        assert r.returncode == 2, r.stderr
        assert "stopping" in r.stderr and "bridge-nf-call-iptables=1" in r.stderr, r.stderr
        assert legacy_save(ns) == before
        assert "-A " not in bpf_save(ns)
        r = migrate(ns, "--rollback")
        assert r.returncode == 1 and "no migration to roll back" in r.stderr
