"""bpf-iptables-recent: the data path's -m recent lists of the network
namespace it runs in, as /proc/net/xt_recent/ shows them for iptables.

    bpf-iptables-recent                 the list names (ls /proc/net/xt_recent)
    bpf-iptables-recent NAME            its entries (cat /proc/net/xt_recent/NAME):
        src=ADDR ttl: T last_seen: J oldest_pkt: N J1, J2, ...
    bpf-iptables-recent NAME +ADDR      add ADDR, or stamp it again
    bpf-iptables-recent NAME -ADDR      remove ADDR
    bpf-iptables-recent NAME /          remove every entry

(the writes are what ``echo ... > /proc/net/xt_recent/NAME`` accepts; IPv4
only). A list exists while a rule of the attached rule set names it."""
from __future__ import annotations

import ipaddress
import os
import sys

from .. import state
from ..datapath import attachment as A
from ..datapath import bpfsys
from ..datapath import recent as R
from ..errors import XtablesError

PROG = "bpf-iptables-recent"


def apply_write(table: R.Table, text: str, now: int) -> None:
    """recent_mt_proc_write(): ``/`` flushes, ``+ADDR`` adds, ``-ADDR``
    removes; anything else is EINVAL."""
    if text.startswith("/"):
        table.flush()
        return
    if not text or text[0] not in "+-":
        raise OSError(22, 'Need "+ip", "-ip" or "/"')
    body = text[1:].split("\n", 1)[0]
    try:
        addr = int(ipaddress.IPv4Address(body))
    except ValueError:
        raise OSError(22, "illegal address written to procfs") from None
    if text[0] == "+":
        table.add(addr, now)
    else:
        table.remove(addr)


def run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__ or "")
        return 0
    if len(argv) > 2:
        sys.stderr.write(f"usage: {PROG} [NAME [+ADDR|-ADDR|/]]\n")
        return 2
    pin = R.tables_pin(A.ns_pins(state.namespace_dir()))
    if not pin.exists():
        if not argv:
            return 0
        sys.stderr.write(f"{PROG}: {argv[0]}: No such file or directory\n")
        return 1
    fd = bpfsys.obj_get(str(pin))
    try:
        if not argv:
            for name in sorted(R.read_tables(fd)):
                print(name)
            return 0
        table = R.lookup(fd, R.table_key(argv[0]))
        if table is None or table.name != argv[0]:
            sys.stderr.write(f"{PROG}: {argv[0]}: No such file or directory\n")
            return 1
        if len(argv) == 1:
            sys.stdout.write(table.proc_text())
            return 0
        try:
            apply_write(table, argv[1], R.jiffies_now())
            # read, changed and written back under the table's lock each
            # time: a packet's update in between is lost (a short window)
            R.store(fd, table)
        except OSError as exc:
            sys.stderr.write(f"{PROG}: write error: {exc.strerror or exc}\n")
            return 1
        return 0
    finally:
        os.close(fd)


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except XtablesError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
