import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite needs root (it creates network namespaces)")
    for tool in ("ip", "iptables-legacy"):
        if shutil.which(tool) is None:
            raise pytest.UsageError(f"{tool} is missing: run the README's setup command")


@pytest.fixture(scope="module")
def private_netns():
    """Run a test module inside a namespace of its own (see support.netns.entered)."""
    from tests.support.netns import entered

    with entered() as ns:
        yield ns
