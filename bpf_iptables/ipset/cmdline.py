"""ipset 7.17's command line as bpf-iptables-set reads it: the command
names and their aliases, the global options (which may stand anywhere),
and the help text."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

from .model import TYPES, IpsetError, parameter_error

PROG = "bpf-iptables-set"
VERSION = "7.17"

COMMANDS = {
    "create": "create", "n": "create", "-N": "create", "--create": "create",
    "add": "add", "-A": "add", "--add": "add",
    "del": "del", "-D": "del", "--del": "del",
    "test": "test", "-T": "test", "--test": "test",
    "destroy": "destroy", "x": "destroy", "-X": "destroy", "--destroy": "destroy",
    "list": "list", "-L": "list", "--list": "list",
    "save": "save", "-S": "save", "--save": "save",
    "restore": "restore", "-R": "restore", "--restore": "restore",
    "flush": "flush", "-F": "flush", "--flush": "flush",
    "rename": "rename", "e": "rename", "-E": "rename", "--rename": "rename",
    "swap": "swap", "w": "swap", "-W": "swap", "--swap": "swap",
    "help": "help", "-h": "help", "-H": "help", "--help": "help",
    "version": "version", "-v": "version", "-V": "version", "--version": "version",
}
# old type names ipset still accepts
TYPE_ALIASES = {"iphash": "hash:ip", "nethash": "hash:net", "ipporthash": "hash:ip,port",
                "portmap": "bitmap:port"}
UNSUPPORTED_OPTIONS = ("counters", "comment", "skbinfo", "forceadd", "netmask", "bitmask",
                       "markmask", "skbmark", "skbprio", "skbqueue", "packets", "bytes")


@dataclass
class Options:
    exist: bool = False
    quiet: bool = False
    output: str = "plain"
    terse: bool = False
    names: bool = False
    sorted: bool = False
    file: str | None = None
    stdin: TextIO | None = None   # restore's input without -f (sys.stdin)


@dataclass
class Out:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


def split_options(argv: list[str], opts: Options) -> list[str]:
    """Take ipset's global options out of argv, wherever they stand."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-exist", "--exist", "-!"):
            opts.exist = True
        elif a in ("-q", "-quiet", "--quiet"):
            opts.quiet = True
        elif a in ("-t", "-terse", "--terse"):
            opts.terse = True
        elif a in ("-n", "-name", "--name"):
            opts.names = True
        elif a in ("-s", "-sorted", "--sorted"):
            opts.sorted = True
        elif a in ("-r", "-resolve", "--resolve"):
            pass   # names are never resolved here: numeric output either way
        elif a in ("-o", "-output", "--output"):
            if i + 1 >= len(argv):
                raise parameter_error("Missing mandatory argument of option `output'")
            i += 1
            if argv[i] not in ("plain", "save", "xml"):
                raise parameter_error(f"Syntax error: Unknown output mode '{argv[i]}'")
            if argv[i] == "xml":
                raise IpsetError("bpf-iptables-set: output mode xml is not supported")
            opts.output = argv[i]
        elif a in ("-f", "-file", "--file"):
            if i + 1 >= len(argv):
                raise parameter_error("Missing mandatory argument of option `file'")
            i += 1
            opts.file = argv[i]
        else:
            rest.append(a)
        i += 1
    return rest


HELP = f"""{PROG} v{VERSION}

Usage: {PROG} [options] COMMAND

Commands:
create SETNAME TYPENAME [type-specific-options]
        Create a new set
add    SETNAME ENTRY
        Add entry to the named set
del    SETNAME ENTRY
        Delete entry from the named set
test   SETNAME ENTRY
        Test entry in the named set
destroy [SETNAME]
        Destroy a named set or all sets
list   [SETNAME]
        List the entries of a named set or all sets
save   [SETNAME]
        Save the named set or all sets to stdout
restore
        Restore a saved state
flush  [SETNAME]
        Flush a named set or all sets
rename FROM-SETNAME TO-SETNAME
        Rename two sets
swap   FROM-SETNAME TO-SETNAME
        Swap the contect of two existing sets
help \\[TYPENAME]
        Print help, and settype specific help
version
        Print version information
quit
        Quit interactive mode

Options:
-o plain|save
        Specify output mode for listing sets.
        Default value for "list" command is mode "plain"
        and for "save" command is mode "save".
-s
        Print elements sorted (if supported by the set type).
-q
        Suppress any notice or warning message.
-r
        Try to resolve IP addresses in the output (slow!)
-!
        Ignore errors when creating or adding sets or
        elements that do exist or when deleting elements
        that don't exist.
-n
        When listing, just list setnames from the kernel.

-t
        When listing, list setnames and set headers
        from kernel only.
-f
        Read from the given file instead of standard
        input (restore) or write to given file (save).

Supported set types (bpf-iptables): {", ".join(TYPES)} (family inet)
"""


def words_command(argv: list[str]) -> str | None:
    """The command of a command line (its first word that names one)."""
    for a in argv:
        if a in COMMANDS:
            return COMMANDS[a]
    return None

