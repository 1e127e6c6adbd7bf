"""``bpf-iptables migrate``: take a namespace's filter table over from netfilter.

source.py reads (and writes back) netfilter's rule set, plan.py decides
which rules bpf-iptables can enforce, probes.py and verify.py check the
compiled programs against the reference semantics on packets drawn from
every rule, run.py carries the steps out (see cli/migrate.py)."""
