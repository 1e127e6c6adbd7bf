"""A parser of iptables' own `.t` extension test files.

The format is the one upstream's ``iptables-test.py`` (1.8.9) reads; see the
README.md beside the files.  This module only turns a file into data: which
rule lines exist, in which table and chains, what they expect, and which
setup commands (``@cmd``/``%cmd``) come before them.  Deciding what is in
scope for bpf-iptables is :mod:`compat_tests.selection`'s job.

Parsing follows upstream where it is lenient, so that a line means here
what it means to upstream: fields are split on every ``;`` and only the
RESULT/VARIANT/ALT fields are stripped (upstream ``rstrip``s them), while
RULE and SAVE are taken verbatim.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Result = Literal["OK", "FAIL", "NOMATCH"]
RESULTS: tuple[Result, ...] = ("OK", "FAIL", "NOMATCH")

# The variant whose expectations this project follows (bpf-iptables is a
# drop-in for iptables-legacy).
OUR_VARIANT = "LEGACY"
# variant_res() in iptables-test.py: a result scoped to the other variant
# turns into ALT, or else into its inverse.
_INVERSE: dict[str, Result] = {"OK": "FAIL", "FAIL": "OK", "NOMATCH": "OK"}


class TFileError(ValueError):
    """A .t file that upstream's runner would also reject or misread."""


@dataclass(frozen=True)
class SetupCommand:
    """``@cmd`` or ``%cmd``: run as is before the lines that follow it."""
    lineno: int
    command: str

    @property
    def argv(self) -> list[str]:
        # Upstream runs these through the shell; shlex gives the same words
        # for the quoting the files use.
        return shlex.split(self.command)

    @property
    def is_iptables(self) -> bool:
        """Upstream prefixes exactly these with the iptables binary under test."""
        return self.command.startswith("iptables ")


@dataclass(frozen=True)
class TestLine:
    """One ``RULE;SAVE;RESULT[;VARIANT[;ALT]]`` line, with its context."""
    __test__ = False  # not a pytest test class despite the name

    path: Path
    lineno: int                  # 1-based, as upstream reports it
    table: str | None            # None: no ``*table`` line seen (filter)
    chains: tuple[str, ...]
    rule: str                    # RULE, verbatim
    save_field: str              # SAVE field, verbatim ("=" or text)
    result: Result               # RESULT as written
    variant: str | None = None
    alt_result: Result | None = None
    setup: tuple[SetupCommand, ...] = ()   # setup commands before this line

    @property
    def file(self) -> str:
        return self.path.name

    @property
    def test_id(self) -> str:
        return f"{self.file}:{self.lineno}"

    @property
    def table_name(self) -> str:
        return self.table or "filter"

    @property
    def rule_argv(self) -> list[str]:
        """RULE as the shell upstream hands it to would split it."""
        return shlex.split(self.rule)

    @property
    def save_text(self) -> str:
        """The canonical rule text after ``-A CHAIN `` (SAVE ``=`` means RULE)."""
        return self.rule if self.save_field == "=" else self.save_field

    def expected_save_line(self, chain: str) -> str:
        return f"-A {chain} {self.save_text}"

    def legacy_result(self) -> Result:
        """The RESULT iptables-legacy must give (upstream's variant_res())."""
        if self.variant is None or self.variant == OUR_VARIANT:
            return self.result
        if self.alt_result is not None:
            return self.alt_result
        return _INVERSE[self.result]


@dataclass
class TFile:
    path: Path
    lines: list[TestLine] = field(default_factory=list)
    setup: list[SetupCommand] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def _result(text: str, path: Path, lineno: int) -> Result:
    if text not in RESULTS:
        raise TFileError(f"{path.name}:{lineno}: unknown result {text!r}")
    return text  # type: ignore[return-value]


def parse_file(path: Path) -> TFile:
    tfile = TFile(path)
    table: str | None = None
    chains: tuple[str, ...] = ()
    with open(path, encoding="utf-8") as fh:
        for index, raw in enumerate(fh):
            lineno = index + 1
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            head = line[0]
            if head == ":":
                chains = tuple(line.rstrip()[1:].split(","))
                continue
            if head == "*":
                table = line.rstrip()[1:]
                continue
            if head in "@%":
                tfile.setup.append(SetupCommand(lineno, line.rstrip()[1:]))
                continue
            if not chains:
                raise TFileError(f"{path.name}:{lineno}: broken test, missing chain")
            fields = line.split(";")
            if len(fields) < 3:
                raise TFileError(f"{path.name}:{lineno}: expected RULE;SAVE;RESULT")
            variant = fields[3].rstrip() if len(fields) > 3 else None
            if variant is not None and variant not in ("LEGACY", "NFT"):
                raise TFileError(f"{path.name}:{lineno}: unknown variant {variant!r}")
            alt = _result(fields[4].rstrip(), path, lineno) if len(fields) > 4 else None
            tfile.lines.append(TestLine(
                path=path, lineno=lineno, table=table, chains=chains,
                rule=fields[0], save_field=fields[1],
                result=_result(fields[2].rstrip(), path, lineno),
                variant=variant, alt_result=alt, setup=tuple(tfile.setup)))
    return tfile
