"""Whether a namespace's data path is attached, and where its pins live.

Kept apart from everything that compiles or loads programs: the front end
asks ``wrap()`` on every invocation, and for a namespace that is not
attached the answer costs one failed open() (no bcc, no compile).

Record: ``<namespace_dir>/datapath.json`` (the namespace's state
directory, under /run, seen the same however the namespace is entered).

Pins: a bpffs mounted at ``/run/bpf-iptables/bpffs`` (``pin_root()``),
one directory per namespace and one sub-directory per program generation:
``netns-<cookie>/gen-<G>/{prog,counters,self}``. Why there and not
/sys/fs/bpf: ``ip netns exec`` remounts /sys, hiding the host's bpffs,
and a bpffs mounted inside its private mount namespace vanishes (with its
pins) when the command exits; /run is copied into every mount namespace
made after the mount, so ``ip netns exec``, ``nsenter --net`` and
``unshare -n`` all see the same pins. The mount must therefore be made in
the host's mount namespace: ``ensure_bpffs()`` does it when it runs there,
and refuses (with the command to run) from inside ``ip netns exec``."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

# json and subprocess are imported where used: every front-end invocation
# imports this module, and only attached namespaces need them

RECORD = "datapath.json"


@dataclass
class Attachment:
    mode: str                                   # "xdp" or "xdpgeneric"
    generation: int                             # pins of the live program: gen-<G>
    interfaces: dict[str, list[int]] = field(default_factory=dict)  # name -> [ifindex, flags]
    ncounters: int = 0
    counter_of: list[list] = field(default_factory=list)   # [chain, rule index, slot]
    prog_id: int = 0                            # what is attached at XDP (INPUT, or the dispatcher)
    entries: int = 0
    forward_prog_id: int = 0                    # FORWARD classifier behind the dispatcher (0: none)
    forward_ncounters: int = 0
    output_prog_id: int = 0                     # the OUTPUT program at TC egress (0: none)
    output_ncounters: int = 0


def run_dir() -> Path:
    return Path(os.environ.get("BPF_IPTABLES_RUN_DIR", "/run/bpf-iptables"))


def pin_root() -> Path:
    return run_dir() / "bpffs"


def read(directory: Path) -> Attachment | None:
    try:
        text = (directory / RECORD).read_text()
    except FileNotFoundError:
        return None
    import json

    return Attachment(**json.loads(text))


def write(directory: Path, att: Attachment) -> None:
    import json

    tmp = directory / (RECORD + ".tmp")
    tmp.write_text(json.dumps(asdict(att)))
    os.replace(tmp, directory / RECORD)


def remove(directory: Path) -> None:
    (directory / RECORD).unlink(missing_ok=True)


def pin_dir(directory: Path, generation: int) -> Path:
    return pin_root() / directory.name / f"gen-{generation}"


def wrap(store):
    """The store itself, or, when the data path is attached, a store whose
    load() shows the data path's counters and whose save() first puts the
    new rule set into the data path (see live.AttachedStore)."""
    directory = getattr(store, "directory", None)
    att = read(directory) if directory is not None else None
    if att is None:
        return store
    from .live import AttachedStore  # only attached namespaces pay for this

    return AttachedStore(store, att)


# -- the bpffs ------------------------------------------------------------------

def _mounts() -> list[list[str]]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split() for line in fh]


def is_bpffs(path: Path) -> bool:
    target = str(path)
    for f in _mounts():
        sep = f.index("-")
        if f[4] == target and f[sep + 1] == "bpf":
            return True
    return False


def inside_ip_netns_exec() -> bool:
    """``ip netns exec`` mounts a sysfs on /sys whose source is the
    namespace's name: a mount made here would not outlive the command."""
    for f in _mounts():
        sep = f.index("-")
        if f[4] == "/sys" and f[sep + 1] == "sysfs":
            return f[sep + 2] != "sysfs"
    return False


class BpffsMissing(Exception):
    pass


def ensure_bpffs() -> Path:
    root = pin_root()
    if is_bpffs(root):
        return root
    if inside_ip_netns_exec():
        raise BpffsMissing(
            f"no bpffs at {root} in this mount namespace, and one mounted from inside "
            "`ip netns exec' would vanish with the command; mount it once in the host's "
            f"mount namespace (mkdir -p {root} && mount -t bpf bpf {root}), or attach "
            "with `nsenter --net=/run/netns/NS'")
    import subprocess

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=True)
    return root
