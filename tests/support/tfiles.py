"""The rule lines of an iptables .t file, with the LEGACY expectation.

Built on the compatibility suite's parser (``compat_tests.tfile``), so the
extension tests and the compat suite read the files the same way."""
from __future__ import annotations

from dataclasses import dataclass

from compat_tests.tfile import parse_file
from tests.support.shared import iptables_tests_dir


@dataclass(frozen=True)
class TLine:
    chains: tuple[str, ...]
    rule: str
    save: str    # canonical save text after "-A CHAIN " ("" on FAIL lines)
    ok: bool     # accepted (OK/NOMATCH) for iptables-legacy


def read_t_file(name: str) -> list[TLine]:
    tfile = parse_file(iptables_tests_dir() / name)
    out = []
    for line in tfile.lines:
        assert line.table_name == "filter" and not line.setup, f"{line.test_id}: not a plain filter line"
        ok = line.legacy_result() != "FAIL"
        out.append(TLine(line.chains or ("INPUT", "FORWARD", "OUTPUT"), line.rule,
                         line.save_text if ok else "", ok))
    return out
