"""bpf-iptables: the iptables command."""
from __future__ import annotations

if __name__ == "__main__":   # an attached namespace's server runs it (see cli/client.py)
    from .client import forward
    forward("iptables")

import errno
import sys

from ..cmdline import parse as P
from ..commands import Outcome, append_with_index, execute
from ..errors import NotSupported, TableOpError, XtablesError, VERSION_PROBLEM
from ..model import BUILTIN_CHAINS, Rule, Table
from ..validate import validate_table
from .. import state
from ..datapath import attachment as datapath_hook
from .common import PROGRAM_VERSION, report, short_lived, try_help
from .help import help_text

PROG = "bpf-iptables"
KNOWN_TABLES = ("filter", "nat", "mangle", "raw", "security")


def check_table(name: str) -> None:
    if name in BUILTIN_CHAINS:
        return
    if name in KNOWN_TABLES:
        raise NotSupported(f"table `{name}'")
    raise XtablesError(f"can't initialize iptables table `{name}': "
                       "Table does not exist (do you need to insmod?)", VERSION_PROBLEM)


def run(argv: list[str]) -> int:
    if argv[:1] == ["migrate"]:  # `bpf-iptables migrate ...' (see cli/migrate.py)
        from .migrate import run as migrate

        return migrate(argv[1:])
    try:
        parsed = P.CommandParser([PROG, *argv], help_printer=lambda m: help_text(PROG, m)).parse()
    except P.HelpRequested as h:
        sys.stdout.write(h.text)
        return 0
    except P.VersionRequested as v:
        sys.stdout.write(f"Not {PROGRAM_VERSION} ;-)\n" if v.invert else f"{PROG} v{PROGRAM_VERSION}\n")
        return 0
    except P.TryHelpExit as t:
        try_help(PROG)
        return t.status
    except XtablesError as exc:
        return report(PROG, exc)
    try:
        check_table(parsed.table)
        with state.locked(parsed.wait) as store:
            store = datapath_hook.wrap(store)  # attached namespaces only: see datapath/live.py
            outcome = Outcome()
            try:
                apply(parsed, store, outcome)
            except TableOpError as exc:
                sys.stdout.write("".join(outcome.stdout))
                return table_error(exc)
            except XtablesError as exc:
                sys.stdout.write("".join(outcome.stdout))
                return report(PROG, exc)
            sys.stdout.write("".join(outcome.stdout))
    except state.LockBusy as busy:
        sys.stderr.write(busy.message())
        return 4
    except XtablesError as exc:
        return report(PROG, exc)
    return 0


def apply(parsed: P.ParsedCommand, store: state.Store, outcome: Outcome) -> None:
    """Carry out the command on the namespace's stored rule set.

    An append goes to the journal when the chain index can vouch for it, so
    -A does not load and rewrite a large rule set; a delete loads the rule
    set to find its rule but only journals the change; anything else loads
    the rule set, changes it, checks it as the kernel would and saves it."""
    if parsed.command == P.CMD_APPEND:
        index = store.load_index(parsed.table)
        if index is not None:
            rules = append_with_index(parsed, index, outcome)
            if rules is not None:
                store.append(parsed.table, parsed.chain, rules)
                return
            outcome.stdout.clear()
    if parsed.command in (P.CMD_DELETE, P.CMD_DELETE_NUM) \
            and store.load_index(parsed.table) is not None:
        ruleset = store.load()
        table = ruleset.table(parsed.table)
        gone = deleted_rules(parsed, table)
        execute(parsed, table, outcome)
        if not any(jumps_to_user_chain(rule, table) for rule in gone or outcome.rules):
            if parsed.command == P.CMD_DELETE:
                store.delete(parsed.table, parsed.chain, outcome.rules)
            else:
                store.delete_num(parsed.table, parsed.chain, parsed.rulenum - 1)
            return
    else:
        ruleset = store.load()
        table = ruleset.table(parsed.table)
        execute(parsed, table, outcome)
    if outcome.changed:
        if parsed.command & ~ONLY_REMOVE:
            validate_table(table)
        store.save(ruleset)


# Commands that only remove rules or chains, or zero counters: a table the
# kernel accepted stays acceptable (every check of validate.py holds for
# fewer rules, and for fewer hooks reaching a chain), so they skip the check.
ONLY_REMOVE = (P.CMD_DELETE | P.CMD_DELETE_NUM | P.CMD_FLUSH | P.CMD_ZERO | P.CMD_ZERO_NUM
               | P.CMD_DELETE_CHAIN | P.CMD_LIST | P.CMD_LIST_RULES)


def deleted_rules(parsed: P.ParsedCommand, table: Table) -> list[Rule]:
    """The rule -D NUM will delete (none if there is no such rule)."""
    chain = table.chains.get(parsed.chain)
    if parsed.command != P.CMD_DELETE_NUM or chain is None:
        return []
    return chain.rules[parsed.rulenum - 1:parsed.rulenum]


def jumps_to_user_chain(rule: Rule, table: Table) -> bool:
    target = rule.target
    return target.is_standard and target.name in table.chains \
        and not table.chains[target.name].builtin


def table_error(exc: TableOpError) -> int:
    """iptables_main()'s report of a failed libiptc call."""
    msg = str(exc)
    if exc.err == errno.EINVAL:
        sys.stderr.write(f"{PROG}: {msg}. Run `dmesg' for more information.\n")
    else:
        sys.stderr.write(f"{PROG}: {msg}.\n")
    return 4 if exc.err == errno.EAGAIN else 1


def main() -> None:
    from .client import forward

    forward("iptables")   # returns when the command runs here
    short_lived()
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
