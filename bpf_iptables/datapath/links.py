"""Root programs on interfaces: one pinned bpf link per interface and hook.

Ingress: the XDP root (``--mode xdp``: native XDP where the driver has
it, generic XDP otherwise, e.g. lo; ``xdpgeneric``: generic everywhere),
or the TC ingress root (``--mode tc``, a TCX link: no qdisc needed).
Egress: the TC egress root (OUTPUT), a TCX link, in every mode.

A link is the attachment: pinned at ``link/<ifindex>-<hook>`` it outlives
the process; removing the pin (and detaching the link) takes the program
off the device. An XDP link refuses a device that already has an XDP
program (EBUSY): somebody else's program is never replaced. Links of a
device that was deleted are defunct (ifindex 0) and only need unpinning."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from . import attachment as A
from . import bpfsys

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODES = {"xdp": XDP_FLAGS_DRV_MODE, "xdpgeneric": XDP_FLAGS_SKB_MODE, "tc": 0}
# link pin suffix -> (root program, attach type)
INGRESS_XDP = ("xdp", "xdp_root", bpfsys.BPF_XDP)
INGRESS_TC = ("ingress", "tc_ingress_root", bpfsys.BPF_TCX_INGRESS)
EGRESS = ("egress", "tc_egress_root", bpfsys.BPF_TCX_EGRESS)
# XDP modes: TC ingress for the host's own looped-back multicast/broadcast
# copies, which XDP cannot classify (bpf/lib/loopback.h)
INGRESS_LOOP = ("loop", "tc_loop_root", bpfsys.BPF_TCX_INGRESS)


def link_dir(directory: Path) -> Path:
    return A.ns_pins(directory) / "link"


def root_dir(directory: Path) -> Path:
    return A.ns_pins(directory) / "root"


def hooks_for(mode: str) -> list[tuple[str, str, int]]:
    if mode == "tc":
        return [INGRESS_TC, EGRESS]   # tc_ingress_root sees looped copies itself
    return [INGRESS_XDP, INGRESS_LOOP, EGRESS]


def root_functions(mode: str) -> list[str]:
    """The root programs (bpf/root.c) a mode attaches."""
    return [root for _, root, _ in hooks_for(mode)]


class AttachError(OSError):
    pass


def _link(directory: Path, root: str, ifindex: int, attach_type: int, flags: int) -> int:
    prog = bpfsys.obj_get(str(root_dir(directory) / root))
    try:
        return bpfsys.link_create(prog, ifindex, attach_type, flags)
    finally:
        os.close(prog)


def attach(directory: Path, mode: str, name: str, ifindex: int) -> int:
    """Attach the roots to one interface; returns the XDP flags used (0 in
    tc mode). All or nothing: a failure detaches what this call attached."""
    links = link_dir(directory)
    links.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = MODES[mode]
    done: list[Path] = []
    try:
        for suffix, root, attach_type in hooks_for(mode):
            if suffix == "loop" and not (root_dir(directory) / root).exists():
                # attached before looped copies were classified: the other
                # roots as before; status names the missing link (exit 1)
                # until the namespace is attached again
                continue
            try:
                fd = _link(directory, root, ifindex, attach_type,
                           flags if attach_type == bpfsys.BPF_XDP else 0)
            except OSError as exc:
                if (attach_type != bpfsys.BPF_XDP or flags != XDP_FLAGS_DRV_MODE
                        or exc.errno == errno.EBUSY):
                    raise
                flags = XDP_FLAGS_SKB_MODE  # no native XDP in this driver
                fd = _link(directory, root, ifindex, attach_type, flags)
            try:
                pin = links / f"{ifindex}-{suffix}"
                pin.unlink(missing_ok=True)
                bpfsys.obj_pin(fd, str(pin))
                done.append(pin)
            finally:
                os.close(fd)
    except OSError as exc:
        for pin in done:
            remove_pin(pin)
        raise AttachError(exc.errno, f"cannot attach to {name}: {exc.strerror}") from None
    return flags


def remove_pin(pin: Path) -> None:
    """Detach and unpin one pinned link (nothing there: nothing to do)."""
    try:
        fd = bpfsys.obj_get(str(pin))
    except OSError:
        pin.unlink(missing_ok=True)
        return
    try:
        bpfsys.link_detach(fd)
    except OSError:
        pass  # defunct already (the device is gone)
    finally:
        os.close(fd)
    pin.unlink(missing_ok=True)


def detach(directory: Path, ifindex: int) -> None:
    links = link_dir(directory)
    if links.is_dir():
        for pin in links.glob(f"{ifindex}-*"):
            remove_pin(pin)


def detach_all(directory: Path) -> None:
    links = link_dir(directory)
    if links.is_dir():
        for pin in links.iterdir():
            remove_pin(pin)


def check(directory: Path, mode: str, ifindex: int, roots: dict[str, int]
          ) -> dict[str, bool]:
    """suffix -> whether the link is pinned, on this device, with our root."""
    out = {}
    for suffix, root, _ in hooks_for(mode):
        pin = link_dir(directory) / f"{ifindex}-{suffix}"
        try:
            fd = bpfsys.obj_get(str(pin))
        except OSError:
            out[suffix] = False
            continue
        try:
            info = bpfsys.link_info(fd)
            out[suffix] = info.ifindex == ifindex and info.prog_id == roots.get(root)
        finally:
            os.close(fd)
    return out
