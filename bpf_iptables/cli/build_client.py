"""Build the C client (cli/client.c) as the three installed commands.

``python -m bpf_iptables.cli.build_client DIR``: compiles client.c once
(``cc -O2 -Wall -Werror``) and puts it in DIR as bpf-iptables,
bpf-iptables-save and bpf-iptables-restore, replacing what is there (pip's
generated Python scripts). The binary execs the ``python`` in its own
directory for whatever it does not forward, so DIR is a venv's bin (the
tests use a directory with a ``python`` link). scripts/setup.sh runs it
after every pip install; a failure is loud (exit 1), never the slow
scripts kept silently."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("client.c")
COMMANDS = ("bpf-iptables", "bpf-iptables-save", "bpf-iptables-restore")
CFLAGS = ("-O2", "-Wall", "-Werror")


class BuildError(Exception):
    pass


def build(directory: Path, cc: str | None = None) -> list[Path]:
    """Compile and install the three commands into `directory`; each is
    replaced atomically (a command running meanwhile sees old or new)."""
    cc = cc or os.environ.get("CC") or "cc"
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-client-") as tmp:
        binary = Path(tmp) / "client"
        try:
            r = subprocess.run([cc, *CFLAGS, "-o", str(binary), str(SOURCE)],
                               capture_output=True, text=True)
        except OSError as exc:
            raise BuildError(f"cannot run the C compiler {cc!r}: {exc}") from None
        if r.returncode != 0:
            raise BuildError(f"{cc} failed on {SOURCE} (status {r.returncode}):\n{r.stderr}")
        out = []
        for name in COMMANDS:
            part = Path(tmp) / name
            shutil.copy2(binary, part)
            os.chmod(part, 0o755)
            os.replace(part, directory / name)
            out.append(directory / name)
        return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m bpf_iptables.cli.build_client DIR\n")
        return 2
    try:
        built = build(Path(argv[0]))
    except BuildError as exc:
        sys.stderr.write(f"build_client: {exc}\n")
        return 1
    print(f"built the C client into {', '.join(map(str, built))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
