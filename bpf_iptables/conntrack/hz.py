"""The kernel's HZ (jiffies per second), which the tracker needs to
reproduce what xt_conntrack's --ctexpire sees for an unconfirmed entry
(lib/conntrack.h ct_view)."""
from __future__ import annotations

import gzip
import os
import re
import time
from functools import cache

COMMON_HZ = (100, 250, 300, 1000)


def _from_config(text: str) -> int | None:
    m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
    return int(m.group(1)) if m else None


def _from_jiffies() -> int | None:
    """jiffies started at INITIAL_JIFFIES = 2**32 - 300 * HZ at boot, so
    jiffies - 2**32 = HZ * (uptime - 300); rounded to a usual HZ."""
    try:
        text = open("/proc/timer_list").read(1 << 16)
    except OSError:
        return None
    m = re.search(r"^jiffies: (\d+)$", text, re.M)
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    if not m or uptime < 400:
        return None
    hz = (int(m.group(1)) - (1 << 32)) / (uptime - 300)
    return min(COMMON_HZ, key=lambda h: abs(h - hz))


@cache
def kernel_hz() -> int:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            hz = _from_config(f.read())
            if hz:
                return hz
    except OSError:
        pass
    try:
        with open(f"/boot/config-{os.uname().release}") as f:
            hz = _from_config(f.read())
            if hz:
                return hz
    except OSError:
        pass
    return _from_jiffies() or 250
