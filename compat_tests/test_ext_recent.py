"""recent, hashlimit and set against real iptables-legacy.

Every rule line of iptables' own libxt_recent.t, libxt_hashlimit.t and
libxt_set.t plus our own cases (errors, defaults, inversions, kernel
refusals) run with iptables-legacy and bpf-iptables (model only), each in
its own fresh namespace: stdout, stderr and exit status of -A, -S, -L,
-L -n -v -x, -C and -D must be identical after normalising the program
name. -m set needs a real ipset in the namespace: both namespaces get an
ipset "foo" (hash:ip) after the .t lines (which expect no such set), as
iptables resolves set names in the namespace's kernel.

Where this kernel disagrees with a .t file's expectation the real tool
wins, and the line is listed in KERNEL_DEPENDENT with the reason."""
from __future__ import annotations

import shlex
import subprocess

import pytest

from tests.support.pair import Pair, pair
from tests.support.tfiles import read_t_file

LISTINGS = (("-S",), ("-L",), ("-L", "-n", "-v", "-x"))
IN = ("INPUT",)

# .t lines whose outcome depends on the kernel, not on iptables:
# xt_recent refuses a --hitcount above ip_pkt_list_tot, a module parameter
# that is 0 (no limit but XT_RECENT_MAX_NSTAMPS) on this machine's kernel.
KERNEL_DEPENDENT = {
    "-m recent --rcheck --hitcount 999 --name foo --mask 255.255.255.255 --rsource",
}

EXTRA: dict[str, list[str]] = {
    "libxt_recent.t": [
        "-m recent --rcheck --hitcount 65536 --name foo",
        "-m recent ! --update --seconds 60 --reap --hitcount 3 --name ab --rdest --mask 255.255.0.0",
        "-m recent --update --seconds 60 --name a/b",
        "-m recent",
        "-m recent --set --rcheck",
        "-m recent --reap --rcheck",
        "-m recent --set --seconds 5",
        "-m recent --remove --hitcount 5",
        "-m recent --rcheck --name ''",
        "-m recent --rcheck --seconds 0",
        "-m recent --rcheck --seconds 4294967295 --hitcount 2",
        "-m recent --rcheck --rdest --rsource --mask 1.2.3.4",
        "-m recent --rcheck --name 'x y'",
        "-m recent --set --set",
        "-m recent ! --set --name DEFAULT",
        # ufw's rate limiting, as it writes it
        "-p tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 "
        "--hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource",
    ],
    "libxt_hashlimit.t": [
        "-m hashlimit --hashlimit-upto 96b/s --hashlimit-burst 5 --hashlimit-name mini1",
        "-m hashlimit ! --hashlimit-above 3/min --hashlimit-mode srcip,dstport,srcport,dstip "
        "--hashlimit-srcmask 24 --hashlimit-dstmask 0 --hashlimit-name x",
        "-m hashlimit --hashlimit 3/hour --hashlimit-mode foo --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 3/fortnight --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/day --hashlimit-burst 5 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-burst 1000001 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-srcmask 33 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-srcmask 255.255.0.0 "
        "--hashlimit-dstmask 0.0.0.0 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-srcmask 255.0.255.0 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-srcmask foo --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-name a/b",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-name x --hashlimit-htable-expire 0",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-above 2/sec --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/sec --hashlimit-name x --hashlimit-rate-interval 0",
        "-m hashlimit --hashlimit-upto 7/min --hashlimit-burst 3k --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 100000000/sec --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 5/s --hashlimit-burst 0x10 --hashlimit-mode srcip,,dstip "
        "--hashlimit-name x",
        "-m hashlimit --hashlimit-upto 5/s --hashlimit-burst 0 --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 5/s --hashlimit-burst 5x --hashlimit-name x",
        "-m hashlimit --hashlimit-upto 1/s --hashlimit-name x --hashlimit-name y",
    ],
    "libxt_set.t": [
        "-m set --match-set foo src,dst",
        "-m set --match-set bar src",
        "-m set ! --match-set foo src --return-nomatch ! --update-counters --packets-gt 5 "
        "! --bytes-eq 3",
        "-m set --match-set foo src,dst,src,dst,src,dst",
        "-m set --match-set foo src,dst,src,dst,src,dst,src",
        "-m set --match-set foo srcx,dstfoo",
        "-m set --match-set foo sr",
        "-m set --match-set foo src --match-set foo dst",
        "-m set --set foo src",
        "-m set --match-set foo src ! --packets-lt 3",
        "-m set --match-set foo src --packets-lt 3 --packets-gt 4",
        "-m set --match-set foo src --bytes-lt 3 ! --update-subcounters --update-counters",
        "-m set --match-set foo src --bytes-lt x",
        "-m set --match-set foo src ! --return-nomatch",
        "-m set --match-set foo -j ACCEPT",
        "-m set --match-set abcdefghijabcdefghijabcdefghijabcdef src",
        "-m set --return-nomatch",
        "-m set ! --match-set foo dst --packets-eq 0x10 --bytes-gt 18446744073709551615",
        "-m set --match-set v6 src",
        "-m set --match-set ports dst",
    ],
}


def check_rule(p: Pair, chains: tuple[str, ...], rule: str, ok: bool | None = None,
               save: str | None = None) -> None:
    """Append in both tools and compare; if accepted, compare the listings,
    then -C and -D it (as tests/test_ext_batch_b.py does)."""
    args = shlex.split(rule)
    added: list[str] = []
    for chain in chains:
        real = p.assert_same("-A", chain, *args)
        if ok is not None:
            assert (real.returncode == 0) == ok, f"{chain}: {rule}: {real}"
        if real.returncode == 0:
            added.append(chain)
        elif real.returncode == 2:
            break
    if not added:
        return
    for listing in LISTINGS:
        out = p.assert_same(*listing)
        if save is not None and listing == ("-S",):
            for chain in added:
                assert f"-A {chain} {save}\n" in out.stdout
    p.assert_same("-C", added[0], *args)
    p.assert_same("-D", added[0], *args)
    p.assert_same("-C", added[0], *args)
    p.assert_same("-F")


def make_ipset(p: Pair, name: str, *spec: str) -> None:
    for ns in (p.real, p.ours):
        subprocess.run(["ip", "netns", "exec", ns.name, "ipset", "create", name, *spec],
                       check=True, capture_output=True)


@pytest.mark.parametrize("t_file", list(EXTRA))
def test_against_iptables(t_file: str) -> None:
    lines = read_t_file(t_file)
    assert lines, t_file
    with pair("bpfrc", fast=True) as p:
        for line in lines:
            dependent = line.rule in KERNEL_DEPENDENT
            check_rule(p, line.chains, line.rule, None if dependent else line.ok,
                       line.save if line.ok and not dependent else None)
        if t_file == "libxt_set.t":
            # libxt_set.t's lines expect "foo" not to exist; ours need it
            make_ipset(p, "foo", "hash:ip")
            make_ipset(p, "v6", "hash:ip", "family", "inet6")   # refused: IPv6
            make_ipset(p, "ports", "bitmap:port", "range", "0-1000")
        for rule in EXTRA[t_file]:
            check_rule(p, IN, rule)


def test_help_texts() -> None:
    with pair("bpfrc", fast=True) as p:
        for ext in ("recent", "hashlimit", "set"):
            real, ours = p.both("-m", ext, "-h")
            assert real.returncode == ours.returncode == 0
            assert ours.stdout.replace("bpf-iptables", "iptables") == real.stdout
