"""Load an iptables-restore file into bpf-iptables' state in-process.

Only a stand-in used by the benchmark while ``bpf-iptables-restore`` does not
exist, so that ``-A`` latency can still be measured with a large rule set
loaded. It understands just what ClassBench rule sets contain (one table,
chain declarations, -A lines) and goes through the same parser and command
executor as ``bpf-iptables``."""
from __future__ import annotations

import shlex
import sys

from bpf_iptables import state
from bpf_iptables.cmdline import parse as P
from bpf_iptables.commands import execute
from bpf_iptables.validate import validate_table


def main() -> int:
    table_name = "filter"
    argvs: list[list[str]] = []
    for line in sys.stdin:
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table_name = line[1:]
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            argvs.append(["-N", chain] if policy == "-" else ["-P", chain, policy])
        else:
            argvs.append(shlex.split(line))
    with state.locked(0) as store:
        ruleset = store.load()
        table = ruleset.table(table_name)
        for argv in argvs:
            parsed = P.CommandParser(["bpf-iptables", "-t", table_name, *argv]).parse()
            execute(parsed, table)
        validate_table(table)
        store.save(ruleset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
