"""The command server's writes (datapath/shadow.py, generation.mirror):
after served updates written by difference, the live generation's maps
hold byte for byte the image a full compile of the stored rule set gives;
a restore sent as soon as attach returns is served; the program a restore
loaded is loaded into the other generation while the server is idle, so
the next update needs no program of its own.

ClassBench fw1-1k (811 rules) keeps it quick; the maps are read back from
their pins (bpffs) with one lookup per element."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bpf_iptables.datapath import attachment as A
from bpf_iptables.datapath import bpfsys
from bpf_iptables.datapath import generation as G
from bpf_iptables.datapath.harness import table_from_save
from bpf_iptables.datapath.image import joined, map_image
from bpf_iptables.datapath.live import compile_all
from tests.support.netns import Namespace, bpf_command, namespace
from tests.support.shared import ruleset
from tests.test_datapath_server import own_lock  # noqa: F401 - its lock file, reaping
from tests.test_datapath_traffic import datapath_command

RULES = "classbench-fw1-1k.rules"
# served one after the other; every one changes the maps
CHANGES = [
    ["-A", "INPUT", "-s", "10.255.1.1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"],
    ["-I", "INPUT", "1", "-d", "10.255.2.0/24", "-p", "udp", "--sport", "53", "-j", "DROP"],
    ["-D", "INPUT", "-s", "10.255.1.1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"],
    ["-A", "INPUT", "-s", "10.255.3.1", "-j", "DROP"],
    ["-D", "INPUT", "300"],
    ["-R", "INPUT", "1", "-d", "10.255.4.0/24", "-p", "udp", "--sport", "54", "-j", "DROP"],
]


def state_dir(ns: Namespace) -> Path:
    out = ns.run([sys.executable, "-c",
                  "from bpf_iptables import state; print(state.namespace_dir())"])
    return Path(out.stdout.strip())


def mark(directory: Path) -> str:
    try:
        return (directory / "server.request").read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture()
def attached() -> Iterator[tuple[Namespace, Path]]:
    with namespace("bpft-wr") as ns:
        ns.run(["ip", "link", "set", "lo", "up"])
        r = ns.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        try:
            yield ns, state_dir(ns)
        finally:
            ns.run(datapath_command("detach"))


def served(ns: Namespace, directory: Path, args: list[str], input: str | None = None,
           tool: str = "iptables") -> None:
    before = mark(directory)
    r = ns.run(bpf_command(tool, *args), input=input)
    assert r.returncode == 0, r.stderr
    assert mark(directory) not in ("", before), f"not served: {args}"


def live_maps_match_a_full_image(ns: Namespace, directory: Path) -> None:
    """Every element the image of the stored rule set names holds its bytes
    in the live generation's pinned maps (arrays keep stale rows past the
    image, as full writes leave them; hash maps hold nothing else)."""
    att = A.read(directory)
    assert att is not None and att.pending is None
    saved = ns.run(bpf_command("iptables-save"))
    table = table_from_save(saved.stdout)
    # the looped copies' program holds INPUT's chain (and may use INPUT's maps)
    for hook in ("INPUT", G.LOOPED):
        compiled = compile_all(table, {"lo": 1})["INPUT"]
        shape = G.shape_of(att.slots[att.active]["hooks"][hook]["shape"])
        G.fit(compiled, shape)
        hook_matches_the_image(G.hook_dir(directory, att.active, hook), compiled, shape)


def hook_matches_the_image(pins: Path, compiled, shape) -> None:
    for image in map_image(compiled, shape):
        fd = bpfsys.obj_get(str(pins / image.name))
        try:
            keys, values = joined(image.items)
            n = len(image.items)
            if not n:
                continue
            ks, vs = len(keys) // n, len(values) // n
            wrong = [keys[i * ks:(i + 1) * ks] for i in range(n)
                     if bpfsys.map_lookup(fd, keys[i * ks:(i + 1) * ks], vs)
                     != values[i * vs:(i + 1) * vs]]
            assert not wrong, f"{image.name}: {len(wrong)} of {n} elements differ"
            if image.clear:
                assert len(bpfsys.map_keys(fd, ks)) == n, image.name
        finally:
            os.close(fd)


def test_served_updates_by_difference_leave_the_full_image(attached) -> None:
    ns, directory = attached
    # sent right after attach: served (the watcher waits for the server)
    served(ns, directory, [], input=ruleset(RULES).read_text(), tool="iptables-restore")
    live_maps_match_a_full_image(ns, directory)
    shared = []
    for change in CHANGES:
        served(ns, directory, change)
        live_maps_match_a_full_image(ns, directory)
        att = A.read(directory)
        assert att is not None
        shared.append(G.shares_maps(directory, att.active))
    # the looped copies' program took INPUT's big maps (mapped writes: once)
    assert any(shared), shared
    # another rule set, then edits again: the address rows written by the
    # columns an edit changed (image.Packed.matrix) hold in either generation
    served(ns, directory, [], input=ruleset("classbench-acl1-1k.rules").read_text(),
           tool="iptables-restore")
    live_maps_match_a_full_image(ns, directory)
    for change in (CHANGES[0], CHANGES[2], ["-A", "INPUT", "-p", "udp", "-j", "DROP"],
                   ["-D", "INPUT", "-p", "udp", "-j", "DROP"], CHANGES[1], ["-D", "INPUT", "1"]):
        served(ns, directory, change)
        live_maps_match_a_full_image(ns, directory)


def test_the_other_generation_gets_the_new_program_while_idle(attached) -> None:
    ns, directory = attached
    served(ns, directory, [], input=ruleset(RULES).read_text(), tool="iptables-restore")
    att = A.read(directory)
    loaded = G.shape_of(att.slots[att.active]["hooks"]["INPUT"]["shape"])
    other = 1 - att.active

    def mirrored() -> dict | None:
        now = A.read(directory)
        info = now.slots[other].get("hooks", {}).get("INPUT")
        return info if info and G.shape_of(info["shape"]).covers(loaded) else None

    deadline = time.monotonic() + 20
    while mirrored() is None:
        assert time.monotonic() < deadline, "the inactive generation got no program"
        time.sleep(0.05)
    preloaded = mirrored()["prog_id"]
    served(ns, directory, CHANGES[0])
    att = A.read(directory)
    assert att.active == other
    # map-only: the program loaded while idle runs the new rule set
    assert att.slots[other]["hooks"]["INPUT"]["prog_id"] == preloaded
    assert att.slots[other]["hooks"]["INPUT"]["on"]
    live_maps_match_a_full_image(ns, directory)
    r = ns.run(datapath_command("status"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_checked_before_are_checked_again_for_new_hooks(attached) -> None:
    """The server's memo of validated rules (server.ValidatedRules): a rule
    checked when INPUT reached its chain is checked again once OUTPUT does
    (-m mac is refused in OUTPUT, as the kernel's checkentry does)."""
    ns, directory = attached
    for args in (["-N", "X"], ["-A", "X", "-m", "mac", "--mac-source", "00:11:22:33:44:55",
                                "-j", "ACCEPT"], ["-A", "INPUT", "-j", "X"],
                 ["-A", "INPUT", "-s", "10.1.1.1", "-j", "DROP"]):
        served(ns, directory, args)
    before = mark(directory)
    r = ns.run(bpf_command("iptables", "-A", "OUTPUT", "-j", "X"))
    assert mark(directory) not in ("", before)   # served
    off = ns.run(bpf_command("iptables", "-A", "OUTPUT", "-j", "X"),
                 env={"BPF_IPTABLES_SERVER": "off"})
    assert r.returncode != 0 and (r.returncode, r.stdout, r.stderr) == \
        (off.returncode, off.stdout, off.stderr)
    assert "-A OUTPUT -j X" not in ns.run(bpf_command("iptables", "-S")).stdout


ENTRY = ("import sys; sys.argv = ['bpf-iptables', {args}]; "
         "from bpf_iptables.cli.entry import iptables; iptables()")


def test_installed_commands_forward_before_importing_the_front_end(attached) -> None:
    """What pyproject's bpf-iptables script runs (cli/entry.py): served,
    importing only the client; without a server it runs here, alike."""
    ns, directory = attached
    served(ns, directory, ["-A", "INPUT", "-s", "10.2.2.2", "-j", "DROP"])
    before = mark(directory)
    code = ENTRY.format(args="'-S', 'INPUT'")
    r = ns.run([sys.executable, "-X", "importtime", "-c", code])
    assert r.returncode == 0 and "-A INPUT -s 10.2.2.2/32 -j DROP\n" in r.stdout, r.stderr
    assert mark(directory) not in ("", before)
    ours = {line.split("|")[-1].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:")}
    assert {m for m in ours if m.startswith("bpf_iptables")} == \
        {"bpf_iptables", "bpf_iptables.cli", "bpf_iptables.cli.client", "bpf_iptables.cli.entry"}
    off = ns.run([sys.executable, "-c", code], env={"BPF_IPTABLES_SERVER": "off"})
    assert (off.returncode, off.stdout) == (0, r.stdout)


def test_a_rule_set_stored_by_another_process_is_primed_while_idle() -> None:
    """server.check_stored / prime_compile / prime_image: a rule set the
    server did not store itself (an attach in another mode, a command run
    in-process) is compiled, and imaged, while the server is idle, so the
    first update it serves patches that compile rather than building all
    (``compile:patched#`` in its log line); the maps it writes are still
    the full image's."""
    from tests.test_datapath_server import wait_for

    with namespace("bpft-wr") as ns:
        ns.run(["ip", "link", "set", "lo", "up"])
        r = ns.run(datapath_command("attach"), env={"BPF_IPTABLES_SERVER_LOG": "1"})
        assert r.returncode == 0, r.stderr
        directory = state_dir(ns)
        try:
            log = directory / "watch.log"
            primed = lambda: log.read_text().count("primed the images")  # noqa: E731
            wait_for("the attached (empty) rule set primed", lambda: primed() > 0)
            before = primed()
            r = ns.run(bpf_command("iptables-restore"), input=ruleset(RULES).read_text(),
                       env={"BPF_IPTABLES_SERVER": "off"})   # in-process: not the server's
            assert r.returncode == 0, r.stderr
            wait_for(lambda: log.read_text()[-2000:], lambda: primed() > before)
            served(ns, directory, CHANGES[0])
            line = [x for x in log.read_text().splitlines() if " ".join(CHANGES[0][:4]) in x][-1]
            assert "compile:patched# 1" in line, line
            live_maps_match_a_full_image(ns, directory)
        finally:
            ns.run(datapath_command("detach"))
