import os
import shutil
import sys
from pathlib import Path

import pytest

# Namespaces the tests do not attach explicitly stay model-only (rules
# stored and printed, not enforced): the front-end tests compare text and
# exit statuses with iptables-legacy, and an eBPF compile per namespace
# would only slow them down. Tests of the automatic attach set "on".
os.environ["BPF_IPTABLES_DATAPATH"] = "off"

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite needs root (it creates network namespaces)")
    for tool in ("ip", "iptables-legacy"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} is missing: run the README's setup command")
