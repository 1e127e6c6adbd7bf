"""glibc getopt_long() as iptables-save and iptables-restore use it.

Unlike the iptables command (cmdline/getopt.py: in-order scanning, errors
reported by iptables itself), these two programs use plain getopt_long():
non-option words are permuted to the end and glibc prints its own messages
for bad options, prefixed with the program name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

NO_ARGUMENT, REQUIRED_ARGUMENT, OPTIONAL_ARGUMENT = 0, 1, 2


class GetoptError(Exception):
    """getopt_long returned '?' after printing ``message``."""

    def __init__(self, message: str):
        self.message = message


@dataclass(frozen=True)
class LongOpt:
    name: str
    has_arg: int
    val: str


@dataclass
class PermutingGetopt:
    """Iterate with :meth:`options`; the option handler may consume the
    next word itself through :meth:`has_arg` / :meth:`take` (xs_has_arg)."""

    prog: str
    argv: list[str]             # without argv[0]
    optstring: str
    longopts: tuple[LongOpt, ...]
    nonoptions: list[str] = field(default_factory=list)
    index: int = 0

    def _short_has_arg(self, c: str) -> int | None:
        i = self.optstring.find(c)
        if i < 0 or c == ":":
            return None
        if self.optstring[i + 1:i + 3] == "::":
            return OPTIONAL_ARGUMENT
        if self.optstring[i + 1:i + 2] == ":":
            return REQUIRED_ARGUMENT
        return NO_ARGUMENT

    def options(self) -> Iterator[tuple[str, str | None]]:
        """Yields (option char, optarg); raises GetoptError."""
        while self.index < len(self.argv):
            arg = self.argv[self.index]
            self.index += 1
            if arg == "--":
                self.nonoptions.extend(self.argv[self.index:])
                self.index = len(self.argv)
                return
            if not arg.startswith("-") or arg == "-":
                self.nonoptions.append(arg)
                continue
            if arg.startswith("--"):
                yield self._long(arg)
                continue
            chars = arg[1:]
            while chars:
                c, chars = chars[0], chars[1:]
                has = self._short_has_arg(c)
                if has is None:
                    raise GetoptError(f"{self.prog}: invalid option -- '{c}'")
                if has == NO_ARGUMENT:
                    yield c, None
                    continue
                if chars:
                    optarg, chars = chars, ""
                    yield c, optarg
                elif has == OPTIONAL_ARGUMENT:
                    yield c, None
                elif self.index < len(self.argv):
                    self.index += 1
                    yield c, self.argv[self.index - 1]
                else:
                    raise GetoptError(f"{self.prog}: option requires an argument -- '{c}'")

    def _long(self, arg: str) -> tuple[str, str | None]:
        name, eq, value = arg[2:].partition("=")
        exact = [o for o in self.longopts if o.name == name]
        found = exact[0] if exact else None
        if found is None:
            candidates = [o for o in self.longopts if o.name.startswith(name)]
            distinct = {(o.has_arg, o.val) for o in candidates}
            if len(distinct) > 1:
                names = " ".join(f"'--{o.name}'" for o in candidates)
                raise GetoptError(f"{self.prog}: option '--{name}' is ambiguous; "
                                  f"possibilities: {names}")
            found = candidates[0] if candidates else None
        if found is None:
            raise GetoptError(f"{self.prog}: unrecognized option '--{name}'")
        if eq:
            if found.has_arg == NO_ARGUMENT:
                raise GetoptError(f"{self.prog}: option '--{found.name}' doesn't allow an argument")
            return found.val, value
        if found.has_arg == REQUIRED_ARGUMENT:
            if self.index < len(self.argv):
                self.index += 1
                return found.val, self.argv[self.index - 1]
            raise GetoptError(f"{self.prog}: option '--{found.name}' requires an argument")
        return found.val, None

    def has_arg(self) -> bool:
        """xs_has_arg(): is the next word neither an option nor "!"?"""
        return (self.index < len(self.argv)
                and not self.argv[self.index].startswith(("-", "!")))

    def take(self) -> str:
        self.index += 1
        return self.argv[self.index - 1]
