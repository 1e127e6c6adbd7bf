"""Private network namespaces for tests, and running commands inside them.

Every firewall change a test makes happens in a namespace the test created
(unique name), which is deleted afterwards, also when the test fails."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from bpf_iptables.nsthread import setns

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    stdout: str
    stderr: str
    returncode: int


@dataclass
class Namespace:
    name: str

    def run(self, argv: Sequence[str], input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> Result:
        """Run argv inside the namespace (``ip netns exec``)."""
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONPATH", str(REPO))
        full_env["LC_ALL"] = "C"
        if env:
            full_env.update(env)
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input,
                              capture_output=True, text=True, timeout=timeout, env=full_env)
        return Result(proc.stdout, proc.stderr, proc.returncode)

    def iptables(self, *args: str, input: str | None = None) -> Result:
        return self.run(["iptables-legacy", *args], input=input)

    def bpf_iptables(self, *args: str, input: str | None = None) -> Result:
        return self.run(bpf_command("iptables", *args), input=input)


def bpf_command(tool: str, *args: str) -> list[str]:
    """argv that runs one of our CLIs with the interpreter running the tests."""
    module = {"iptables": "iptables", "iptables-save": "save", "iptables-restore": "restore"}[tool]
    return [sys.executable, "-m", f"bpf_iptables.cli.{module}", *args]


@contextmanager
def namespace(prefix: str = "bpft") -> Iterator[Namespace]:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def entered(prefix: str = "bpfdp") -> Iterator[Namespace]:
    """Move this process into a fresh namespace with a veth pair, then back.

    For in-process eBPF tests whose results depend on the interfaces of the
    namespace they run in (ifindexes given to BPF_PROG_TEST_RUN): they see
    only lo, dp0 and dp1 there, whatever the machine has."""
    with namespace(prefix) as ns:
        subprocess.run(["ip", "-n", ns.name, "link", "add", "dp0", "type", "veth",
                        "peer", "name", "dp1"], check=True)
        for dev in ("lo", "dp0", "dp1"):
            subprocess.run(["ip", "-n", ns.name, "link", "set", dev, "up"], check=True)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            setns(target)
            try:
                yield ns
            finally:
                setns(home, "setns back")
        finally:
            os.close(target)
            os.close(home)
