"""IPv6 (Table6, Rule6): bpf-iptables filters IPv4 only, so these refuse."""
from __future__ import annotations

from typing import Any

from .errors import NotSupported


def is_table6_available(name: str) -> bool:
    return False


class Table6:
    def __new__(cls, *args: Any, **kwargs: Any) -> "Table6":
        raise NotSupported("IPv6 (ip6tables) is not supported by bpf-iptables")


class Rule6:
    def __new__(cls, *args: Any, **kwargs: Any) -> "Rule6":
        raise NotSupported("IPv6 (ip6tables) is not supported by bpf-iptables")
