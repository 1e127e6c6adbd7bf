"""-j LOG: log the packet to the kernel log and continue (libxt_LOG, xt_LOG).

The prefix buffer of ``struct xt_log_info`` is 30 bytes: a longer prefix is
cut to 29 bytes without a word (XTOPT_PUT), never refused. Flags are kept as
the kernel's ``logflags`` bit set because ``-L -n`` prints the raw number."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import XtablesError
from .base import (ParseContext, T, TargetExtension, Verdict, XtOption, XtOptionsExtension,
                   XtState, save_string)

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

LOG_DEFAULT_LEVEL = 4          # LOG_WARNING
PREFIX_SIZE = 30               # char prefix[30], NUL included

# XT_LOG_* bits, in the order libxt_LOG prints and saves them
XT_LOG_TCPSEQ = 0x01
XT_LOG_TCPOPT = 0x02
XT_LOG_IPOPT = 0x04
XT_LOG_UID = 0x08
XT_LOG_MACDECODE = 0x20
XT_LOG_MASK = 0x2F
FLAG_OPTIONS: tuple[tuple[str, int, str], ...] = (
    ("log-tcp-sequence", XT_LOG_TCPSEQ, "tcp-sequence"),
    ("log-tcp-options", XT_LOG_TCPOPT, "tcp-options"),
    ("log-ip-options", XT_LOG_IPOPT, "ip-options"),
    ("log-uid", XT_LOG_UID, "uid"),
    ("log-macdecode", XT_LOG_MACDECODE, "macdecode"),
)

# glibc's prioritynames[]: the first name listed for a value is printed
# ("err" and "warn", not "error" and "warning").
PRIORITY_NAMES = {0: "emerg", 1: "alert", 2: "crit", 3: "err", 4: "warn",
                  5: "notice", 6: "info", 7: "debug"}


@dataclass(frozen=True)
class LogData:
    """``struct xt_log_info``."""

    level: int = LOG_DEFAULT_LEVEL
    logflags: int = 0
    prefix: str = ""   # already cut to 29 bytes; undecodable bytes as surrogates


def truncate_prefix(text: str) -> str:
    """Cut to the buffer like xtopt_parse_string(): bytes, not characters."""
    raw = text.encode("utf-8", "surrogateescape")[:PREFIX_SIZE - 1]
    return raw.decode("utf-8", "surrogateescape")


class LogTarget(XtOptionsExtension, TargetExtension):
    name = "LOG"
    help_text = (
        "LOG target options:\n"
        " --log-level level\t\tLevel of logging (numeric or see syslog.conf)\n"
        " --log-prefix prefix\t\tPrefix log messages with this prefix.\n"
        " --log-tcp-sequence\t\tLog TCP sequence numbers.\n"
        " --log-tcp-options\t\tLog TCP options.\n"
        " --log-ip-options\t\tLog IP options.\n"
        " --log-uid\t\t\tLog UID owning the local socket.\n"
        " --log-macdecode\t\tDecode MAC addresses and protocol.\n")
    xt_options: ClassVar[tuple[XtOption, ...]] = (
        XtOption("log-level", T.SYSLOGLEVEL),
        XtOption("log-prefix", T.STRING, min=1),
        *(XtOption(opt) for opt, _, _ in FLAG_OPTIONS),
    )

    def on_option(self, state: XtState, opt: XtOption, value: Any, invert: bool,
                  ctx: ParseContext, arg: str | None) -> None:
        if opt.name == "log-prefix":
            # checked on the whole argument, before it is cut to the buffer
            if "\n" in (arg or ""):
                raise XtablesError("Newlines not allowed in --log-prefix")
            state.values["prefix"] = truncate_prefix(arg or "")

    def build(self, state: XtState, ctx: ParseContext) -> LogData:
        flags = 0
        for opt, bit, _ in FLAG_OPTIONS:
            if opt in state.flags:
                flags |= bit
        return LogData(state.values.get("log-level", LOG_DEFAULT_LEVEL), flags,
                       state.values.get("prefix", ""))

    def save(self, data: LogData) -> str:
        out = ""
        if data.prefix:
            out += " --log-prefix" + save_string(data.prefix)
        if data.level != LOG_DEFAULT_LEVEL:
            out += f" --log-level {data.level}"
        for opt, bit, _ in FLAG_OPTIONS:
            if data.logflags & bit:
                out += f" --{opt}"
        return out

    def print(self, data: LogData, numeric: bool) -> str:
        out = " LOG"
        if numeric:
            out += f" flags {data.logflags} level {data.level}"
        else:
            name = PRIORITY_NAMES.get(data.level)
            out += f" level {name}" if name else f" UNKNOWN level {data.level}"
            for _, bit, word in FLAG_OPTIONS:
                if data.logflags & bit:
                    out += f" {word}"
            if data.logflags & ~XT_LOG_MASK:
                out += " unknown-flags"
        if data.prefix:
            # printed raw: -L does not quote or escape the prefix
            out += f' prefix "{data.prefix}"'
        return out

    def kernel_check(self, data: LogData, rule: "Rule", hooks: frozenset[str]) -> bool:
        """log_tg_check(): a syslog level 0-7 (the parser never makes others)."""
        return 0 <= data.level < 8

    def verdict(self, data: LogData, packet: "Packet") -> Verdict:
        return Verdict("continue")


EXTENSIONS = [LogTarget()]
