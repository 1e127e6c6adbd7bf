"""Finding and removing the state of network namespaces that are gone.

State directories are named by netns cookie, which never repeats, so a
deleted namespace's directory would otherwise stay forever. Each directory
records the (device, inode) of its namespace; a namespace exists while a
task lives in it, a bind mount (``ip netns add``) pins it, or a file
descriptor holds it open. A directory whose namespace nothing holds is
removed. (An inode may be reused by a later namespace; that only keeps a
stale directory a little longer, it never removes a live one.)"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

ID_FILE = "netns.id"
_DIR_NAME = re.compile(r"^netns-\d+$")
_NS_LINK = re.compile(r"^net:\[(\d+)\]$")
STALE_WITHOUT_ID = 24 * 3600  # seconds


def current_netns_id() -> str:
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}:{st.st_ino}"


def live_netns_ids() -> set[str]:
    """(dev:ino) of every network namespace something still holds."""
    live: set[str] = set()
    nsfs_dev: int | None = None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
            nsfs_dev = st.st_dev
            live.add(f"{st.st_dev}:{st.st_ino}")
        except OSError:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                m = _NS_LINK.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m and nsfs_dev is not None:
                live.add(f"{nsfs_dev}:{m.group(1)}")
    for mounts in ("/run/netns", "/var/run/netns"):
        try:
            names = os.listdir(mounts)
        except OSError:
            continue
        for name in names:
            try:
                st = os.stat(os.path.join(mounts, name))
            except OSError:
                continue
            live.add(f"{st.st_dev}:{st.st_ino}")
    return live


def collect(run_dir: Path, keep: Path | None = None) -> list[Path]:
    """Remove state directories of namespaces that no longer exist."""
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return []
    live = live_netns_ids()
    removed = []
    for entry in entries:
        if not _DIR_NAME.match(entry.name) or entry == keep:
            continue
        try:
            ns_id = (entry / ID_FILE).read_text().strip()
        except FileNotFoundError:
            # made by a version that recorded no id: only age tells
            try:
                stale = time.time() - entry.stat().st_mtime > STALE_WITHOUT_ID
            except OSError:
                continue
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            continue
        except OSError:
            continue
        if ns_id not in live:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
