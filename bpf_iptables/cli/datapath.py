"""bpf-iptables-datapath: attach, detach or show the eBPF data path of the
network namespace it runs in (``ip netns exec NS bpf-iptables-datapath ...``).

Opt-in: until ``attach``, the namespace's rules are only stored and
printed. Once attached, every bpf-iptables / bpf-iptables-restore change
is compiled into the attached program before the command returns."""
from __future__ import annotations

import argparse
import sys

from ..datapath import attachment as A
from ..errors import XtablesError
from .. import state

PROG = "bpf-iptables-datapath"


def status(directory) -> int:
    from ..datapath.status import report

    lines, ok = report(directory)
    print("\n".join(lines))
    return 0 if ok else 1


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach", help="compile the filter table and attach it to every interface")
    a.add_argument("--mode", choices=("xdp", "xdpgeneric", "tc"), default="xdpgeneric")
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
                print(f"attached program {att.prog_id} ({att.entries} entries) to "
                      + " ".join(sorted(att.interfaces)))
            else:
                att = live.detach(store)
                print("detached" if att is not None else "not attached")
    except A.BpffsMissing as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except XtablesError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        return exc.status
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
