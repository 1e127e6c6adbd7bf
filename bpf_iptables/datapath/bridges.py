"""Which interfaces carry the root programs, given Linux bridges.

netfilter sees a frame that a bridge port received and the bridge passed
up to IP (``br_pass_frame_up()``) on the **bridge** device: ``-i docker0``,
never ``-i vethXXXX``. Frames the bridge forwards at layer 2 from one port
to another never reach IP, so no iptables chain sees them (unless
br_netfilter sends them through, see ``check_br_netfilter``). And a packet
the host routes out of a bridge leaves through the bridge's egress, then
again through the port's.

So the roots go on every interface **except bridge ports** (an interface
whose master is a bridge): the bridge itself carries them. Generic XDP
runs in ``__netif_receive_skb_core()`` for the device the skb is on, and
the frame passed up is received again with ``skb->dev`` the bridge (the
port's round, where the bridge's rx_handler takes it, has no program of
ours), so the ingress root sees the bridge's ifindex; TC ingress (TCX) the
same. The bridge has no native XDP: ``--mode xdp`` falls back to generic
XDP on it (links.attach). TC egress runs once on the bridge for packets the
host sends or routes out of it; the port's egress has no program. The
FORWARD classifier's route lookup (``bpf_fib_lookup``) names the bridge as
the egress device of a route through it, so ``-o docker0`` matches as in
netfilter.

The interface set is read by rtnetlink (``RTM_GETLINK`` dump:
``IFLA_MASTER``, ``IFLA_LINKINFO/IFLA_INFO_KIND``), not /sys/class/net,
which shows the namespace of whoever mounted /sys (wrong under
``nsenter --net``). A plain socket: the watcher calls this every second
and imports nothing heavy.

Other masters (bond, team, VRF) are not handled: their slaves keep their
roots, as before."""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from ..errors import NotSupported

RTM_GETLINK, RTM_NEWLINK = 18, 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO = 3, 10, 18
IFLA_INFO_KIND = 1
BR_NF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    master: int    # ifindex of the master device, 0 without one
    kind: str      # IFLA_INFO_KIND ("bridge", "veth", ...), "" when the kernel gives none


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]   # without NLA_F_NESTED
        offset += (length + 3) & ~3
    return out


def links() -> list[Link]:
    """Every interface of this network namespace, with its master and kind."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.bind((0, 0))
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        s.send(struct.pack("=IHHII", 16 + len(body), RTM_GETLINK,
                           NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        found: list[Link] = []
        while True:
            data = s.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, offset + 16)[0]
                    raise OSError(err, f"RTM_GETLINK: {os.strerror(err)}")
                if kind == RTM_NEWLINK:
                    index = struct.unpack_from("=i", data, offset + 20)[0]
                    a = _attrs(data, offset + 32, offset + length)
                    info = a.get(IFLA_LINKINFO, b"")
                    kind_name = _attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b"")
                    master = a.get(IFLA_MASTER)
                    found.append(Link(
                        name=a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
                        index=index,
                        master=struct.unpack("=I", master)[0] if master else 0,
                        kind=kind_name.rstrip(b"\0").decode(errors="replace")))
                offset += (length + 3) & ~3


def bridge_ports(found: list[Link]) -> dict[str, str]:
    """port name -> its bridge's name."""
    bridges = {link.index: link.name for link in found if link.kind == "bridge"}
    return {link.name: bridges[link.master] for link in found if link.master in bridges}


def attachable(found: list[Link] | None = None) -> dict[str, int]:
    """name -> ifindex of the interfaces that get the roots: all but bridge ports."""
    found = links() if found is None else found
    ports = bridge_ports(found)
    return {link.name: link.index for link in found if link.name not in ports}


def br_netfilter_on() -> bool:
    """Whether br_netfilter passes bridged IPv4 frames through iptables in
    this namespace (the sysctl is per namespace; absent without the module)."""
    try:
        with open(BR_NF_SYSCTL) as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


# False only in the watcher's resync (watch.resync): refusing there would
# leave new interfaces without the roots, which filters less, not more
REFUSE_BR_NETFILTER = True


def forward_has_work(table) -> bool:
    """Whether FORWARD can change a bridged frame's fate or count it: rules,
    or a policy other than ACCEPT. (The tracker missing bridged frames does
    not matter: a flow bridged between two ports never reaches INPUT or
    OUTPUT.)"""
    chain = table.chains.get("FORWARD")
    return chain is not None and bool(chain.rules or (chain.policy or "ACCEPT") != "ACCEPT")


def refused_here(table, found: list[Link] | None = None) -> list[str]:
    """The bridges that make ``check_br_netfilter`` refuse ``table`` ([]
    when it would not)."""
    if not forward_has_work(table) or not br_netfilter_on():
        return []
    found = links() if found is None else found
    return sorted(link.name for link in found if link.kind == "bridge")


def check_br_netfilter(table, found: list[Link] | None = None) -> None:
    """Refuse (NotSupported, exit 2) what the data path would leave
    unenforced: with br_netfilter on (``net.bridge.bridge-nf-call-iptables
    = 1``), frames a bridge forwards between its ports at layer 2 traverse
    iptables' FORWARD (``-i``/``-o`` the bridge, ``-m physdev`` the ports);
    the data path never sees them (no roots on ports, and the bridge's own
    hooks do not see port-to-port frames). Only when FORWARD has something
    to enforce (``forward_has_work``) and a bridge exists."""
    names = refused_here(table, found)
    if names and REFUSE_BR_NETFILTER:
        raise NotSupported(
            f"a FORWARD chain with rules or a DROP policy beside bridge {', '.join(names)} "
            "while br_netfilter is on (net.bridge.bridge-nf-call-iptables=1: frames bridged "
            "between ports pass iptables' FORWARD, and the data path does not see them; set "
            "it to 0 in this namespace)")
