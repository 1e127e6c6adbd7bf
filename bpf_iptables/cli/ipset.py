"""bpf-iptables-set: an ipset 7.17 work-alike whose sets live in the
namespace's state directory and pinned BPF maps (bpf_iptables/ipset)."""
from __future__ import annotations

import sys

from ..ipset.command import execute
from ..state import namespace_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return execute(args, namespace_dir(), sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
