"""Which `.t` lines the compatibility suite runs, and what each must do.

Scope (the brief of this suite): the filter table, and the files of the
extensions bpf-iptables supports.  Everything else is excluded here, with a
reason, never skipped or xfailed at run time.

A line in scope whose rule nevertheless names an extension outside the
supported set (none do in iptables 1.8.9's files, but the rule is needed
for robustness) keeps its place: where iptables-legacy accepts it,
bpf-iptables must refuse it as "not supported" (exit 2) and change nothing,
because accepting a rule it cannot enforce is exactly what it must never do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .tfile import TestLine, TFile, parse_file

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR_ENV = "BPF_IPTABLES_TESTS_DIR"

# file -> the extension it tests.  Files are matched case-sensitively:
# libxt_mark.t (the match) is in scope, libxt_MARK.t (the target) is not;
# likewise libipt_ttl.t vs libipt_TTL.t, libxt_tos.t vs libxt_TOS.t and
# libxt_dscp.t vs libxt_DSCP.t (those targets are mangle-table only).
IN_SCOPE_FILES: dict[str, str] = {
    "iptables.t": "standard",
    "libxt_standard.t": "standard",
    "libxt_tcp.t": "tcp",
    "libxt_udp.t": "udp",
    "libipt_icmp.t": "icmp",
    "libxt_multiport.t": "multiport",
    "libxt_iprange.t": "iprange",
    "libxt_conntrack.t": "conntrack",
    "libxt_state.t": "state",
    "libxt_mac.t": "mac",
    "libxt_limit.t": "limit",
    "libxt_comment.t": "comment",
    "libxt_mark.t": "mark",
    "libxt_length.t": "length",
    "libipt_ttl.t": "ttl",
    "libxt_tos.t": "tos",
    "libxt_dscp.t": "dscp",
    "libxt_addrtype.t": "addrtype",
    "libxt_pkttype.t": "pkttype",
    "libipt_REJECT.t": "REJECT",
    "libipt_LOG.t": "LOG",
    # front end and reference only: the eBPF data path refuses these three
    "libxt_recent.t": "recent",
    "libxt_hashlimit.t": "hashlimit",
    "libxt_set.t": "set",
}

SUPPORTED_MATCHES = frozenset("""
tcp udp icmp multiport iprange conntrack state mac limit comment mark length
ttl tos dscp addrtype pkttype recent hashlimit set
""".split())
SUPPORTED_TARGETS = frozenset(("ACCEPT", "DROP", "RETURN", "REJECT", "LOG"))
SCOPE_TABLE = "filter"

# Lines whose expectation depends on the running kernel, not on iptables:
# (file, rule) -> why they are excluded.
KERNEL_DEPENDENT: dict[tuple[str, str], str] = {
    ("libxt_recent.t",
     "-m recent --rcheck --hitcount 999 --name foo --mask 255.255.255.255 --rsource"):
        "xt_recent refuses --hitcount above its ip_pkt_list_tot parameter, which is 0 "
        "(only XT_RECENT_MAX_NSTAMPS applies) on this kernel: iptables-legacy accepts it; "
        "compat_tests/test_ext_recent.py compares both tools on it",
}


class Expect(Enum):
    OK = "OK"              # accepted, printed exactly as SAVE
    NOMATCH = "NOMATCH"    # accepted, printed differently
    FAIL = "FAIL"          # rejected with iptables-legacy's exit code
    REFUSED = "REFUSED"    # iptables accepts it; bpf-iptables must say "not supported"


@dataclass(frozen=True)
class SelectedLine:
    line: TestLine
    expect: Expect
    foreign: tuple[str, ...] = ()   # unsupported extensions the rule names

    @property
    def test_id(self) -> str:
        return self.line.test_id


@dataclass(frozen=True)
class Exclusion:
    what: str      # a file name or a file:lineno
    reason: str


@dataclass
class Selection:
    tests_dir: Path
    lines: list[SelectedLine]
    excluded: list[Exclusion]

    def files(self) -> list[str]:
        return list(dict.fromkeys(s.line.file for s in self.lines))


class TestsDirMissing(RuntimeError):
    __test__ = False


def tests_dir() -> Path:
    """``$BPF_IPTABLES_TESTS_DIR``, else ``<repo>/../shared/iptables-tests``.

    In CI the repository is cloned somewhere with a copy of ``shared/``
    beside it, so the default is relative to the repository root, never to
    the working directory."""
    override = os.environ.get(TESTS_DIR_ENV)
    path = Path(override) if override else REPO.parent / "shared" / "iptables-tests"
    if not path.is_dir():
        how = f"${TESTS_DIR_ENV}" if override else f"the default (set ${TESTS_DIR_ENV} to override)"
        raise TestsDirMissing(f"iptables .t test directory {path} (from {how}) does not exist")
    missing = [name for name in IN_SCOPE_FILES if not (path / name).is_file()]
    if missing:
        raise TestsDirMissing(f"{path} lacks the in-scope test files: {', '.join(missing)}")
    return path


def named_extensions(argv: list[str]) -> tuple[list[str], list[str]]:
    """(matches, targets) a rule names with -m/--match and -j/--jump/-g/--goto.

    Covers the spellings the .t files use (separate or attached argument,
    ``--opt=value``); getopt abbreviations such as ``--mat`` are not used
    by any file and are not recognised."""
    matches: list[str] = []
    targets: list[str] = []
    short = {"-m": matches, "-j": targets, "-g": targets}
    long = {"--match": matches, "--jump": targets, "--goto": targets}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in short or word in long:
            if i + 1 < len(argv):
                (short[word] if word in short else long[word]).append(argv[i + 1])
            i += 2
            continue
        if word[:2] in short and len(word) > 2 and not word.startswith("--"):
            short[word[:2]].append(word[2:])
        elif word.startswith("--") and "=" in word and word.split("=", 1)[0] in long:
            opt, value = word.split("=", 1)
            long[opt].append(value)
        i += 1
    return matches, targets


def foreign_extensions(argv: list[str]) -> tuple[str, ...]:
    matches, targets = named_extensions(argv)
    foreign = [m for m in matches if m not in SUPPORTED_MATCHES]
    foreign += [t for t in targets if t not in SUPPORTED_TARGETS]
    return tuple(dict.fromkeys(foreign))


def classify(line: TestLine) -> SelectedLine:
    result = line.legacy_result()
    foreign = foreign_extensions(line.rule_argv)
    if result == "FAIL":
        return SelectedLine(line, Expect.FAIL, foreign)
    if foreign:
        return SelectedLine(line, Expect.REFUSED, foreign)
    return SelectedLine(line, Expect.OK if result == "OK" else Expect.NOMATCH)


def select_file(tfile: TFile) -> tuple[list[SelectedLine], list[Exclusion]]:
    selected: list[SelectedLine] = []
    excluded: list[Exclusion] = []
    for line in tfile.lines:
        if line.table_name != SCOPE_TABLE:
            excluded.append(Exclusion(line.test_id, f"table {line.table_name} is not in scope"))
            continue
        why = KERNEL_DEPENDENT.get((tfile.path.name, line.rule))
        if why:
            excluded.append(Exclusion(line.test_id, why))
            continue
        selected.append(classify(line))
    return selected, excluded


def select(directory: Path | None = None) -> Selection:
    directory = directory or tests_dir()
    lines: list[SelectedLine] = []
    excluded: list[Exclusion] = []
    for path in sorted(directory.glob("*.t")):
        if path.name not in IN_SCOPE_FILES:
            excluded.append(Exclusion(path.name, _file_reason(path.name)))
            continue
        chosen, dropped = select_file(parse_file(path))
        lines += chosen
        excluded += dropped
    return Selection(directory, lines, excluded)


def _file_reason(name: str) -> str:
    if name.startswith(("libip6t_", "libarpt_", "libebt_")):
        return "not an IPv4 iptables test file"
    ext = name.removesuffix(".t").split("_", 1)[-1]
    return f"extension {ext} is not one bpf-iptables supports"


def refusal_lines(directory: Path | None = None) -> list[SelectedLine]:
    """Lines of the excluded files that iptables-legacy accepts in the filter
    table and that name an unsupported extension: bpf-iptables must refuse
    every one with exit 2 "not supported".  Not part of the pass rate (the
    lines are out of scope); a separate check of the rule that an
    unenforceable rule is never accepted and ignored.  Every such line in
    1.8.9's files names its extension with -m/-j, so implicit matches
    (``-p sctp --dport 1``) need no handling here."""
    directory = directory or tests_dir()
    lines: list[SelectedLine] = []
    for path in sorted(directory.glob("*.t")):
        if path.name in IN_SCOPE_FILES or path.name.startswith(("libip6t_", "libarpt_", "libebt_")):
            continue
        for line in parse_file(path).lines:
            if line.table_name != SCOPE_TABLE or line.legacy_result() == "FAIL":
                continue
            foreign = foreign_extensions(line.rule_argv)
            if foreign:
                lines.append(SelectedLine(line, Expect.REFUSED, foreign))
    return lines

