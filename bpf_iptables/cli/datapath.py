"""bpf-iptables-datapath: attach, detach or show the eBPF data path of the
network namespace it runs in (``ip netns exec NS bpf-iptables-datapath ...``).

Opt-in: until ``attach``, the namespace's rules are only stored and
printed. Once attached, every bpf-iptables / bpf-iptables-restore change
is compiled into the attached program before the command returns, and an
interface watcher (datapath/watch.py, started by ``attach``, stopped by
``detach``) covers interfaces that appear, vanish or are renamed later."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ..datapath import attachment as A
from ..datapath import watch
from ..errors import XtablesError
from .. import state

PROG = "bpf-iptables-datapath"


def status(directory) -> int:
    from ..datapath.status import report

    lines, ok = report(directory)
    pid = watch.running(directory)
    if pid is not None:
        lines.append(f"interface watcher pid {pid}")
    elif (directory / watch.PID_FILE).exists():
        # it was started and died: interfaces created from now on are
        # covered at the next update only
        lines.append("interface watcher not running (`attach' restarts it; "
                     f"log {directory / watch.LOG_FILE})")
        ok = False
    elif A.read(directory) is not None:
        lines.append("interface watcher off (attach --no-watch)")
    print("\n".join(lines))
    return 0 if ok else 1


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach", help="compile the filter table and attach it to every interface")
    a.add_argument("--mode", choices=("xdp", "xdpgeneric", "tc", "netfilter"),
                   default="xdpgeneric")
    a.add_argument("--no-watch", action="store_true",
                   help="no interface watcher: new interfaces are covered at the next update")
    sub.add_parser("detach", help="remove every program and pin of this namespace")
    sub.add_parser("status", help="show what is attached")
    args = parser.parse_args(argv)
    try:
        with state.locked(-1) as store:
            if args.command == "status":
                return status(store.directory)
            from ..datapath import live

            if args.command == "attach":
                att = live.attach(store, args.mode)
                if args.mode == "netfilter":
                    # linked at the hooks, not on interfaces (the watcher
                    # still recompiles -i/-o names when interfaces change)
                    print(f"attached program {att.prog_id} ({att.entries} entries) to the "
                          "netfilter hooks LOCAL_IN FORWARD LOCAL_OUT")
                else:
                    print(f"attached program {att.prog_id} ({att.entries} entries) to "
                          + " ".join(sorted(att.interfaces)))
                if args.no_watch:
                    watch.stop(store.directory)
                else:
                    try:
                        print(f"interface watcher pid {watch.start(store.directory)}")
                    except watch.WatcherError as exc:
                        sys.stderr.write(f"{PROG}: attached, but {exc}: interfaces created "
                                         "later are covered at the next update only\n")
                        return 1
            else:
                watch.stop(store.directory)   # before detaching: it would resync
                att = live.detach(store)
                print("detached" if att is not None else "not attached")
    except A.BpffsMissing as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except XtablesError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        return exc.status
    except (OSError, ImportError, subprocess.CalledProcessError) as exc:
        # what the system lacks or refuses, past datapath/support.py's checks:
        # a message, never a traceback
        root = "" if os.geteuid() == 0 else " (you must be root)"
        sys.stderr.write(f"{PROG}: {exc}{root}\n")
        return 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
