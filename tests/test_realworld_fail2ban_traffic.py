"""fail2ban's iptables-multiport action enforced: banned sources rejected
at the data path, as iptables-legacy does, while the bans come and go.

tests/data/realworld/fail2ban-sshd.cmds (real fail2ban 1.0.2's commands,
see scripts/realworld/) is replayed command by command in two server
namespaces: iptables-legacy in one, bpf-iptables with its data path on (it
attaches itself at the first rule) in the other. Every command must give
the same output and exit status on both. At three points — all 100
addresses banned, about half of them unbanned again, the jail stopped — SYNs to
ssh (and to another port, which the jail does not look at) from banned,
unbanned and never-banned sources are sent as raw frames from the client:
the server's stack must receive the same ones on both sides, and
``iptables-save -c`` must show the same counters (each bpf-iptables
command is a live update, so this also checks that counters are carried
across ~400 of them)."""
from __future__ import annotations

import re

from bpf_iptables.datapath.packets import header_length
from bpf_iptables.netaddr import ip_to_int
from bpf_iptables.reference.packet import Packet
from tests.support.netns import Namespace, bpf_command
from tests.support.pair import Outcome
from tests.support.wire import accept_foreign_sources, send_and_collect
from tests.test_datapath_traffic import SERVER_IP, ensure_bpffs, topology
from tests.test_realworld_rulesets import fail2ban_commands

DATAPATH_ON = {"BPF_IPTABLES_DATAPATH": "on"}
NEVER_BANNED = [f"192.0.2.{200 + i}" for i in range(10)]
SSH, OTHER_PORT = 22, 8080


def replay(commands: list[tuple[bool, list[str]]], ours: Namespace, legacy: Namespace) -> None:
    for tolerated, argv in commands:
        want = legacy.run(["iptables-legacy", *argv])
        got = ours.run(bpf_command("iptables", *argv), env=DATAPATH_ON, timeout=120)
        assert Outcome.of(got) == Outcome.of(want), argv
        assert tolerated or want.returncode == 0, argv


def banned_sources(commands: list[tuple[bool, list[str]]]) -> list[str]:
    return [argv[argv.index("-s") + 1] for _, argv in commands if "-I" in argv and "-s" in argv]


def probes(sources: list[str], first_id: int) -> list[tuple[Packet, int]]:
    """A SYN to ssh (twice: counters must add up) and one to another port
    from every source; IP ids unique from ``first_id``."""
    out = []
    for i, src in enumerate(sources):
        for j, (port, copies) in enumerate(((SSH, 2), (OTHER_PORT, 1))):
            pkt = Packet(in_iface="s0", src=ip_to_int(src), dst=ip_to_int(SERVER_IP), proto=6,
                         sport=40000 + i, dport=port, tcp_flags=0x02,
                         ip_id=first_id + 2 * i + j)
            pkt.length = header_length(pkt)
            out.append((pkt, copies))
    return out


def counters(save: str) -> list[str]:
    return [line for line in save.splitlines() if not line.startswith("#")]


def test_fail2ban_bans_enforced_like_iptables_legacy():
    commands = fail2ban_commands()
    banned = banned_sources(commands)
    assert len(banned) == 100
    # where the script's phases end: after the bans and their checks, and
    # half-way through the unbans
    unban_start = next(i for i, (_, argv) in enumerate(commands) if "-D" in argv)
    stop = next(i for i, (_, argv) in enumerate(commands) if argv[1:3] == ["-D", "INPUT"])
    half = unban_start + (stop - unban_start) // 2
    phases = (commands[:unban_start], commands[unban_start:half], commands[half:])
    unbanned_first = {argv[argv.index("-s") + 1] for tolerated, argv in phases[1]
                      if "-D" in argv and not tolerated}
    assert 20 < len(unbanned_first) < 80

    ensure_bpffs()
    sources = banned + NEVER_BANNED
    with topology("f2bb") as ours, topology("f2bl") as legacy:
        for t in (ours, legacy):
            accept_foreign_sources(t.server.name, "s0")
        delivered_ssh = []
        for phase, cmds in enumerate(phases):
            replay(cmds, ours.server, legacy.server)
            batch = probes(sources, first_id=1 + 1000 * phase)
            got = {name: send_and_collect(t.client.name, "c0", t.server.name, "s0", batch)
                   for name, t in (("ours", ours), ("legacy", legacy))}
            assert got["ours"] == got["legacy"], phase
            ssh_ids = {p.ip_id for p, _ in batch if p.dport == SSH}
            delivered_ssh.append(sum(1 for i in got["legacy"] if i in ssh_ids))
            saves = {"ours": ours.server.run(bpf_command("iptables-save", "-c")),
                     "legacy": legacy.server.run(["iptables-legacy-save", "-c"])}
            assert counters(saves["ours"].stdout) == counters(saves["legacy"].stdout), phase
            if phase == 0:
                # every ban is a rule that counted its two SYNs
                assert len(re.findall(r"^\[2:\d+\] -A f2b-sshd -s ", saves["ours"].stdout,
                                      re.M)) == 100, saves["ours"].stdout
        # the bans took effect and went away: ssh from banned sources was
        # rejected, then some of them came back, then all
        assert delivered_ssh == [10, 10 + len(unbanned_first), 110], delivered_ssh
