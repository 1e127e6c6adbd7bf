"""REJECT replies pass OUTPUT, as iptables' own (icmp_send, nf_send_reset).

Twin namespaces (iptables-legacy in one, bpf-iptables attached in the
other), --mode tc and xdpgeneric (OUTPUT's XDP twin): INPUT (the server) and FORWARD (the router) reject, and
OUTPUT holds rules that count the replies by their conntrack view
(RELATED, the reply direction, the original's tuple: nf_conntrack_attach)
and rules that drop some of them. The client sees the same errors, and a
timeout where OUTPUT dropped the reply (not ECONNREFUSED, no ICMP error);
every counter of INPUT/FORWARD and OUTPUT is the same
(bpf_iptables/datapath/README.md, "REJECT")."""
from __future__ import annotations

import pytest

from tests.support.netns import Namespace
from tests.support.twins import load_twins
from tests.test_datapath_traffic import FAR_IP, SERVER_IP, ensure_bpffs, routed, topology
from tests.test_reject_traffic import no_icmp_ratelimit, tcp_errno, udp_error

def rules(chain: str) -> str:
    return "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        f"-A {chain} -p udp -m udp --dport 6003 -j REJECT --reject-with icmp-port-unreachable",
        f"-A {chain} -p udp -m udp --dport 6006 -j REJECT --reject-with icmp-host-prohibited",
        f"-A {chain} -p tcp -m tcp --dport 7000 -j REJECT --reject-with tcp-reset",
        f"-A {chain} -p tcp -m tcp --dport 7003 -j REJECT --reject-with icmp-port-unreachable",
        f"-A {chain} -p tcp -m tcp --dport 7100 -j REJECT --reject-with tcp-reset",
        # the replies as OUTPUT sees them: RELATED to the original, in the
        # reply direction, with its tuple (counting rules: no verdict)
        "-A OUTPUT -p icmp -m conntrack --ctstate RELATED --ctdir REPLY",
        "-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate RELATED"
        " --ctorigdstport 7000",
        "-A OUTPUT -m conntrack --ctstate NEW,INVALID,ESTABLISHED",
        "-A OUTPUT -p icmp -m conntrack --ctproto udp --ctorigdstport 6003",
        # dropped: the client gets nothing
        "-A OUTPUT -p icmp -m icmp --icmp-type 3/10 -j DROP",
        "-A OUTPUT -p tcp -m tcp --sport 7100 --tcp-flags RST RST -j DROP",
        "COMMIT", ""])


def probe(client: Namespace, dst: str) -> dict:
    err = udp_error(client, dst, 6003)
    return {"udp6003": err and (err.type, err.code),
            "udp6006": udp_error(client, dst, 6006),   # dropped in OUTPUT: None
            "tcp": {port: tcp_errno(client, dst, port) for port in (7000, 7003, 7100)}}


EXPECTED = {"udp6003": (3, 3), "udp6006": None,
            "tcp": {7000: 111, 7003: 111, 7100: -1}}   # ECONNREFUSED; timeout


def listing(ns: Namespace, ours: bool) -> str:
    argv = ("-L", "-v", "-x", "-n")
    return (ns.bpf_iptables(*argv) if ours else ns.iptables(*argv)).stdout


@pytest.mark.parametrize("mode", ["tc", "xdpgeneric"])
@pytest.mark.parametrize("hook", ["INPUT", "FORWARD"])
def test_reject_replies_pass_output_as_iptables_legacy(hook, mode):
    ensure_bpffs()
    make, dst = (topology, SERVER_IP) if hook == "INPUT" else (routed, FAR_IP)
    with make("rqa") as legacy, make("rqb") as ours:
        side = "server" if hook == "INPUT" else "router"
        a, b = getattr(legacy, side), getattr(ours, side)
        no_icmp_ratelimit(a, b)
        load_twins(a, b, rules(hook), "--mode", mode)
        want = probe(legacy.client, dst)
        assert want == EXPECTED
        assert probe(ours.client, dst) == want
        mine, theirs = listing(b, True), listing(a, False)
        assert mine == theirs
        # OUTPUT's rules saw every reply (not a vacuous equality): 3 ICMP
        # errors RELATED in the reply direction, the RST to 7000, none
        # NEW/INVALID/ESTABLISHED, the UDP 6003 error by its original's
        # tuple, the dropped error and the two dropped RSTs (SYN retried)
        rules_out = theirs.split("Chain OUTPUT")[1].splitlines()[2:]
        assert [int(line.split()[0]) for line in rules_out if line.strip()] == [3, 1, 0, 1, 1, 2]


STATEFUL = "\n".join([
    "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -p tcp -m tcp --dport 7000 -j REJECT --reject-with tcp-reset",
    "-A INPUT -p udp -m udp --dport 6003 -j REJECT --reject-with icmp-port-unreachable",
    # OUTPUT's twin shares the namespace's limit, recent, hashlimit and
    # LOG maps and continues through its own stateful programs
    "-A OUTPUT -p tcp -m limit --limit 100/sec",
    "-A OUTPUT -m recent --set --name rq --mask 255.255.255.255 --rsource",
    "-A OUTPUT -m hashlimit --hashlimit-upto 100/sec --hashlimit-name rq",
    "-A OUTPUT -p icmp -m recent --rcheck --name rq --mask 255.255.255.255 --rsource"
    " -j LOG --log-prefix \"rq \"",
    "COMMIT", ""])


def test_reject_replies_pass_stateful_output_rules_xdp():
    ensure_bpffs()
    with topology("rqs") as legacy, topology("rqt") as ours:
        no_icmp_ratelimit(legacy.server, ours.server)
        load_twins(legacy.server, ours.server, STATEFUL, "--mode", "xdpgeneric")
        want = [tcp_errno(legacy.client, SERVER_IP, 7000), udp_error(legacy.client, SERVER_IP, 6003)]
        got = [tcp_errno(ours.client, SERVER_IP, 7000), udp_error(ours.client, SERVER_IP, 6003)]
        assert want[0] == 111 and want[1] is not None and got == want
        mine, theirs = listing(ours.server, True), listing(legacy.server, False)
        assert mine == theirs
        rules_out = theirs.split("Chain OUTPUT")[1].splitlines()[2:]
        assert [int(line.split()[0]) for line in rules_out if line.strip()] == [1, 2, 2, 1]


def test_reject_with_scans_past_the_tail_call_limit_is_refused():
    """A reply takes the root's tail call, the rejecting chain's scan,
    xdp_reject and OUTPUT's scan: past the kernel's 33 tail calls OUTPUT
    could not classify it, so the rule set is refused, not half enforced."""
    from bpf_iptables.datapath.compiler import compile_chain
    from bpf_iptables.datapath.harness import table_from_lines
    from bpf_iptables.datapath.reject_output import check_tail_calls
    from bpf_iptables.errors import NotSupported

    def compiled(n: int) -> dict:
        # n counting rules (each continues the scan) per chain
        lines = [f"-A INPUT -p tcp --dport {i + 1}" for i in range(n)]
        lines += ["-A INPUT -p tcp -j REJECT --reject-with tcp-reset"]
        lines += [f"-A OUTPUT -p udp --sport {i + 1}" for i in range(n)]
        table = table_from_lines(lines)
        return {hook: compile_chain(table, hook, {}) for hook in ("INPUT", "OUTPUT")}

    short = compiled(100)
    check_tail_calls(short)
    long = compiled(10000)
    steps = [c.shape.invocations(c.shape.steps) for c in long.values()]
    assert sum(steps) + 1 > 33, steps
    with pytest.raises(NotSupported, match="33 tail calls"):
        check_tail_calls(long)
    del long["OUTPUT"]
    check_tail_calls(long)   # no OUTPUT classifier: nothing to pass
