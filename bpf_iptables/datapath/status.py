"""``bpf-iptables-datapath status``: what is attached, checked against the kernel.

Reads the record, the pinned links and the active word (bpf(2) by
ctypes, no bcc). Exit 1 when something is not as recorded: an interface
without its roots, a link on another program, an active word that is not
the recorded one, or an update left pending by a call that died (the
next bpf-iptables call resolves it)."""
from __future__ import annotations

from pathlib import Path

from . import attachment as A
from . import generation as G
from . import bridges
from . import links


def report(directory: Path) -> tuple[list[str], bool]:
    try:
        att = A.read(directory)
    except A.DamagedRecord as exc:
        return [f"damaged record: {exc}", "run `bpf-iptables-datapath detach' and attach again"], False
    if att is None:
        return ["not attached"], True
    out = [f"attached mode {att.mode} program {att.prog_id} generation {att.serial} "
           f"entries {att.entries}",
           f"pins {A.ns_pins(directory)} active gen-{att.active}"]
    ok = True
    try:
        word = G.active_word(directory)
    except OSError as exc:
        out.append(f"  root pins missing: {exc}")
        return out, False
    want = G.word(att.active, att.slots[att.active].get("route", False))
    if att.pending is not None:
        out.append("  an update was interrupted: the next bpf-iptables call resolves it")
        ok = False
    elif word != want:
        out.append(f"  active word {word} (expected {want})")
        ok = False
    hooks = att.slots[att.active].get("hooks", {})
    if att.mode == G.NETFILTER:
        return _netfilter(directory, att, hooks, out, ok)
    for hook in A.HOOKS:
        info = hooks.get(hook)
        if info and info["on"]:
            where = ("TC ingress" if att.mode == "tc" else "XDP") if hook != "OUTPUT" else "TC egress"
            out.append(f"{hook} program {info['prog_id']} at {where}")
    looped = hooks.get(G.LOOPED)
    if looped and looped["on"]:
        out.append(f"INPUT (looped copies) program {looped['prog_id']} at TC ingress")
    found = bridges.links()
    here = bridges.attachable(found)
    ports = bridges.bridge_ports(found)
    for name, (index, flags) in sorted(att.interfaces.items(), key=lambda kv: kv[1][0]):
        mode = "tc" if att.mode == "tc" else ("xdpgeneric" if flags == links.XDP_FLAGS_SKB_MODE
                                              else "xdp")
        seen = links.check(directory, att.mode, index, att.roots)
        if name in ports:
            # enslaved since the last update: classified as itself, not as the bridge
            out.append(f"  {name} ifindex {index} now a port of bridge {ports[name]}: its roots "
                       "go at the next update")
            ok = False
            continue
        if here.get(name) != index:
            out.append(f"  {name} ifindex {index} gone (forgotten at the next update)")
            continue
        good = all(seen.values())
        ok &= good
        detail = "ok" if good else "missing " + " ".join(k for k, v in seen.items() if not v)
        out.append(f"  {name} ifindex {index} {mode} {detail}")
        out.append(f"  {name} egress {'ok' if seen['egress'] else 'missing'}")
    for name in sorted(set(here) - set(att.interfaces)):
        # covered from the next update on (any bpf-iptables change, or the watcher)
        out.append(f"  {name} not attached (created after the last update)")
        ok = False
    for name, bridge in sorted(ports.items()):
        if name in att.interfaces:
            continue
        out.append(f"  {name} port of bridge {bridge}: no roots (the bridge carries them)")
    return out, ok


def _netfilter(directory: Path, att: A.Attachment, hooks: dict, out: list[str], ok: bool
               ) -> tuple[list[str], bool]:
    """--mode netfilter: the roots' links at the hooks, no interfaces."""
    from . import nfmode

    seen = nfmode.check_links(links.link_dir(directory), att.roots)
    for hook, (_, hooknum) in nfmode.ROOTS.items():
        info = hooks.get(hook)
        prog = f"program {info['prog_id']}" if info and info["on"] else "no program (accepts)"
        state = "ok" if seen[hook] else "link missing"
        out.append(f"{hook} {prog} at netfilter hook {hooknum} priority {nfmode.PRIORITY}: {state}")
        ok &= seen[hook]
    if nfmode.xtables_installed():
        out.append(f"REJECT hand-off: iptables-legacy chain {nfmode.REJECT_CHAIN}")
    here = bridges.attachable()
    for name in sorted(set(here) - set(att.interfaces)):
        # -i/-o names resolved at the next update (the watcher's, or any change)
        out.append(f"  {name} not compiled in (created after the last update)")
        ok = False
    return out, ok
