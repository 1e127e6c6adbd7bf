"""The extension registry.

Every module in this package that defines ``EXTENSIONS`` (a list of
extension instances) is picked up, so adding a match or target is a one-file
change. Names iptables knows but bpf-iptables cannot enforce are refused with
a clear error instead of being accepted and ignored."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from ..errors import NotSupported, XtablesError
from .base import Extension, MatchExtension, TargetExtension

# iptables 1.8.9 IPv4 extensions (libxt_*/libipt_*), to tell "unsupported"
# apart from "no such extension".
IPTABLES_MATCHES = frozenset("""
addrtype ah bpf cgroup cluster comment connbytes connlabel connlimit connmark
conntrack cpu dccp devgroup dscp ecn esp hashlimit helper icmp ipcomp iprange
ipvs length limit mac mark multiport nfacct osf owner physdev pkttype policy
quota rateest realm recent rpfilter sctp set socket state statistic string tcp
tcpmss time tos ttl u32 udp
""".split())
IPTABLES_TARGETS = frozenset("""
AUDIT CHECKSUM CLASSIFY CLUSTERIP CONNMARK CONNSECMARK CT DNAT DSCP ECN HMARK
IDLETIMER LED LOG MARK MASQUERADE NETMAP NFLOG NFQUEUE NOTRACK RATEEST
REDIRECT REJECT SECMARK SET SNAT SYNPROXY TCPMSS TCPOPTSTRIP TEE TOS TPROXY
TRACE TTL
""".split())
STANDARD_TARGET_NAMES = ("ACCEPT", "DROP", "QUEUE", "RETURN")


@lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, MatchExtension], dict[str, TargetExtension]]:
    matches: dict[str, MatchExtension] = {}
    targets: dict[str, TargetExtension] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for ext in getattr(module, "EXTENSIONS", ()):
            table = matches if ext.kind == "match" else targets
            if ext.name in table:
                raise RuntimeError(f"extension {ext.name} defined twice")
            table[ext.name] = ext
    return matches, targets


_QUICK: dict[tuple[str, str], Extension | None] = {}


def _quick(kind: str, name: str) -> Extension | None:
    """The extension from the module named after it (tcp.py, log.py),
    without importing every other module: one short-lived process runs
    one command, and most commands need one or two extensions. None means
    "ask the full registry". Remembered, since restore asks per line."""
    key = (kind, name)
    if key not in _QUICK:
        _QUICK[key] = _quick_import(kind, name)
    return _QUICK[key]


def _quick_import(kind: str, name: str) -> Extension | None:
    if _registry.cache_info().currsize or not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"{__name__}.{name.lower()}")
    except ImportError:
        return None
    for ext in getattr(module, "EXTENSIONS", ()):
        if ext.kind == kind and ext.name == name:
            return ext
    return None


def matches() -> dict[str, MatchExtension]:
    return _registry()[0]


def targets() -> dict[str, TargetExtension]:
    return _registry()[1]


def match_named(name: str) -> MatchExtension:
    """The match of a rule that was parsed (so it exists), importing only
    its module when that is named after it."""
    return _quick("match", name) or matches()[name]  # type: ignore[return-value]


def target_named(name: str) -> TargetExtension:
    """The extension target of a parsed rule (see match_named)."""
    return _quick("target", name) or targets()[name]  # type: ignore[return-value]


def find_match(name: str) -> MatchExtension:
    """xtables_find_match(XTF_LOAD_MUST_SUCCEED)."""
    ext = _quick("match", name) or matches().get(name)
    if ext is not None:
        return ext  # type: ignore[return-value]
    if name in IPTABLES_MATCHES:
        raise NotSupported(f"match `{name}'")
    raise XtablesError(f"Couldn't load match `{name}':No such file or directory\n")


def try_match(name: str) -> MatchExtension | None:
    """xtables_find_match(XTF_TRY_LOAD) for implicit protocol matches."""
    return _quick("match", name) or matches().get(name)  # type: ignore[return-value]


def try_target(name: str) -> TargetExtension | None:
    """xtables_find_target(XTF_TRY_LOAD): None means "maybe a chain"."""
    if name in STANDARD_TARGET_NAMES:
        name = "standard"
    return _quick("target", name) or targets().get(name)  # type: ignore[return-value]


def require_target(name: str) -> TargetExtension:
    """xtables_find_target(XTF_LOAD_MUST_SUCCEED) for a name that is no chain."""
    ext = try_target(name)
    if ext is not None:
        return ext
    if name in IPTABLES_TARGETS:
        raise NotSupported(f"target `{name}'")
    raise XtablesError(f"Couldn't load target `{name}':No such file or directory\n")


def is_target_name(name: str) -> bool:
    """Would xtables_find_target(name, XTF_TRY_LOAD) find something?"""
    return name in STANDARD_TARGET_NAMES or name in targets() or name in IPTABLES_TARGETS


__all__ = ["Extension", "MatchExtension", "TargetExtension", "find_match", "try_match",
           "try_target", "require_target", "matches", "targets", "is_target_name"]
