"""Match and Target: an extension and its parameters, as python-iptables shows them.

python-iptables turns ``match.dport = "22"`` into the extension's option
``--dport 22`` and reads a parameter back from the extension's save text.
Here the parameters are kept as the option words a user set (or, for a rule
read from the table, the words of its save text), and turned into model
data by bpf-iptables' own command-line parser: error messages and
canonical forms are those of ``bpf-iptables``, and a parameter read back
is what ``iptables-save`` prints."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import extensions as registry
from ..errors import NotSupported as CliNotSupported
from ..errors import XtablesError
from ..model import Match as ModelMatch
from ..model import Target as ModelTarget
from . import build
from .errors import NotSupported, UnknownParameter, XTablesError

if TYPE_CHECKING:
    from .rule import Rule

# python-iptables' regular expression for one "--name value" of save text
# (IPTCModule.pattern): parameters and parameter lookups use it, so values
# read back have python-iptables' exact shape
_PATTERN = re.compile(r'\s*(!)?\s*--([-\w]+)\s+(!)?\s*"?([^"]*?)"?(?=\s*(?:!?\s*--|$))')


@dataclass
class Param:
    """One option as set: ``--option values...``, inverted with "!"."""

    option: str
    values: list[str] = field(default_factory=list)
    invert: bool = False


def params_of_save_text(text: str) -> list[Param]:
    """The options of an extension's save text (get_all_parameters' reading)."""
    out: list[Param] = []
    invert = False
    for word in shlex.split(text):
        if word == "!":
            invert = True
        elif word.startswith("--"):
            out.append(Param(word[2:], [], invert))
            invert = False
        elif out:
            out[-1].values.append(word)
    return out


def to_param(option: str, value: Any) -> Param:
    """python-iptables' parse(): a leading "!" inverts; a value is a
    string or a list of strings (one word each)."""
    if value is None:
        value = ""
    if isinstance(value, int):  # python-iptables would fail on len(); a port number is meant
        value = str(value)
    try:
        invert = len(value) > 0 and value[0] == "!"  # "!22" or ["!", "22"]
    except TypeError:
        raise TypeError("Invalid parameter value: must be string or list of strings") from None
    if invert:
        value = value[1:]
    if isinstance(value, str):
        words = [value]
    else:
        words = [v if isinstance(v, str) else str(v) for v in value]
    return Param(option.strip(), words, invert)


class IPTCModule:
    """What Match and Target share: parameters by attribute, save-text reads."""

    _kind = ""

    def __init__(self) -> None:  # pragma: no cover - subclasses set everything
        raise NotImplementedError

    # -- parameters ------------------------------------------------------------

    def set_parameter(self, parameter: str, value: Any = None) -> None:
        self.parse(parameter.replace("_", "-"), value)

    def parse(self, parameter: str, value: Any) -> None:
        """Set one option, checked at once by the command-line parser
        (as python-iptables' parse() calls the extension's parser); the
        checks of the whole extension wait for the rule (final_check)."""
        param = to_param(parameter, value)
        if self._ext is None or param.option not in {o[0] for o in self._ext.getopt_options}:
            raise UnknownParameter(f"{self._name}: no such parameter {param.option}")
        params = [p for p in self._params if p.option != param.option] + [param]
        build.check_options(self._kind, self._name, build.param_argv(self._ext, params),
                            self._context())
        self._params = params
        self._data = None
        self._changed()

    def get_all_parameters(self) -> dict[str, list[str]]:
        """{option: values}, with "!" first when inverted (python-iptables' form)."""
        return {p.option: (["!"] if p.invert else []) + list(p.values)
                for p in params_of_save_text(self._save_text())}

    def _get_parameters(self) -> dict[str, str]:
        table = {}
        for m in _PATTERN.findall(self._save_text()):
            table[m[1].replace("-", "_")] = ("!" if (m[0] or m[2]) else "") + m[3]
        return table

    parameters = property(_get_parameters)

    def save(self, name: str | None) -> Any:
        if name is None:
            return self._get_parameters()
        for m in _PATTERN.findall(self._save_text()):
            if m[1] == name:
                return ("!" if (m[0] or m[2]) else "") + m[3]
        return None

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in dir(self):
            self.parse(name.replace("_", "-"), value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            return self.save(name.replace("_", "-"))
        raise AttributeError(name)

    def reset(self) -> None:
        """Back to no parameters."""
        self._params = []
        self._data = None
        self._changed()

    def final_check(self) -> None:
        """The extension's checks of the whole option set (raises XTablesError)."""
        self._model_data()

    # -- internals ---------------------------------------------------------------

    def _save_text(self) -> str:
        if self._ext is None:
            return ""
        try:
            data = self._model_data()
        except XTablesError:
            # not complete yet (python-iptables reads the raw buffer): what was set
            return " ".join((["!"] if p.invert else []) + [f"--{p.option}"] + p.values
                            for p in self._params)
        return self._ext.save(data) if data is not None else ""

    def _model_data(self) -> Any:
        raise NotImplementedError

    def _context(self) -> list[str]:
        rule = self._rule
        return rule._proto_argv() if rule is not None else []

    def _changed(self) -> None:
        rule = self._rule
        if rule is not None:
            rule._changed()

    def _get_name(self) -> str:
        return self._name

    name = property(_get_name)

    def _get_rule(self) -> "Rule | None":
        return self._rule

    def _set_rule(self, rule: "Rule") -> None:
        self._rule = rule

    rule = property(_get_rule, _set_rule)


class Match(IPTCModule):
    """A match extension of a rule (``-m NAME options``)."""

    _kind = "match"

    def __init__(self, rule: "Rule", name: str | None = None, match: ModelMatch | None = None,
                 revision: int | None = None):
        if not name and match is None:
            raise ValueError("can't create match based on nothing")
        name = name or match.name  # type: ignore[union-attr]
        object.__setattr__(self, "_rule", rule)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_revision", revision)
        try:
            ext = registry.find_match(name)
        except CliNotSupported as exc:
            raise NotSupported(exc.message) from None
        except XtablesError:
            raise XTablesError(f"can't find match {name}") from None
        object.__setattr__(self, "_ext", ext)
        object.__setattr__(self, "_params", [])
        object.__setattr__(self, "_data", None)
        if match is not None:
            object.__setattr__(self, "_params", params_of_save_text(ext.save(match.data)))
            object.__setattr__(self, "_data", match.data)

    def _model_data(self) -> Any:
        if self._data is None:
            argv = [*self._context(), "-m", self._name, *build.param_argv(self._ext, self._params)]
            parsed = build.parse_rule(argv)
            object.__setattr__(self, "_data", parsed.match_data[-1].data)
        return self._data

    def model(self) -> ModelMatch:
        return ModelMatch(self._name, self._model_data())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return self._name == other._name and self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self._name, self._key()))

    def _key(self) -> str:
        try:
            return self._save_text()
        except XTablesError:
            return repr(self._params)


class Target(IPTCModule):
    """The rule's target: a verdict, a chain to jump (or go) to, or an
    extension target such as REJECT or LOG."""

    _kind = "target"
    STANDARD_TARGETS = ["", "ACCEPT", "DROP", "REJECT", "RETURN", "REDIRECT", "SNAT", "DNAT",
                        "MASQUERADE", "MIRROR", "TOS", "MARK", "QUEUE", "LOG"]

    def __init__(self, rule: "Rule", name: str | None = None, target: ModelTarget | None = None,
                 revision: int | None = None, goto: bool | None = None):
        if name is None and target is None:
            raise ValueError("can't create target based on nothing")
        if name is None:
            name = target.name  # type: ignore[union-attr]
        if goto is None:
            goto = bool(target.goto) if target is not None else False
        object.__setattr__(self, "_rule", rule)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_revision", revision)
        object.__setattr__(self, "_goto", bool(goto))
        object.__setattr__(self, "_params", [])
        object.__setattr__(self, "_data", None)
        object.__setattr__(self, "_ext", None)
        if target is not None:
            if not target.is_standard:
                ext = registry.targets()[name]
                object.__setattr__(self, "_ext", ext)
                object.__setattr__(self, "_params", params_of_save_text(ext.save(target.data)))
                object.__setattr__(self, "_data", target.data)
            return
        if name == "QUEUE":
            raise NotSupported("target `QUEUE' is not supported by bpf-iptables")
        if name in ("", "ACCEPT", "DROP", "RETURN"):
            return
        if goto:  # -g names a chain, never an extension
            if not _is_chain(name):
                raise XTablesError(f"can't find target {name}")
            return
        try:
            ext = registry.try_target(name)
        except CliNotSupported as exc:
            raise NotSupported(exc.message) from None
        if ext is None:
            if name in registry.IPTABLES_TARGETS:
                raise NotSupported(f"target `{name}' is not supported by bpf-iptables")
            if not _is_chain(name):
                raise XTablesError(f"can't find target {name}")
            return
        object.__setattr__(self, "_ext", ext)

    def _model_data(self) -> Any:
        if self._ext is None:
            return None
        if self._data is None:
            argv = [*self._context(), "-j", self._name, *build.param_argv(self._ext, self._params)]
            object.__setattr__(self, "_data", build.parse_rule(argv).target_data)
        return self._data

    def model(self) -> ModelTarget:
        if self._ext is None:
            return ModelTarget(name=self._name, goto=self._goto)
        return ModelTarget(name=self._name, data=self._model_data(), goto=self._goto)

    def _get_standard_target(self) -> str:
        return self._name

    def _set_standard_target(self, name: str) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_ext", None)
        object.__setattr__(self, "_data", None)
        self._changed()

    standard_target = property(_get_standard_target, _set_standard_target)

    def _get_goto(self) -> bool:
        return self._goto

    goto = property(_get_goto)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        if self._name != other._name or (self._ext is None) != (other._ext is None):
            return False
        if self._ext is None:
            return True  # python-iptables compares standard targets by name only
        return self._save_text() == other._save_text()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._name)


def _is_chain(name: str) -> bool:
    """python-iptables looks a jump's chain up in every table it has."""
    from .table import Table, is_table_available

    return is_table_available("filter") and Table("filter").is_chain(name)
