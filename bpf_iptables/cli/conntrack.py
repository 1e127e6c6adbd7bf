"""bpf-iptables-conntrack: the eBPF connection tracking table of the network
namespace it runs in (``ip netns exec NS bpf-iptables-conntrack -L``), in
conntrack-tools' formats: -L lists, -F flushes, -C counts. Also: -S
statistics (entries, inserts, deletes, LRU evictions, expired entries the
namespace's daemon swept; every command first deletes the expired entries), --set NAME=SECONDS
to set a timeout by its sysctl name (nf_conntrack_udp_timeout, ...; kept
with the namespace's state, so it holds across detach and attach), -T to
show the timeouts in force.

The table exists once the namespace's attached rule set uses conntrack."""
from __future__ import annotations

import argparse
import sys
import time

from .. import state
from ..conntrack import listing
from ..conntrack import table as T
from ..datapath import attachment as A
from ..errors import XtablesError

PROG = "bpf-iptables-conntrack"
VERSION = "conntrack v1.4.7 (conntrack-tools)"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-L", "--dump", action="store_true", help="list the entries")
    what.add_argument("-F", "--flush", action="store_true", help="delete every entry")
    what.add_argument("-C", "--count", action="store_true", help="count the entries")
    what.add_argument("-S", "--stats", action="store_true", help="table statistics")
    what.add_argument("-T", "--timeouts", action="store_true", help="timeouts in force")
    what.add_argument("--set", metavar="NAME=SECONDS", action="append",
                      help="set a timeout (nf_conntrack_*_timeout* names) or "
                           "nf_conntrack_tcp_loose=0|1")
    args = parser.parse_args(argv)
    # no xtables lock: the table is the data path's, not the rule set's
    directory = state.namespace_dir()
    d = T.conntrack_dir(A.ns_pins(directory))
    if args.set:
        values = {}
        for item in args.set:
            name, _, value = item.partition("=")
            try:
                values[name.strip()] = int(value)
            except ValueError:
                parser.error(f"--set {item}: SECONDS must be an integer")
        try:
            T.save_settings(directory, values)   # kept for later attaches
        except (KeyError, ValueError) as exc:
            sys.stderr.write(f"{PROG}: {exc.args[0]}\n")
            return 2
        T.apply_settings(directory, d)
        return 0
    if not (d / "table").exists():
        if args.dump:
            sys.stderr.write(f"{VERSION}: 0 flow entries have been shown.\n")
            return 0
        if args.count:
            print(0)
            return 0
        sys.stderr.write(f"{PROG}: no connection tracking in this network namespace "
                         "(no attached rule uses conntrack)\n")
        return 1
    T.gc(d)   # expired entries go (and leave the statistics exact)
    if args.dump:
        now = time.monotonic()
        rows = sorted(T.read(d), key=lambda r: r.key)
        for r in rows:
            print(listing.line(r.as_entry(), now))
        sys.stderr.write(f"{VERSION}: {len(rows)} flow entries have been shown.\n")
    elif args.count:
        print(len(T.read(d)))
    elif args.flush:
        T.flush(d)
        sys.stderr.write(f"{VERSION}: connection tracking table has been emptied.\n")
    elif args.stats:
        s = T.stats(d)
        print(f"entries={s.entries} inserts={s.inserts} deletes={s.deletes} "
              f"evictions={s.evictions} swept={s.swept}")
    else:
        for name, value in sorted(T.timeouts(d).items()):
            print(f"{name} = {value}")
    return 0


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except XtablesError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
