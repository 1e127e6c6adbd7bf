"""The getopt_long() emulation against glibc's own getopt_long().

iptables' syntax is whatever glibc's getopt_long makes of argv with
iptables' option tables, so the oracle here is glibc itself, called through
ctypes with the same optstring and long options: every call must return
the same option, argument and optind."""
from __future__ import annotations

import ctypes
import ctypes.util

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf_iptables.cmdline.getopt import (MISSING_ARG, NO_ARGUMENT, NON_OPTION, REQUIRED_ARGUMENT,
                                         UNKNOWN, Getopt, LongOption)
from bpf_iptables.cmdline.parse import IPT_OPTSTRING, ORIGINAL_OPTS

LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


class COption(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("has_arg", ctypes.c_int),
                ("flag", ctypes.POINTER(ctypes.c_int)), ("val", ctypes.c_int)]


# Extension options merged after the originals, as -p tcp does; their val
# is 0x100 + index so they never collide with a short option's code.
EXTRA_OPTS = [("dport", REQUIRED_ARGUMENT), ("destination-port", REQUIRED_ARGUMENT),
              ("syn", NO_ARGUMENT), ("sport", REQUIRED_ARGUMENT)]


def glibc_getopt(argv: list[str], longopts: list[tuple[str, int, int]]) -> list[tuple]:
    """Every getopt_long() call until it returns -1: (code, optarg, optind)."""
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
    table = (COption * (len(longopts) + 1))(
        *[COption(n.encode(), h, None, v) for n, h, v in longopts], COption(None, 0, None, 0))
    optind = ctypes.c_int.in_dll(LIBC, "optind")
    opterr = ctypes.c_int.in_dll(LIBC, "opterr")
    optarg = ctypes.c_char_p.in_dll(LIBC, "optarg")
    optind.value = 0          # 0 makes glibc reinitialise its scanner
    opterr.value = 0          # iptables sets opterr = 0 as well
    calls = []
    for _ in range(4 * len(argv) + 4):
        ret = LIBC.getopt_long(len(argv), c_argv, IPT_OPTSTRING.encode(), table, None)
        if ret == -1:
            calls.append((None, None, optind.value))
            return calls
        arg = optarg.value.decode() if optarg.value is not None else None
        calls.append((ret, arg, optind.value))
    raise AssertionError("getopt_long did not terminate")


def glibc_longopts() -> list[tuple[str, int, int]]:
    opts = [(name, has, ord(short)) for name, has, short in ORIGINAL_OPTS]
    return opts + [(name, has, 0x100 + i) for i, (name, has) in enumerate(EXTRA_OPTS)]


def ours(argv: list[str]) -> list[tuple]:
    longopts = [LongOption(n, h, v) for n, h, v in ORIGINAL_OPTS]
    longopts += [LongOption(name, has, 0x100 + i) for i, (name, has) in enumerate(EXTRA_OPTS)]
    g = Getopt(list(argv), IPT_OPTSTRING, longopts)
    calls = []
    for _ in range(4 * len(argv) + 4):
        res = g.next()
        if res is None:
            calls.append((None, None, g.optind))
            return calls
        code = res.code
        special = {NON_OPTION: 1, UNKNOWN: ord("?"), MISSING_ARG: ord(":")}
        if isinstance(code, str):
            code = special.get(code, ord(code) if len(code) == 1 else code)
        calls.append((code, res.optarg, g.optind))
    raise AssertionError("emulation did not terminate")


TOKENS = [
    "-A", "INPUT", "-L", "-Ln", "-nL", "-vnxL", "--list", "--list=INPUT", "--li", "--line",
    "--l", "--lis", "--list-r", "-n", "-w", "-w5", "-W", "--wait", "--wait=3", "--wait-i=2",
    "-c", "1", "2", "--", "-", "!", "-Z", "-ZINPUT", "--zzz", "-x", "-j", "ACCEPT", "--app",
    "--ver", "--vers", "--verb", "-h", "--help=x", "--numeric=1", "--dport", "--d", "--de",
    "--dest", "--destination", "--destination-p", "--syn", "--syn=1", "--sy", "--s",
    "--so", "--sp", "-p", "tcp", "-Q", "-:", "-?", "--=x", "---", "-s1.2.3.4", "-sa", "-4",
    "-6", "--goto", "-g", "--fragment", "-f", "-F", "-Fx", "-X", "-S", "-SINPUT", "-D",
    "--delete=INPUT", "--delete", "-I", "--in", "--in-interface=lo", "--out", "-o", "--m",
]


@pytest.mark.parametrize("argv", [
    ["-A", "INPUT", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"],
    ["-nvL", "INPUT"], ["-Ln"], ["--list=INPUT", "--line"], ["--l"], ["--ver"],
    ["-A"], ["-A", "INPUT", "-s"], ["--app"], ["--app", "INPUT", "--dport"],
    ["-L", "--", "-n"], ["-w", "5", "-L"], ["--wait=3", "-L"], ["--syn=1"], ["--d", "1"],
    ["!", "-s", "1.2.3.4"], ["-", "-L"], ["-Q"], ["--zzz=1"], ["-c", "1", "2"],
])
def test_known_command_lines(argv: list[str]) -> None:
    full = ["iptables", *argv]
    assert ours(full) == glibc_getopt(full, glibc_longopts())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(TOKENS), max_size=8))
def test_random_command_lines(argv: list[str]) -> None:
    full = ["iptables", *argv]
    assert ours(full) == glibc_getopt(full, glibc_longopts())
