"""REJECT replies through OUTPUT: point the ingress classifiers' SLOT_OUTPUT
at the generation's OUTPUT classifier (bpf/lib/reject_out.h).

In --mode tc the INPUT and FORWARD classifiers are TC programs, like
OUTPUT's: their reply builder (xdp_reject) tail-calls OUTPUT's classifier
through slot 4 of their own ``self_map`` with the reply, so OUTPUT counts
it and decides whether it is sent, as netfilter's OUTPUT does for
icmp_send()/nf_send_reset(). An empty slot (OUTPUT has nothing to do)
sends the reply unclassified. XDP classifiers cannot tail-call a TC
program: their slot stays empty (see the data path's README, "REJECT")."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import bpfsys
from .image import u32

SLOT_OUTPUT = 4        # bpf/lib/reject_out.h
INGRESS_HOOKS = ("INPUT", "FORWARD")


def link_output(hook_dir: Callable[[str], Path], hooks: dict[str, dict], tc: Callable[[str], bool]
                ) -> None:
    """Fill (or empty) SLOT_OUTPUT of every ingress classifier that is on
    in ``hooks`` (a generation's record), given where each hook's pins live
    and whether it is a TC program."""
    output = hooks.get("OUTPUT")
    prog = -1
    if output is not None and output.get("on"):
        prog = bpfsys.obj_get(str(hook_dir("OUTPUT") / "prog"))
    try:
        for hook in INGRESS_HOOKS:
            info = hooks.get(hook)
            if info is None or not info.get("on"):
                continue
            arr = bpfsys.obj_get(str(hook_dir(hook) / "self_map"))
            try:
                if prog >= 0 and tc(hook):
                    bpfsys.map_update(arr, u32(SLOT_OUTPUT), u32(prog))
                else:
                    bpfsys.map_delete(arr, u32(SLOT_OUTPUT))   # ENOENT: False
            finally:
                os.close(arr)
    finally:
        if prog >= 0:
            os.close(prog)

