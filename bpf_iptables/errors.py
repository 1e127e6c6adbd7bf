"""Errors with iptables' exit statuses and message shapes.

iptables distinguishes three kinds of failure, and scripts depend on the exit
status: OTHER_PROBLEM (1) for failed table operations, PARAMETER_PROBLEM (2)
for bad command lines (followed by the "Try `iptables -h'" hint),
VERSION_PROBLEM (3) and RESOURCE_PROBLEM (4) for the lock.
"""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

OTHER_PROBLEM = 1
PARAMETER_PROBLEM = 2
VERSION_PROBLEM = 3
RESOURCE_PROBLEM = 4


class XtablesError(Exception):
    """A failure reported the way xtables_error() reports it.

    ``message`` is printed after the "PROG vVERSION: " prefix, followed by a
    newline (messages that end in "\\n" therefore leave a blank line, as in
    iptables)."""

    def __init__(self, message: str, status: int = PARAMETER_PROBLEM):
        super().__init__(message)
        self.message = message
        self.status = status


class BadArgument(XtablesError):
    """getopt's "Bad argument `x'" path: printed without the version prefix."""

    def __init__(self, arg: str):
        super().__init__(f"Bad argument `{arg}'", PARAMETER_PROBLEM)
        self.arg = arg


class NotSupported(XtablesError):
    """Something iptables accepts but the eBPF data path cannot enforce.

    Refused with exit 2 rather than accepted and ignored."""

    def __init__(self, what: str):
        super().__init__(f"{what} is not supported by bpf-iptables", PARAMETER_PROBLEM)


# libiptc operations, used to pick the message for an errno like TC_STRERROR.
class Op:
    INIT = "init"
    DELETE_CHAIN = "delete_chain"
    CREATE_CHAIN = "create_chain"
    INSERT_ENTRY = "insert_entry"
    REPLACE_ENTRY = "replace_entry"
    DELETE_NUM_ENTRY = "delete_num_entry"
    READ_COUNTER = "read_counter"
    ZERO_COUNTER = "zero_counter"
    DELETE_ENTRY = "delete_entry"
    SET_POLICY = "set_policy"
    OTHER = "other"


_OP_MESSAGES: dict[tuple[str | None, int], str] = {
    (Op.INIT, _errno.EPERM): "Permission denied (you must be root)",
    (Op.INIT, _errno.EINVAL): "Module is wrong version",
    (Op.INIT, _errno.ENOENT): "Table does not exist (do you need to insmod?)",
    (Op.DELETE_CHAIN, _errno.ENOTEMPTY): "Chain is not empty",
    (Op.DELETE_CHAIN, _errno.EINVAL): "Can't delete built-in chain",
    (Op.DELETE_CHAIN, _errno.EMLINK): "Can't delete chain with references left",
    (Op.CREATE_CHAIN, _errno.EEXIST): "Chain already exists",
    (Op.INSERT_ENTRY, _errno.E2BIG): "Index of insertion too big",
    (Op.REPLACE_ENTRY, _errno.E2BIG): "Index of replacement too big",
    (Op.DELETE_NUM_ENTRY, _errno.E2BIG): "Index of deletion too big",
    (Op.READ_COUNTER, _errno.E2BIG): "Index of counter too big",
    (Op.ZERO_COUNTER, _errno.E2BIG): "Index of counter too big",
    (Op.INSERT_ENTRY, _errno.ELOOP): "Loop found in table",
    (Op.INSERT_ENTRY, _errno.EINVAL): "Target problem",
    (Op.DELETE_ENTRY, _errno.ENOENT): "Bad rule (does a matching rule exist in that chain?)",
    (Op.SET_POLICY, _errno.ENOENT): "Bad built-in chain name",
    (Op.SET_POLICY, _errno.EINVAL): "Bad policy name",
    (None, _errno.ENOENT): "No chain/target/match by that name",
}


@dataclass
class TableOpError(Exception):
    """A failed libiptc-level operation (exit status 1, "iptables: MSG.").

    ``op`` is the operation libiptc's error table keys on; iptables only
    uses the specific message when the failing call is the *last* libiptc
    call made, which ``op=Op.OTHER`` models (plain strerror text)."""

    err: int
    op: str = Op.OTHER

    def __str__(self) -> str:
        return table_strerror(self.op, self.err)


def table_strerror(op: str, err: int) -> str:
    for key in ((op, err), (None, err)):
        if key in _OP_MESSAGES:
            return _OP_MESSAGES[key]
    import os

    return os.strerror(err)
