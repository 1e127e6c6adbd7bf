"""The same rule set in twin namespaces: iptables-legacy in one, bpf-iptables
(attached) in the other, as the traffic comparisons start."""
from __future__ import annotations

from tests.support.netns import Namespace, bpf_command
from tests.test_datapath_traffic import datapath_command


def load_twins(legacy: Namespace, ours: Namespace, text: str, *attach: str) -> None:
    """Restore ``text`` into both; attach ours with ``attach`` arguments."""
    assert legacy.run(["iptables-legacy-restore"], input=text).returncode == 0
    r = ours.run(bpf_command("iptables-restore"), input=text)
    assert r.returncode == 0, r.stderr
    r = ours.run(datapath_command("attach", *attach))
    assert r.returncode == 0, r.stderr
