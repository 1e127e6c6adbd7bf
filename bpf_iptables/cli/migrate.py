"""bpf-iptables migrate: take the namespace's filter table over from netfilter.

    bpf-iptables migrate [--source auto|legacy|nft] [--dry-run] [--commit]
                         [--partial] [--no-verify]
    bpf-iptables migrate --rollback

Reads netfilter's filter table, reports the rules bpf-iptables cannot
enforce (and stops, exit 2, unless --partial), checks the compiled programs
against the reference semantics on probe packets drawn from every rule,
loads the table (counters included) into bpf-iptables, and only with
--commit flushes netfilter's filter table so that traffic is filtered once.
--dry-run prints the plan and changes nothing; --rollback restores what a
migration saved."""
from __future__ import annotations

import argparse
import sys

from ..migrate import run as M
from ..migrate.plan import PlanError
from ..migrate.source import SourceError

PROG = "bpf-iptables migrate"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=("auto", "legacy", "nft"), default="auto",
                   help="where netfilter's rules are (auto: legacy if its filter table exists)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--commit", action="store_true",
                   help="flush netfilter's filter table once bpf-iptables enforces the rules")
    p.add_argument("--partial", action="store_true",
                   help="load the enforceable rules even if others cannot be enforced")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the probe-packet check of the compiled programs")
    p.add_argument("--rollback", action="store_true",
                   help="restore netfilter's and bpf-iptables' rule sets as a migration saved them")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.rollback:
            M.rollback(sys.stdout)
        else:
            M.migrate(M.Options(source=args.source, dry_run=args.dry_run, commit=args.commit,
                                partial=args.partial, verify=args.verify), sys.stdout)
    except M.MigrateError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: {exc}\n")
        return exc.status
    except (PlanError, SourceError) as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
