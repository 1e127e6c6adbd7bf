"""The migration's steps, and its rollback.

A migration records two backups in the namespace's state directory before
it changes anything: netfilter's filter table (``iptables-save -c``) and
bpf-iptables' own (``bpf-iptables-save -c``). ``rollback`` puts both back
(netfilter's byte for byte, counters included) and removes them."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .. import state
from . import source
from .plan import Plan, make_plan

NETFILTER_BACKUP = "migrate-netfilter.rules"
BPF_BACKUP = "migrate-bpf-iptables.rules"
RECORD = "migrate.json"


class MigrateError(Exception):
    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    source: str = "auto"
    dry_run: bool = False
    commit: bool = False
    partial: bool = False
    verify: bool = True


@dataclass
class Result:
    plan: Plan
    kind: str
    notes: list[str] = field(default_factory=list)


def _bpf(tool: str, *args: str, stdin: str | None = None) -> str:
    module = {"save": "save", "restore": "restore"}[tool]
    r = subprocess.run([sys.executable, "-m", f"bpf_iptables.cli.{module}", *args],
                       input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise MigrateError(f"bpf-iptables-{tool} failed: {r.stderr.strip()}", r.returncode)
    return r.stdout


def state_dir() -> Path:
    with state.locked(-1) as store:
        return store.directory


def enforced(directory: Path, plan: Plan) -> bool:
    """Whether the loaded rule set is enforced (a rule set that needs no
    program is enforced by its absence)."""
    from ..datapath import attachment
    from ..datapath.auto import needs_program
    from ..model import RuleSet

    if not needs_program(RuleSet({"filter": plan.table})):
        return True
    return attachment.read(directory) is not None


def refuse_bridged(plan: Plan) -> None:
    """What the load would refuse for the namespace rather than for a rule
    (bridges with br_netfilter on, see datapath/bridges.py): stop before
    anything is backed up or loaded."""
    from ..datapath import bridges
    from ..errors import NotSupported

    try:
        bridges.check_br_netfilter(plan.table)
    except NotSupported as exc:
        raise MigrateError(f"stopping: {exc.message.strip()}; nothing changed", 2) from None


def report_plan(plan: Plan, kind: str, out: TextIO) -> None:
    out.write(f"netfilter ({kind}) filter table: {plan.rules + len(plan.refused)} rules, "
              f"{plan.rules} enforceable by bpf-iptables, {len(plan.refused)} not\n")
    for r in plan.refused:
        out.write(f"  cannot enforce: {r.line}\n    ({r.reason})\n")


def migrate(opts: Options, out: TextIO) -> Result:
    directory = state_dir()
    if (directory / RECORD).exists():
        raise MigrateError(f"a migration is recorded in {directory}; run `bpf-iptables migrate "
                           "--rollback' first")
    kind = source.pick(opts.source)
    text = source.read(kind)
    plan = make_plan(text)
    report_plan(plan, kind, out)
    result = Result(plan, kind)
    if plan.refused and not opts.partial:
        raise MigrateError("stopping: rules above cannot be enforced; nothing changed "
                           "(--partial loads the others, which changes what the rule set does)", 2)
    refuse_bridged(plan)
    if opts.verify:
        from .verify import verify

        v = verify(plan.table)
        for hook, n in v.packets.items():
            bad = sum(1 for m in v.mismatches if m.startswith(f"{hook}:"))
            out.write(f"verified {hook}: {n} probe packets, "
                      + (f"{bad} MISMATCHES\n" if bad else "data path and reference agree\n"))
        for note in v.notes:
            out.write(f"{note}\n")
        if not v.ok:
            for m in v.mismatches[:20]:
                out.write(f"  {m}\n")
            raise MigrateError("stopping: the compiled programs disagree with the reference "
                               "semantics; nothing changed")
    if opts.dry_run:
        out.write("plan (dry run, nothing changed): load into bpf-iptables:\n")
        out.write(plan.save_text())
        if opts.commit:
            out.write(f"then flush netfilter's ({kind}) filter table\n")
        return result
    (directory / NETFILTER_BACKUP).write_text(text)
    (directory / BPF_BACKUP).write_text(_bpf("save", "-c", "-t", "filter"))
    (directory / RECORD).write_text(json.dumps({"source": kind, "committed": False}))
    _bpf("restore", "-c", stdin=plan.save_text())
    out.write(f"loaded {plan.rules} rules into bpf-iptables (enforced by the data path)\n")
    if opts.commit:
        if not enforced(directory, plan):
            raise MigrateError("not flushing netfilter: the data path is not attached here "
                               "(BPF_IPTABLES_DATAPATH=off?), so nothing would filter; "
                               "netfilter still filters, `migrate --rollback' undoes the load")
        source.flush(kind)
        (directory / RECORD).write_text(json.dumps({"source": kind, "committed": True}))
        out.write(f"flushed netfilter's ({kind}) filter table: bpf-iptables filters alone\n")
    else:
        out.write("netfilter still filters too (run with --commit to flush it)\n")
    return result


def rollback(out: TextIO) -> None:
    directory = state_dir()
    try:
        record = json.loads((directory / RECORD).read_text())
    except FileNotFoundError:
        raise MigrateError("no migration to roll back") from None
    kind = record["source"]
    source.restore(kind, (directory / NETFILTER_BACKUP).read_text())
    _bpf("restore", "-c", stdin=(directory / BPF_BACKUP).read_text())
    for name in (RECORD, NETFILTER_BACKUP, BPF_BACKUP):
        (directory / name).unlink(missing_ok=True)
    out.write(f"restored netfilter's ({kind}) filter table and bpf-iptables' previous rule set\n")
