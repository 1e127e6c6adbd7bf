"""A python-iptables-compatible API backed by bpf-iptables.

``import bpf_iptables.iptc as iptc`` in place of ``import iptc``: Table,
Chain, Rule, Match, Target, Policy, autocommit/commit()/refresh(),
counters and ``iptc.easy`` behave as python-iptables 1.2.0 does on
iptables-legacy, but the rules go to the namespace's bpf-iptables rule
set: a commit (or an easy batch) is one atomic update of the eBPF data
path of an attached namespace. Matches and targets are parsed by the
bpf-iptables command line, so what it refuses (NotSupported: not
enforceable by the data path) is refused here too, never accepted and
ignored. Only the filter table and IPv4 exist."""
from __future__ import annotations

from .errors import IPTCError, NotSupported, XTablesError
from .ip6 import Rule6, Table6, is_table6_available
from .module import Match, Target
from .rule import Policy, Rule
from .table import Chain, Table, is_table_available
from . import easy

__all__ = ["Table", "Chain", "Rule", "Match", "Target", "Policy", "IPTCError", "XTablesError",
           "NotSupported", "is_table_available", "Table6", "Rule6", "is_table6_available", "easy"]
