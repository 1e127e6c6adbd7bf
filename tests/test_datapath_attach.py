"""Attaching the data path to a namespace, updating it, its counters, detaching.

Every test builds its own client/server namespaces (tests/test_datapath_traffic
.topology) and enforces in the server namespace only."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.netns import REPO, bpf_command, namespace
from tests.test_datapath_traffic import (datapath_command, ensure_bpffs, ping, topology,
                                         udp)

PY_ENV = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}


@pytest.fixture(scope="module", autouse=True)
def bpffs():
    ensure_bpffs()


def state_dir(ns) -> str:
    """The server namespace's state directory (its cookie, read inside it)."""
    r = ns.run([sys.executable, "-c",
                "from bpf_iptables import state; print(state.namespace_dir())"])
    return r.stdout.strip()


def record(ns) -> dict | None:
    path = os.path.join(state_dir(ns), "datapath.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def xdp_prog_ids(ns) -> dict[str, int]:
    out = subprocess.run(["ip", "-n", ns.name, "-j", "-d", "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    ids = {}
    for link in json.loads(out):
        prog = (link.get("xdp") or {}).get("prog") or {}
        ids[link["ifname"]] = int(prog.get("id", 0))
    return ids


def nsenter(ns, argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """The other way in: the host's mounts (so /sys/fs/bpf is the host's)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns.name}", *argv], input=input,
                          capture_output=True, text=True, env=PY_ENV)


def test_attach_status_detach():
    with topology("dpa") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "7", "-j", "DROP").returncode == 0
        r = s.run(datapath_command("status"))
        assert (r.returncode, r.stdout) == (0, "not attached\n")
        r = s.run(datapath_command("attach"))
        assert r.returncode == 0, r.stderr
        rec = record(s)
        assert rec is not None and rec["mode"] == "xdpgeneric" and rec["active"] == 0
        root = rec["roots"]["xdp_root"]
        ids = xdp_prog_ids(s)
        assert ids["s0"] == ids["lo"] == root != 0
        base = f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}"
        pins = f"{base}/gen-0"
        assert sorted(os.listdir(base)) == ["gen-0", "link", "root"]
        assert {"prog", "counter_map", "self_map", "entry_map", "live_map", "dport_map"} <= \
            set(os.listdir(f"{pins}/input"))
        assert sorted(os.listdir(f"{base}/root")) == ["active_map", "tc_egress_root",
                                                     "tc_loop_root", "tc_slots",
                                                     "xdp_root", "xdp_slots"]
        assert sorted(os.listdir(f"{base}/link")) == ["1-egress", "1-loop", "1-xdp",
                                                     "2-egress", "2-loop", "2-xdp"]
        r = s.run(datapath_command("status"))
        assert r.returncode == 0 and "s0 ifindex 2 xdpgeneric ok" in r.stdout, r.stdout
        # the same state seen through nsenter (host mounts, not ip netns exec's)
        r = nsenter(s, datapath_command("status"))
        assert r.returncode == 0 and f"program {root}" in r.stdout, r.stderr

        r = s.run(datapath_command("detach"))
        assert (r.returncode, r.stdout) == (0, "detached\n")
        assert set(xdp_prog_ids(s).values()) == {0}
        assert not os.path.exists(base)
        assert record(s) is None
        assert s.run(datapath_command("status")).stdout == "not attached\n"
        # the rule set itself is untouched
        assert s.bpf_iptables("-S", "INPUT").stdout == \
            "-P INPUT ACCEPT\n-A INPUT -p udp -m udp --dport 7 -j DROP\n"


def test_changes_take_effect_before_the_command_returns():
    with topology("dpu") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        first = record(s)
        assert ping(t, 1) == 1
        r = s.bpf_iptables("-I", "INPUT", "-p", "icmp", "-j", "DROP")
        assert r.returncode == 0, r.stderr
        assert ping(t, 2) == 0
        rec = record(s)
        # generation 1 is live now; the roots on the interfaces never changed
        assert (rec["serial"], rec["active"]) == (2, 1)
        assert rec["roots"] == first["roots"]
        assert set(xdp_prog_ids(s).values()) == {rec["roots"]["xdp_root"]}
        # both generations stay pinned: the next update rewrites gen-0's maps
        base = f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}"
        assert sorted(os.listdir(base)) == ["gen-0", "gen-1", "link", "root"]
        # -A goes through the data path too (no journal shortcut while attached)
        assert s.bpf_iptables("-D", "INPUT", "1").returncode == 0
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP").returncode == 0
        assert ping(t, 1) == 1
        assert udp(t, 5001, 2) == 0 and udp(t, 5002, 2) == 2
        # restore commits too, and through nsenter as well
        rules = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp --dport 5002 -j DROP\nCOMMIT\n"
        r = nsenter(s, bpf_command("iptables-restore"), input=rules)
        assert r.returncode == 0, r.stderr
        assert udp(t, 5001, 2) == 2 and udp(t, 5002, 2) == 0


@pytest.mark.parametrize("args", [
    ("-A", "FORWARD", "-m", "limit", "--limit", "1/s", "-m", "length", "--length", "1:2",
     "-j", "DROP"),   # limit before another match: refused
    ("-A", "OUTPUT", "-p", "sctp", "-m", "multiport", "--dports", "9", "-j", "DROP"),
    ("-A", "INPUT", "-p", "tcp", "--tcp-option", "2", "-j", "DROP"),
    ("-A", "INPUT", "-m", "conntrack", "--ctstate", "SNAT", "-j", "DROP"),   # no NAT
])
def test_unenforceable_changes_are_refused_while_attached(args):
    with topology("dpn") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "icmp", "-j", "ACCEPT").returncode == 0
        # accepted while not attached (the front end stores it) ...
        with namespace("dpnx") as other:
            assert other.bpf_iptables(*args).returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        # ... refused, with nothing changed, while attached
        r = s.bpf_iptables(*args)
        assert r.returncode == 2
        assert "is not supported by bpf-iptables" in r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert set(xdp_prog_ids(s).values()) == {before[1]["roots"]["xdp_root"]}
        assert ping(t, 1) == 1


def test_restore_refused_while_attached_changes_nothing():
    with topology("dpr") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        rules = "*filter\n:INPUT DROP [0:0]\n-A FORWARD -m limit --limit 1/s -m length --length 1:2 -j DROP\nCOMMIT\n"
        r = s.run(bpf_command("iptables-restore"), input=rules)
        assert r.returncode == 2 and "limit' in the eBPF data path" in r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert ping(t, 1) == 1


def test_attach_refuses_an_unenforceable_rule_set():
    with topology("dpf") as t:
        s = t.server
        assert s.bpf_iptables("-A", "FORWARD", "-m", "limit", "--limit", "1/s", "-m", "length",
                              "--length", "1:2", "-j", "DROP").returncode == 0
        r = s.run(datapath_command("attach"))
        assert r.returncode == 2 and "limit' in the eBPF data path" in r.stderr
        assert record(s) is None and set(xdp_prog_ids(s).values()) == {0}
        r = s.run(datapath_command("attach", "--mode", "tc"))
        assert r.returncode == 2


def counters_of(ns) -> str:
    return ns.bpf_iptables("-S", "INPUT", "-v").stdout


def test_counters_follow_rules_through_updates_and_zero():
    with topology("dpc") as t:
        s = t.server
        rules = ("*filter\n:INPUT ACCEPT [10:1000]\n"
                 "[5:500] -A INPUT -p icmp -j ACCEPT\nCOMMIT\n")
        assert s.run(bpf_command("iptables-restore", "-c"), input=rules).returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        # counters set by restore -c are where the data path counts from
        assert counters_of(s) == "-P INPUT ACCEPT -c 10 1000\n-A INPUT -p icmp -c 5 500 -j ACCEPT\n"
        assert ping(t, 2) == 2
        assert udp(t, 5001, 1) == 1
        # ICMP echo of 20 + 8 + 48 bytes; the UDP datagram 20 + 8 + 10
        want_icmp = "-A INPUT -p icmp -c 7 652 -j ACCEPT\n"
        assert counters_of(s) == "-P INPUT ACCEPT -c 11 1038\n" + want_icmp
        # an insert before it: the rule keeps its counters at its new position;
        # the policy counters restart, as iptables-legacy's commit does
        assert s.bpf_iptables("-I", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP").returncode == 0
        assert counters_of(s) == ("-P INPUT ACCEPT -c 0 0\n"
                                  "-A INPUT -p udp -m udp --dport 9 -c 0 0 -j DROP\n" + want_icmp)
        save = s.run(bpf_command("iptables-save", "-c")).stdout
        assert "[7:652] -A INPUT -p icmp -j ACCEPT\n" in save and ":INPUT ACCEPT [0:0]" in save
        listing = s.bpf_iptables("-L", "INPUT", "-v", "-x", "-n").stdout
        assert "       7      652 ACCEPT     1    --  *      *       0.0.0.0/0" in listing
        # -Z zeroes them in the data path
        assert s.bpf_iptables("-Z").returncode == 0
        assert ping(t, 1) == 1
        assert counters_of(s) == ("-P INPUT ACCEPT -c 0 0\n"
                                  "-A INPUT -p udp -m udp --dport 9 -c 0 0 -j DROP\n"
                                  "-A INPUT -p icmp -c 1 76 -j ACCEPT\n")
        # detach leaves the last counts in the stored rule set
        assert s.run(datapath_command("detach")).returncode == 0
        assert "-A INPUT -p icmp -c 1 76 -j ACCEPT\n" in counters_of(s)


def test_unattached_namespace_never_loads_bcc():
    with namespace("dpz") as ns:
        code = ("import sys; from bpf_iptables.cli import iptables; "
                "rc = iptables.run(['-A', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT']); "
                "rc2 = iptables.run(['-L', '-v']); "
                "print(rc, rc2, 'bcc' in sys.modules, 'bpf_iptables.datapath.live' in sys.modules)")
        r = ns.run([sys.executable, "-c", code])
        assert r.stdout.splitlines()[-1] == "0 0 False False", r.stderr


def test_a_program_that_fails_to_load_changes_nothing(tmp_path):
    """bcc failing (here: a source tree whose filter.c does not compile)
    is exit 1, the old program stays attached and the rule set stored."""
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "filter.c").write_text("int xdp_filter(struct xdp_md *ctx) { return oops; }\n")
    with topology("dpe") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "icmp", "-j", "ACCEPT").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        before = (s.bpf_iptables("-S").stdout, record(s))
        r = s.run(bpf_command("iptables", "-I", "INPUT", "-p", "icmp", "-j", "DROP"),
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.returncode == 1 and "cannot load the eBPF program" in r.stderr, r.stderr
        assert (s.bpf_iptables("-S").stdout, record(s)) == before
        assert set(xdp_prog_ids(s).values()) == {before[1]["roots"]["xdp_root"]}
        assert ping(t, 1) == 1
        r = s.run(bpf_command("iptables-restore"), input="*filter\n-F\nCOMMIT\n",
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.returncode == 1 and (s.bpf_iptables("-S").stdout, record(s)) == before


RESYNC = """
from bpf_iptables import state
from bpf_iptables.datapath import attachment, live
with state.locked(-1) as store:
    live.AttachedStore(store, attachment.read(store.directory)).save(store.load())
"""


def test_interfaces_created_later_are_covered_by_the_next_update():
    with topology("dpi") as t:
        s = t.server
        # without the interface watcher (tests/test_datapath_watch.py has it)
        assert s.run(datapath_command("attach", "--no-watch")).returncode == 0
        subprocess.run(["ip", "-n", s.name, "link", "add", "s1", "type", "veth", "peer", "name",
                        "s2"], check=True)
        r = s.run(datapath_command("status"))
        assert r.returncode == 1 and "s1 not attached" in r.stdout
        assert s.bpf_iptables("-A", "INPUT", "-i", "s1", "-j", "DROP").returncode == 0
        r = s.run(datapath_command("status"))
        assert r.returncode == 0, r.stdout
        ids = xdp_prog_ids(s)
        assert ids["s1"] == ids["s2"] == ids["s0"] == record(s)["roots"]["xdp_root"]
        # and forgotten once gone
        subprocess.run(["ip", "-n", s.name, "link", "del", "s1"], check=True)
        assert s.bpf_iptables("-D", "INPUT", "1").returncode == 0
        assert set(record(s)["interfaces"]) == {"lo", "s0"}
        assert s.run(datapath_command("status")).returncode == 0
        # the watcher's resync: save() of the stored rule set, without load();
        # new interfaces covered, the data path's counters kept
        assert s.bpf_iptables("-A", "INPUT", "-p", "icmp").returncode == 0
        assert ping(t, 2) == 2
        subprocess.run(["ip", "-n", s.name, "link", "add", "s3", "type", "veth", "peer", "name",
                        "s4"], check=True)
        r = s.run([sys.executable, "-c", RESYNC])
        assert r.returncode == 0, r.stderr
        assert set(record(s)["interfaces"]) == {"lo", "s0", "s3", "s4"}
        assert s.run(datapath_command("status")).returncode == 0
        assert "-A INPUT -p icmp -c 2 " in s.bpf_iptables("-S", "INPUT", "-v").stdout


def live_hooks(rec: dict) -> dict[str, dict]:
    return {h: i for h, i in rec["slots"][rec["active"]]["hooks"].items() if i["on"]}


def test_output_program_comes_and_goes_with_its_rules():
    """OUTPUT's classifier fills its generation's slot behind the TC egress
    root while OUTPUT has work; without, the slot is empty (packets pass)."""
    with topology("dpo") as t:
        s = t.server
        assert s.run(datapath_command("attach")).returncode == 0
        # LOOPED: INPUT's TC build for the host's own looped copies (XDP modes)
        assert set(live_hooks(record(s))) == {"INPUT", "LOOPED"}
        assert s.bpf_iptables("-A", "OUTPUT", "-p", "udp", "--dport", "5003", "-j",
                              "DROP").returncode == 0
        assert set(live_hooks(record(s))) == {"INPUT", "LOOPED", "OUTPUT"}
        r = s.run(datapath_command("status"))
        assert r.returncode == 0 and "OUTPUT program" in r.stdout and "s0 egress ok" in r.stdout
        assert udp(t, 5003, 2, reverse=True) == 0 and udp(t, 5004, 2, reverse=True) == 2
        assert s.bpf_iptables("-F", "OUTPUT").returncode == 0
        assert set(live_hooks(record(s))) == {"INPUT", "LOOPED"}
        assert udp(t, 5003, 2, reverse=True) == 2


MAP_ONLY_PROBE = """
import sys
from bpf_iptables.cli import iptables
rc = iptables.run(sys.argv[1:])
print(rc, 'bcc' in sys.modules)
"""


def test_changes_that_fit_the_programs_only_rewrite_maps(tmp_path):
    """Once both generations have programs, a change whose shape they
    cover rewrites maps only: no bcc import, no compile (a source tree
    that does not compile is not even looked at), programs kept."""
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "filter.c").write_text("int xdp_filter(struct xdp_md *ctx) { return oops; }\n")
    with topology("dpm") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001", "-j",
                              "DROP").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5002", "-j",
                              "DROP").returncode == 0
        progs = [dict(live_hooks(record(s))), None]
        for port in (5003, 5004, 5005):
            r = s.run([sys.executable, "-c", MAP_ONLY_PROBE, "-A", "INPUT", "-p", "udp",
                       "--dport", str(port), "-j", "DROP"],
                      env={"BPF_IPTABLES_BPF_DIR": str(broken)})
            assert r.stdout.split() == ["0", "False"], r.stderr
        rec = record(s)
        # the same two programs, alternating
        assert live_hooks(rec)["INPUT"]["prog_id"] in {
            i["hooks"]["INPUT"]["prog_id"] for i in rec["slots"]}
        assert progs[0]["INPUT"]["prog_id"] in {i["hooks"]["INPUT"]["prog_id"]
                                                for i in rec["slots"]}
        assert udp(t, 5001, 1) == udp(t, 5005, 1) == 0 and udp(t, 5006, 1) == 1
        r = s.run([sys.executable, "-c", MAP_ONLY_PROBE, "-D", "INPUT", "5"],
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.stdout.split() == ["0", "False"], r.stderr
        assert udp(t, 5005, 1) == 1 and udp(t, 5004, 1) == 0
        # a new field is a new shape: compiled (and refused with the broken tree)
        r = s.run(bpf_command("iptables", "-A", "INPUT", "-s", "10.1.0.0/16", "-j", "DROP"),
                  env={"BPF_IPTABLES_BPF_DIR": str(broken)})
        assert r.returncode == 1 and "cannot load the eBPF program" in r.stderr


DIE_AT = "BPF_IPTABLES_DATAPATH_DIE_AT"


def test_a_call_that_dies_between_steps_is_repaired_by_the_next():
    """An update killed after each of its steps in turn (the test hook
    exits as a crash would); the next call, whatever it is, leaves data
    path, record and stored rule set in agreement, and says what it did."""
    with topology("dpd") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5002", "-j",
                              "DROP").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        for step, port, outcome in (
                ("prepared", 5011, "old"),   # inactive generation half done: redone next time
                ("pending", 5012, "old"),    # intent recorded, nothing switched: rolled back
                ("flipped", 5013, "old"),    # switched, rule set not stored: rolled back
                ("stored", 5014, "new")):    # switched and stored, record not final: completed
            before = s.bpf_iptables("-S").stdout
            r = s.run(bpf_command("iptables", "-I", "INPUT", "-s", "10.99.0.0/24", "-p", "udp",
                                  "--dport", str(port), "-j", "DROP"), env={DIE_AT: step})
            assert r.returncode == 137, (step, r.stderr)
            if step == "flipped":
                # the new rule set filters, the record still names the old one
                assert udp(t, port, 1) == 0
                r = s.run(datapath_command("status"))
                assert r.returncode == 1 and "interrupted" in r.stdout, r.stdout
            r = s.bpf_iptables("-S")
            assert r.returncode == 0, r.stderr
            assert ("warning: an interrupted data path update" in r.stderr) == (step != "prepared")
            new = outcome == "new"
            assert (r.stdout == before) != new, step
            assert udp(t, port, 1) == (0 if new else 1), step
            assert s.run(datapath_command("status")).returncode == 0, step
        # and updates go on from there
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5003", "-j",
                              "DROP").returncode == 0
        assert udp(t, 5003, 1) == udp(t, 5002, 1) == udp(t, 5014, 1) == 0
        assert udp(t, 5011, 1) == 1


def test_a_damaged_record_is_reported_and_detach_cleans_up():
    with topology("dpx") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001", "-j",
                              "DROP").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        path = os.path.join(state_dir(s), "datapath.json")
        with open(path, "w") as fh:
            fh.write("{not json")
        r = s.bpf_iptables("-L")
        assert r.returncode == 1 and "record is damaged" in r.stderr, r.stderr
        r = s.run(datapath_command("status"))
        assert r.returncode == 1 and "damaged record" in r.stdout
        assert udp(t, 5001, 1) == 0  # the programs keep filtering meanwhile
        r = s.run(datapath_command("detach"))
        assert r.returncode == 0, r.stderr
        assert set(xdp_prog_ids(s).values()) == {0} and record(s) is None
        assert not os.path.exists(f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}")
        assert udp(t, 5001, 1) == 1
        # pins removed behind the record's back: reported, detach still works
        assert s.run(datapath_command("attach")).returncode == 0
        subprocess.run(["rm", "-rf", f"/run/bpf-iptables/bpffs/{os.path.basename(state_dir(s))}"
                        "/gen-0"], check=True)
        r = s.bpf_iptables("-L")
        assert r.returncode == 1 and "detach" in r.stderr, r.stderr
        assert s.run(datapath_command("detach")).returncode == 0
        assert set(xdp_prog_ids(s).values()) == {0} and record(s) is None


def test_programs_an_older_version_loaded_are_replaced_not_given_new_images():
    """A record whose programs do not say they read this version's map
    layout (image.MAP_LAYOUT: an attachment made before the /16 tables got
    their depth bits, say, then the software upgraded) must not have its
    programs' maps rewritten in the new layout, which they would misread
    (a top value taken as an index: every packet aborted). Each generation
    gets a new program at its next update instead, and filtering goes on."""
    with topology("dpv") as t:
        s = t.server
        assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", "5001", "-j",
                              "DROP").returncode == 0
        assert s.run(datapath_command("attach")).returncode == 0
        for port in ("5002", "5003"):     # both generations hold programs now
            assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", port, "-j",
                                  "DROP").returncode == 0
        rec = record(s)
        before = {(gen, hook): info["prog_id"] for gen, slot in enumerate(rec["slots"])
                  for hook, info in slot.get("hooks", {}).items()}
        assert len({gen for gen, _ in before}) == 2
        assert all(info.get("layout") for slot in rec["slots"]
                   for info in slot.get("hooks", {}).values())
        for slot in rec["slots"]:
            for info in slot.get("hooks", {}).values():
                del info["layout"]
        path = os.path.join(state_dir(s), "datapath.json")
        with open(path, "w") as fh:
            json.dump(rec, fh)
        for port in ("5004", "5005"):     # one update per generation
            assert s.bpf_iptables("-A", "INPUT", "-p", "udp", "--dport", port, "-j",
                                  "DROP").returncode == 0
        rec = record(s)
        after = {(gen, hook): info for gen, slot in enumerate(rec["slots"])
                 for hook, info in slot.get("hooks", {}).items()}
        for key, old_id in before.items():
            if key in after:
                assert after[key]["prog_id"] != old_id, f"{key}: the old program kept"
                assert after[key].get("layout"), key
        for port in (5001, 5003, 5005):
            assert udp(t, port, 1) == 0, port
        assert udp(t, 5006, 1) == 1
