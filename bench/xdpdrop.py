"""The bare XDP drop program (bench/xdp_drop.c), held attached by a small
server process while the live benchmark sends.

    python -m bench.xdpdrop DEV       (inside the server namespace)

Loads the program with bcc, attaches it natively (XDP_FLAGS_DRV_MODE) to
DEV, prints ``ready``; then answers each ``count`` line on stdin with the
packets dropped so far; at end of input it detaches and exits. The device
lives in a namespace the bench deletes afterwards, which removes the
program too, should this process die first."""
from __future__ import annotations

import sys
from pathlib import Path

XDP_FLAGS_DRV_MODE = 1 << 2
SOURCE = Path(__file__).with_name("xdp_drop.c")


def main(argv: list[str]) -> int:
    from bcc import BPF

    dev = argv[0]
    bpf = BPF(src_file=str(SOURCE))
    fn = bpf.load_func("xdp_drop", BPF.XDP)
    bpf.attach_xdp(dev, fn, XDP_FLAGS_DRV_MODE)
    try:
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                print(sum(bpf["dropped"][0]), flush=True)
    finally:
        bpf.remove_xdp(dev, XDP_FLAGS_DRV_MODE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
