"""python-iptables parameters -> bpf-iptables' command-line parser -> model.

Every match and target goes through ``cmdline.parse.CommandParser``, the
parser of ``bpf-iptables -A``, so a value the command line refuses is
refused here with the same message, and what is stored is exactly what
``bpf-iptables -A CHAIN ...`` would store."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..cmdline import parse as P
from ..errors import NotSupported as CliNotSupported
from ..errors import XtablesError
from .errors import NotSupported, ParameterError

if TYPE_CHECKING:
    from ..extensions.base import Extension
    from .module import Param

PROG = "bpf-iptables"


def param_argv(ext: "Extension", params: list["Param"]) -> list[str]:
    """The option words of ``params``; an option that takes no argument
    (``--syn``, ``--log-uid``) drops the "" python-iptables users pass."""
    takes_arg = {entry[0]: entry[1] for entry in ext.getopt_options}
    out: list[str] = []
    for p in params:
        if p.invert:
            out.append("!")
        out.append(f"--{p.option}")
        if takes_arg.get(p.option, True):
            out.extend(p.values)
        else:
            out.extend(v for v in p.values if v != "")
    return out


class _OptionsOnly(P.CommandParser):
    """The parser without the final checks of each extension: python-iptables
    checks an option when it is set and the whole extension only when the
    rule is used (a match with a mandatory option is set one option at a time)."""

    def finish(self, wait_interval_set: bool) -> None:
        if self.getopt.leftover_start() < len(self.argv):
            raise XtablesError("unknown arguments found on commandline")
        if self.invert:
            raise XtablesError("nothing appropriate following !")


def _run(parser: P.CommandParser) -> P.ParsedCommand:
    try:
        return parser.parse()
    except CliNotSupported as exc:
        raise NotSupported(exc.message) from None
    except XtablesError as exc:
        raise ParameterError(exc.message.rstrip("\n")) from None
    except (P.TryHelpExit, P.HelpRequested, P.VersionRequested, P.LineIgnored):
        raise ParameterError("invalid parameters") from None


def check_options(kind: str, name: str, argv: list[str], context: list[str]) -> None:
    """Parse one extension's options as set so far (no final check)."""
    head = ["-m", name] if kind == "match" else ["-j", name]
    _run(_OptionsOnly([PROG, "-A", "INPUT", *context, *head, *argv]))


def parse_rule(argv: list[str]) -> P.ParsedCommand:
    """``bpf-iptables -A INPUT <argv>`` parsed, extensions checked.

    The chain is a placeholder: the parser's only chain-dependent checks
    concern -i/-o, which are never passed (the rule's interfaces are set
    on the model directly, as python-iptables sets them on the entry)."""
    return _run(P.CommandParser([PROG, "-A", "INPUT", *argv]))
