"""Whether a namespace's data path is attached, and where its pins live.

Kept apart from everything that compiles or loads programs: the front end
asks ``wrap()`` on every invocation, and for a namespace that is not
attached the answer costs one failed open() (no bcc, no compile).

Record: ``<namespace_dir>/datapath.json`` (the namespace's state
directory, under /run, seen the same however the namespace is entered).

Pins: a bpffs mounted at ``/run/bpf-iptables/bpffs`` (``pin_root()``),
one directory per namespace (``netns-<cookie>/``): ``root/`` (the root
programs, their prog arrays and the active-generation word), ``link/``
(one bpf link per interface and hook: the attachment itself) and
``gen-0/``, ``gen-1/`` (the two generations' classifiers, one directory
per hook holding ``prog`` and every map). Why there and not
/sys/fs/bpf: ``ip netns exec`` remounts /sys, hiding the host's bpffs,
and a bpffs mounted inside its private mount namespace vanishes (with its
pins) when the command exits; /run is copied into every mount namespace
made after the mount, so ``ip netns exec``, ``nsenter --net`` and
``unshare -n`` all see the same pins. The mount must therefore be made in
the host's mount namespace: ``ensure_bpffs()`` does it when it runs there,
and refuses (with the command to run) from inside ``ip netns exec``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

# json and subprocess are imported where used: every front-end invocation
# imports this module, and only attached namespaces need them

RECORD = "datapath.json"
# "off": a namespace that is not attached stays model-only (rules stored
# and printed, not enforced): for tests of the front end and dry runs
ENFORCE_ENV = "BPF_IPTABLES_DATAPATH"


HOOKS = ("INPUT", "FORWARD", "OUTPUT")


@dataclass
class Attachment:
    """What is attached and which generation is live (see live.py)."""

    mode: str                                   # "xdp", "xdpgeneric", "tc" or "netfilter"
    active: int                                 # the live generation: 0 or 1 (gen-<active>)
    interfaces: dict[str, list[int]] = field(default_factory=dict)  # name -> [ifindex, xdp flags]
    roots: dict[str, int] = field(default_factory=dict)             # root function -> program id
    # per generation: {"route": bool, "hooks": {hook: {"prog_id", "shape", "on"}}}; a
    # hook that is not "on" stays loaded (for a later map-only update) but
    # its prog array slot is empty
    slots: list[dict] = field(default_factory=lambda: [{}, {}])
    counters: list[list] = field(default_factory=list)  # live rule set: [chain, rules, first slot]
    ncounters: int = 0                          # counter slots the live rule set uses
    entries: int = 0                            # INPUT entries of the live generation
    serial: int = 0                             # updates so far
    store_generation: int = 0                   # the stored rule set the live generation is
    switched_at: float = 0.0                    # time.monotonic() of the last flip
    # counts the previous generation made after its last read, by hook and
    # counter slot of the live generation: added to what it reads
    carry: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # set while an update is between its flip and its last record write:
    # {"record": the previous record, "store_generation": before the save}
    pending: dict | None = None

    @property
    def prog_id(self) -> int:
        """The root program at ingress."""
        name = {"tc": "tc_ingress_root", "netfilter": "nf_root_input"}.get(self.mode, "xdp_root")
        return self.roots.get(name, 0)

    @property
    def generation(self) -> int:
        return self.serial

    def live_hooks(self) -> list[str]:
        hooks = self.slots[self.active].get("hooks", {})
        return [h for h in HOOKS if h in hooks and hooks[h]["on"]]

    def counter_of(self) -> list[tuple[str, int, int]]:
        """(chain, rule index, counter slot) of every rule of the live rule set."""
        return [(chain, i, first + i) for chain, n, first in self.counters for i in range(n)]


class DamagedRecord(Exception):
    pass


def run_dir() -> Path:
    return Path(os.environ.get("BPF_IPTABLES_RUN_DIR", "/run/bpf-iptables"))


def pin_root() -> Path:
    return run_dir() / "bpffs"


def read(directory: Path) -> Attachment | None:
    """The record; DamagedRecord when it exists but cannot be read."""
    try:
        text = (directory / RECORD).read_text()
    except FileNotFoundError:
        return None
    import json

    try:
        data = json.loads(text)
        return Attachment(**data)
    except (ValueError, TypeError) as exc:
        raise DamagedRecord(f"{directory / RECORD}: {exc}") from None


def as_json(att: Attachment) -> dict:
    """The record's fields as they are (JSON types already): asdict()'s
    deep copy cost ~0.3 ms per write, two writes per update."""
    return {f.name: getattr(att, f.name) for f in fields(att)}


def write(directory: Path, att: Attachment) -> None:
    import json

    write_atomic(directory / RECORD, json.dumps(as_json(att)).encode())


_libc = None
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path``'s content at once (a reader sees the old or the
    new file, whole; a writer that dies leaves the old one).

    Why not a plain rename over ``path``: on ext4 (a disk-backed /run, as
    on this project's machines) a rename over an existing file starts the
    writeback of the new one (auto_da_alloc), which waits behind other
    I/O: 0.1 ms idle, 1-9 ms under load, two record writes per update.
    renameat2(RENAME_EXCHANGE) swaps the two names atomically without
    that, and the old file, now under the temporary name, is unlinked
    (not truncated: a truncate to zero triggers the same flush). Without
    the call (no renameat2, no ``path`` yet, a file system without
    exchange): a rename."""
    global _libc
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)   # left by a writer that died (never truncated: see above)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    swap = getattr(_libc, "renameat2", None)
    if swap is not None and swap(AT_FDCWD, os.fsencode(tmp), AT_FDCWD, os.fsencode(path),
                                 RENAME_EXCHANGE) == 0:
        os.unlink(tmp)   # the old content
    else:
        os.replace(tmp, path)


def remove(directory: Path) -> None:
    (directory / RECORD).unlink(missing_ok=True)


def ns_pins(directory: Path) -> Path:
    return pin_root() / directory.name


def pin_dir(directory: Path, generation: int) -> Path:
    return ns_pins(directory) / f"gen-{generation}"


def wrap(store):
    """The store itself, or, when the data path is attached, a store whose
    load() shows the data path's counters and whose save() first puts the
    new rule set into the data path (see live.AttachedStore)."""
    directory = getattr(store, "directory", None)
    try:
        att = read(directory) if directory is not None else None
    except DamagedRecord as exc:
        from .live import DatapathError

        raise DatapathError(f"the data path's record is damaged ({exc}); the programs keep "
                            "filtering with the last rule set; run `bpf-iptables-datapath "
                            "detach' and attach again") from None
    if att is None:
        if os.environ.get(ENFORCE_ENV, "on") == "off":
            return store
        from .auto import AutoAttach  # imports nothing heavy until a change needs it

        return AutoAttach(store)
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
