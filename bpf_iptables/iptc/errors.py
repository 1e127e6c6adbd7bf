"""python-iptables' exception classes, and bpf-iptables' refusal."""
from __future__ import annotations


class IPTCError(Exception):
    """A failed table operation or commit (python-iptables: libiptc errors)."""


class XTablesError(Exception):
    """A match or target that cannot be built: unknown extension, bad
    option or value (python-iptables: libxtables errors). The message is
    the one the bpf-iptables command line prints for the same option."""


class NotSupported(XTablesError, IPTCError):
    """Something iptables accepts that the eBPF data path cannot enforce.

    Raised instead of accepting and ignoring it; caught by ``except
    iptc.IPTCError`` and ``except iptc.XTablesError`` alike, whichever a
    script written for python-iptables uses."""


class ParameterError(XTablesError, ValueError):
    """A value an extension refuses. python-iptables raises ValueError or
    XTablesError here, depending on the extension's libxtables API, so
    this is both."""


class UnknownParameter(XTablesError, AttributeError):
    """An option the extension does not have (python-iptables: AttributeError
    or XTablesError, by API, so this is both)."""
