"""-m set: match against an ipset (libxt_set revision 4, xt_set).

iptables resolves the set name to the kernel's set index while parsing
(getsockopt SO_IP_SET on a raw socket), so a rule naming a set that does
not exist in the namespace is refused there with "Set NAME doesn't exist."
bpf-iptables looks the name up in the namespace's bpf-iptables-set store
(bpf_iptables/ipset) first, then in the kernel's ipset the same way as
iptables (``IpsetKernel``), and keeps the name in the rule. A set of the
store cannot be destroyed or renamed while a rule names it (the store
counts the rules, as the kernel counts references), and ``swap`` keeps
names, so the name identifies the set exactly as iptables' index does.

Reference semantics and the data path (a per-candidate check, see
datapath/sets.py and bpf/lib/set.h) use the store's sets; a set only the
kernel has (made by the real ``ipset``) is refused (NotSupported).
``--return-nomatch`` makes a hash:net set match where its most specific
element is ``nomatch`` (and only there); other types ignore it (as
measured against xt_set). The counter options (``--packets-*``,
``--bytes-*``, ``! --update-counters``) act on sets created with
``counters`` only, which bpf-iptables-set does not make: the kernel skips
them for every other set, and so do these."""
from __future__ import annotations

import ctypes
import ctypes.util
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import NotSupported, XtablesError
from ..numbers import UINT64_MAX, strtoul
from .base import MatchExtension, ParseContext

if TYPE_CHECKING:
    from ..model import Rule
    from ..reference.packet import Packet

IPSET_MAXNAMELEN = 32
IPSET_DIM_MAX = 6
IPSET_INVALID_ID = 65535
SO_IP_SET = 83
IP_SET_OP_VERSION = 0x100
IP_SET_OP_GET_BYNAME = 0x6
IP_SET_OP_GET_FNAME = 0x8
NFPROTO_UNSPEC, NFPROTO_IPV4 = 0, 2
# counter comparisons (IPSET_COUNTER_*)
NONE, EQ, NE, LT, GT = 0, 1, 2, 3, 4
# flags
INV_MATCH = 1                      # IPSET_INV_MATCH (match_set.flags bit 0)
RETURN_NOMATCH = 1 << 7            # IPSET_FLAG_RETURN_NOMATCH
SKIP_COUNTER_UPDATE = 1 << 8
SKIP_SUBCOUNTER_UPDATE = 1 << 9


class _ReqVersion(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint), ("version", ctypes.c_uint)]


class _ReqGetSetFamily(ctypes.Structure):
    _fields_ = [("op", ctypes.c_uint), ("version", ctypes.c_uint),
                ("family", ctypes.c_uint), ("name", ctypes.c_char * IPSET_MAXNAMELEN)]


class IpsetKernel:
    """The kernel's ipset of the current namespace, as libxt_set asks it."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def _getsockopt(self, sock: socket.socket, req: ctypes.Structure) -> tuple[int, int, int]:
        size = ctypes.c_uint(ctypes.sizeof(req))
        res = self.libc.getsockopt(sock.fileno(), socket.SOL_IP, SO_IP_SET,
                                   ctypes.byref(req), ctypes.byref(size))
        return res, ctypes.get_errno(), size.value

    def _version(self, sock: socket.socket) -> int:
        req = _ReqVersion(IP_SET_OP_VERSION, 0)
        res, _, _ = self._getsockopt(sock, req)
        if res != 0:
            raise XtablesError("Kernel module xt_set is not loaded in.\n", 1)
        return req.version

    def lookup(self, name: str) -> None:
        """get_set_byname(): refuse a name the kernel does not know."""
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError as err:
            raise XtablesError("Can't open socket to ipset.\n", 1) from err
        with sock:
            version = self._version(sock)
            req = _ReqGetSetFamily(IP_SET_OP_GET_FNAME, version, 0,
                                   name.encode("utf-8", "surrogateescape")[:IPSET_MAXNAMELEN - 1])
            res, err, size = self._getsockopt(sock, req)
        if res != 0:
            raise XtablesError(f"Problem when communicating with ipset, errno={err}.\n", 1)
        if size != ctypes.sizeof(req):
            raise XtablesError("Incorrect return size from kernel during ipset lookup, "
                               f"(want {ctypes.sizeof(req)}, got {size})\n", 1)
        index = int.from_bytes(bytes(req)[12:14], sys.byteorder)
        if index == IPSET_INVALID_ID:
            raise XtablesError(f"Set {name} doesn't exist.\n")
        if req.family not in (NFPROTO_IPV4, NFPROTO_UNSPEC):
            raise XtablesError(f"The protocol family of set {name} is IPv6, "
                               "which is not applicable.\n")


@dataclass(frozen=True)
class Counter:
    op: int = NONE
    value: int = 0


@dataclass(frozen=True)
class SetData:
    """``struct xt_set_info_match_v4``, with the set's name for its index."""

    name: str
    dirs: tuple[str, ...]          # "src"/"dst" per dimension
    invert: bool = False
    flags: int = 0
    packets: Counter = Counter()
    bytes: Counter = Counter()


def parse_counter(text: str) -> int:
    value = strtoul(text, 0, UINT64_MAX)
    if value is None:
        raise XtablesError(f"Cannot parse {text} as a counter value")
    return value


def parse_dirs(text: str) -> tuple[str, ...]:
    """parse_dirs(): at most IPSET_DIM_MAX comma-separated src/dst words
    (only their first three letters are looked at)."""
    parts = text.split(",")
    dirs = []
    for part in parts[:IPSET_DIM_MAX]:
        if part.startswith("src"):
            dirs.append("src")
        elif part.startswith("dst"):
            dirs.append("dst")
        else:
            raise XtablesError("You must spefify (the comma separated list of) 'src' or 'dst'.")
    if len(parts) > IPSET_DIM_MAX:
        raise XtablesError(f"Can't be more src/dst options than {IPSET_DIM_MAX}.")
    return tuple(dirs)


_COUNTER_OPTS = {"packets-eq": ("packets", EQ), "packets-lt": ("packets", LT),
                 "packets-gt": ("packets", GT), "bytes-eq": ("bytes", EQ),
                 "bytes-lt": ("bytes", LT), "bytes-gt": ("bytes", GT)}


class SetMatch(MatchExtension):
    name = "set"
    help_text = (
        "set match options:\n"
        " [!] --match-set name flags [--return-nomatch]\n"
        "   [! --update-counters] [! --update-subcounters]\n"
        "   [[!] --packets-eq value | --packets-lt value | --packets-gt value\n"
        "   [[!] --bytes-eq value | --bytes-lt value | --bytes-gt value\n"
        "\t\t 'name' is the set name from to match,\n"
        "\t\t 'flags' are the comma separated list of\n"
        "\t\t 'src' and 'dst' specifications.\n")
    getopt_options = (("match-set", True, "match-set"), ("set", True, "set"),
                      ("return-nomatch", False, "return-nomatch"),
                      ("update-counters", False, "update-counters"),
                      ("packets-eq", True, "packets-eq"), ("packets-lt", True, "packets-lt"),
                      ("packets-gt", True, "packets-gt"), ("bytes-eq", True, "bytes-eq"),
                      ("bytes-lt", True, "bytes-lt"), ("bytes-gt", True, "bytes-gt"),
                      ("update-subcounters", False, "update-subcounters"))

    def __init__(self) -> None:
        self.kernel: IpsetKernel | None = None

    def init(self) -> dict[str, Any]:
        return {"flags": 0, "packets": Counter(), "bytes": Counter()}

    def parse(self, state: dict[str, Any], option: str, arg: str | None, invert: bool,
              ctx: ParseContext) -> None:
        """set_parse_v4()."""
        if option == "update-subcounters":
            if invert:
                state["flags"] |= SKIP_SUBCOUNTER_UPDATE
        elif option in _COUNTER_OPTS:
            which, op = _COUNTER_OPTS[option]
            if state[which].op != NONE:
                raise XtablesError(f"only one of the --{which}-[eq|lt|gt] is allowed")
            if invert and op != EQ:
                raise XtablesError(f"--{option} option cannot be inverted")
            state[which] = Counter(NE if invert else op, parse_counter(arg or ""))
        elif option == "update-counters":
            if invert:
                state["flags"] |= SKIP_COUNTER_UPDATE
        elif option == "return-nomatch":
            if invert:
                raise XtablesError("--return-nomatch flag cannot be inverted")
            state["flags"] |= RETURN_NOMATCH
        elif option in ("set", "match-set"):
            if option == "set":
                sys.stderr.write("--set option deprecated, please use --match-set\n")
            if "name" in state:
                raise XtablesError("--match-set can be specified only once")
            if invert:
                state["invert"] = True
            reader = ctx.argv
            if reader.optind >= reader.argc or reader.argv[reader.optind][:1] in ("-", "!"):
                raise XtablesError("--match-set requires two args.")
            name = arg or ""
            if len(name.encode("utf-8", "surrogateescape")) > IPSET_MAXNAMELEN - 1:
                raise XtablesError(f"setname `{name}' too long, max "
                                   f"{IPSET_MAXNAMELEN - 1} characters.")
            from ..reference.sets import lookup

            if lookup(name) is None:
                if self.kernel is None:
                    self.kernel = IpsetKernel()
                self.kernel.lookup(name)
            state["dirs"] = parse_dirs(reader.take())
            state["name"] = name

    def final_check(self, state: dict[str, Any], ctx: ParseContext) -> SetData:
        if "name" not in state:
            raise XtablesError("You must specify `--match-set' with proper arguments")
        return SetData(state["name"], state["dirs"], state.get("invert", False),
                       state["flags"], state["packets"], state["bytes"])

    def _text(self, d: SetData, opt: str, sep: str) -> str:
        out = f"{' !' if d.invert else ''} {opt} {d.name} {','.join(d.dirs)}"
        if d.flags & RETURN_NOMATCH:
            out += f" {sep}return-nomatch"
        if d.flags & SKIP_COUNTER_UPDATE:
            out += f" ! {sep}update-counters"
        if d.flags & SKIP_SUBCOUNTER_UPDATE:
            out += f" ! {sep}update-subcounters"
        for which, c in (("packets", d.packets), ("bytes", d.bytes)):
            word = {EQ: "eq", NE: "eq", LT: "lt", GT: "gt"}.get(c.op)
            if word:
                out += f"{' !' if c.op == NE else ''} {sep}{which}-{word} {c.value}"
        return out

    def save(self, d: SetData) -> str:
        return self._text(d, "--match-set", "--")

    def print(self, d: SetData, numeric: bool) -> str:
        return self._text(d, "match-set", "")

    def matches(self, d: SetData, pkt: "Packet") -> bool:
        """xt_set's set_match_v4 on a set without counters (see above)."""
        from ..ipset.match import packet_in_set
        from ..ipset.model import now_ns
        from ..reference.sets import lookup

        s = lookup(d.name)
        if s is None:
            raise NotSupported(f"match `set' on `{d.name}', which is not a bpf-iptables-set set, "
                               "in the reference semantics")
        return packet_in_set(s, d.dirs, pkt, now_ns(),
                             bool(d.flags & RETURN_NOMATCH)) != d.invert

    def lower(self, d: SetData, rule: "Rule") -> list[Any]:
        """A per-candidate check (datapath/sets.py resolves the set)."""
        from ..datapath.fields import SetCheck

        return [SetCheck(d.name, d.dirs, d.invert, bool(d.flags & RETURN_NOMATCH))]


EXTENSIONS = [SetMatch()]
