"""bpf-iptables-datapath: attach, detach or show the eBPF data path of the
network namespace it runs in (``ip netns exec NS bpf-iptables-datapath ...``).

Opt-in: until ``attach``, the namespace's rules are only stored and
printed. Once attached, every bpf-iptables / bpf-iptables-restore change
is compiled into the attached program before the command returns, and an
interface watcher (datapath/watch.py, started by ``attach``, stopped by
``detach``) covers interfaces that appear, vanish or are renamed later."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ..datapath import attachment as A
from ..datapath import watch
from ..errors import XtablesError
from .. import state

PROG = "bpf-iptables-datapath"


def _xdp_ids() -> dict[str, int]:
    """Interface -> id of the XDP program the kernel has on it (0: none)."""
    out = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True)
    ids = {}
    for link in json.loads(out.stdout or "[]"):
        xdp = link.get("xdp") or {}
        prog = xdp.get("prog") or {}
        if not prog and xdp.get("attached"):
            prog = (xdp["attached"][0] or {}).get("prog") or {}
        ids[link["ifname"]] = int(prog.get("id", 0))
    return ids


def status(directory) -> int:
    att = A.read(directory)
    if att is None:
        print("not attached")
        return 0
    ids = _xdp_ids()
    print(f"attached mode {att.mode} program {att.prog_id} generation {att.generation} "
          f"entries {att.entries}")
    print(f"pins {A.pin_dir(directory, att.generation)}")
    bad = 0
    pid = watch.running(directory)
    if pid is not None:
        print(f"interface watcher pid {pid}")
    elif (directory / watch.PID_FILE).exists():
        # it was started and died: interfaces created from now on are
        # covered at the next update only
        print(f"interface watcher not running (`attach' restarts it; log {directory / watch.LOG_FILE})")
        bad += 1
    else:
        print("interface watcher off (attach --no-watch)")
    for name, (index, flags) in sorted(att.interfaces.items(), key=lambda kv: kv[1][0]):
        mode = "xdpgeneric" if flags == 2 else "xdp"
        seen = ids.get(name, 0)
        ok = seen == att.prog_id
        bad += not ok
        print(f"  {name} ifindex {index} {mode} {'ok' if ok else f'program {seen} (expected {att.prog_id})'}")
    if att.forward_prog_id:
        print(f"FORWARD program {att.forward_prog_id} behind the ingress dispatcher {att.prog_id}")
    if att.output_prog_id:
        print(f"OUTPUT program {att.output_prog_id} at TC egress")
        for name in sorted(att.interfaces, key=lambda n: att.interfaces[n][0]):
            tc = subprocess.run(["tc", "filter", "show", "dev", name, "egress"],
                                capture_output=True, text=True).stdout
            ok = f" id {att.output_prog_id} " in tc
            bad += not ok
            print(f"  {name} egress {'ok' if ok else 'missing'}")
    for name in sorted(set(ids) - set(att.interfaces)):
        # covered from the next update on (any bpf-iptables change, or attach)
        print(f"  {name} not attached (created after the last update)")
        bad += 1
    return 1 if bad else 0


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach", help="compile INPUT and attach it to every interface")
    a.add_argument("--mode", choices=("xdp", "xdpgeneric", "tc"), default="xdpgeneric")
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
