"""The LOG target's logger: ring buffer events -> the kernel's LOG lines.

The classifiers (bpf/filter.c, bpf/lib/log.h) put one ``struct log_event``
per logged packet into a BPF ring buffer pinned per namespace
(``<pins>/log/ring``, the loss counter ``<pins>/log/lost``). This module
reads it (``RingReader``: the ring's pages mapped, no bcc) and formats each
event as nf_log_syslog.c's ``nf_log_ip_packet()`` does for IPv4
(``format_line``), then writes the line to syslog (``/dev/log`` when it
exists, facility kern, the rule's level) and appends it to ``<state
dir>/log``. The line is what the kernel hands to printk, without the
"<level>" marker: ``PREFIXIN=eth0 OUT= MAC=... SRC=... DST=... LEN=...``.

Run as ``python -m bpf_iptables.datapath.logger run PINDIR LOGFILE`` by the
namespace's daemon (watch.py), which restarts it when it exits."""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from . import bpfsys

MODULE = "bpf_iptables.datapath.logger"
HOOKS = ("INPUT", "FORWARD", "OUTPUT")
XT_LOG_TCPSEQ, XT_LOG_TCPOPT, XT_LOG_IPOPT, XT_LOG_UID, XT_LOG_MACDECODE = 1, 2, 4, 8, 0x20
ETH_HLEN = 14
LOOPBACK_IFINDEX = 1
# struct log_event (bpf/lib/log.h): eight u32, prefix[32], data[256]
LOG_LOOPED = 0x100   # event flag (bpf/filter.c): a looped multicast/broadcast copy
EVENT = struct.Struct("<8I32s")   # hook ifindex mark level flags wire cap oif, prefix
LOG_CAP = 256
# ICMP types whose header the kernel wants whole before decoding (required_len[])
ICMP_REQUIRED = {0: 4, 3: 28, 4: 28, 5: 28, 8: 4, 11: 28, 12: 28, 13: 20, 14: 20, 17: 12, 18: 12}
LOG_KERN = 0
ROTATE = 64 << 20   # the file becomes <file>.1 (replacing the previous one) past this


@dataclass
class Event:
    hook: int
    ifindex: int
    mark: int
    level: int
    flags: int
    prefix: str
    frame: bytes      # from the Ethernet header, at most LOG_CAP bytes
    oif: int = 0      # FORWARD: the route's output device

    @classmethod
    def parse(cls, raw: bytes) -> "Event":
        hook, ifindex, mark, level, flags, _wire, cap, oif, prefix = EVENT.unpack_from(raw)
        data = raw[EVENT.size:EVENT.size + min(cap, LOG_CAP)]
        text = prefix.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return cls(hook, ifindex, mark, level, flags, text, data, oif)


def ip4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def format_line(ev: Event, ifname=lambda i: socket.if_indextoname(i)) -> str:
    """nf_log_ip_packet() for this event: the common part, the MAC header
    (for the hooks with an input device), the IPv4 packet."""
    name = _name(ifname, ev.ifindex)
    hook = HOOKS[ev.hook]
    inp, out = (name, "") if hook == "INPUT" else ("", name) if hook == "OUTPUT" \
        else (name, _name(ifname, ev.oif) if ev.oif else "")
    out_text = f"{ev.prefix}IN={inp} OUT={out} "
    frame = ev.frame
    if inp:
        out_text += mac_header(ev, frame)
    ip = frame[ETH_HLEN:]
    if hook == "FORWARD" and len(ip) > 8:
        # ip_forward() lowers the TTL before the FORWARD hook; the frame
        # (XDP, TC ingress) still carries the received one
        ip = ip[:8] + bytes([(ip[8] - 1) & 0xFF]) + ip[9:]
    # netfilter sees the datagram trimmed to its total length: skb->len
    tot_len = struct.unpack_from("!H", ip, 2)[0] if len(ip) >= 4 else len(ip)
    return out_text + ipv4(ip, tot_len, ev.flags, 0, ev.mark)


def _name(ifname, index: int) -> str:
    try:
        return ifname(index)
    except OSError:
        return ""


def mac_header(ev: Event, frame: bytes) -> str:
    """dump_mac_header(): decoded on Ethernet devices with --log-macdecode,
    else the raw hard header (14 bytes on Ethernet and on lo)."""
    if ev.flags & LOG_LOOPED:
        # a looped copy (bpf/lib/loopback.h) has no MAC header: its MAC
        # header pointer is the IP header's, which --log-macdecode decodes
        # as Ethernet and the raw dump shows as nothing; the event's frame
        # carries a zeroed Ethernet header in front of the IP header
        ip = frame[ETH_HLEN:]
        if ev.flags & XT_LOG_MACDECODE and len(ip) >= ETH_HLEN:
            return (f"MACSRC={mac(ip[6:12])} MACDST={mac(ip[0:6])} "
                    f"MACPROTO={struct.unpack_from('!H', ip, 12)[0]:04x} ")
        return "MAC= "
    if ev.flags & XT_LOG_MACDECODE and ev.ifindex != LOOPBACK_IFINDEX:
        return (f"MACSRC={mac(frame[6:12])} MACDST={mac(frame[0:6])} "
                f"MACPROTO={struct.unpack_from('!H', frame, 12)[0]:04x} ")
    return "MAC=" + ":".join(f"{x:02x}" for x in frame[:ETH_HLEN]) + " "


def ipv4(ip: bytes, skb_len: int, flags: int, off: int, mark: int) -> str:
    """dump_ipv4_packet() at offset ``off`` of the datagram ``ip`` (the
    inner header of an ICMP error when off > 0); ``skb_len`` bounds what
    skb_header_pointer() may read."""
    def have(at: int, n: int) -> bool:
        return at + n <= skb_len and at + n <= len(ip)

    if not have(off, 20):
        return "TRUNCATED"
    h = ip[off:off + 20]
    ihl = (h[0] & 0x0F) * 4
    tot, ident, frag = struct.unpack_from("!HHH", h, 2)
    tos, ttl, proto = h[1], h[8], h[9]
    s = f"SRC={ip4(h[12:16])} DST={ip4(h[16:20])} "
    s += f"LEN={tot} TOS=0x{tos & 0x1E:02X} PREC=0x{tos & 0xE0:02X} TTL={ttl} ID={ident} "
    if frag & 0x8000:
        s += "CE "
    if frag & 0x4000:
        s += "DF "
    if frag & 0x2000:
        s += "MF "
    offset = frag & 0x1FFF
    if offset:
        s += f"FRAG:{offset} "
    if flags & XT_LOG_IPOPT and ihl > 20:
        if not have(off + 20, ihl - 20):
            return s + "TRUNCATED"
        s += "OPT (" + ip[off + 20:off + ihl].hex().upper() + ") "
    l4 = off + ihl
    if proto == 6:
        s += "PROTO=TCP "
        if not offset:
            if not have(l4, 20):
                return s + f"INCOMPLETE [{skb_len - l4} bytes] "
            s += tcp(ip, l4, flags, have)
            if s.endswith("OPT (TRUNCATED)"):
                return s
    elif proto in (17, 136):
        s += "PROTO=UDP " if proto == 17 else "PROTO=UDPLITE "
        if not offset:
            if not have(l4, 8):
                return s + f"INCOMPLETE [{skb_len - l4} bytes] "
            sport, dport, ulen = struct.unpack_from("!HHH", ip, l4)
            s += f"SPT={sport} DPT={dport} LEN={ulen} "
    elif proto == 1:
        s += "PROTO=ICMP "
        if not offset:
            s += icmp(ip, skb_len, l4, flags, off, have)
    elif proto == 51:
        if not offset:
            s += "PROTO=AH "
            s += (f"SPI=0x{struct.unpack_from('!I', ip, l4 + 4)[0]:x} " if have(l4, 12)
                  else f"INCOMPLETE [{skb_len - l4} bytes] ")
    elif proto == 50:
        s += "PROTO=ESP "
        if not offset:
            s += (f"SPI=0x{struct.unpack_from('!I', ip, l4)[0]:x} " if have(l4, 8)
                  else f"INCOMPLETE [{skb_len - l4} bytes] ")
    else:
        s += f"PROTO={proto} "
    if not off and mark:
        s += f"MARK=0x{mark:x} "
    return s


def tcp(ip: bytes, at: int, flags: int, have) -> str:
    """nf_log_dump_tcp_header() after "PROTO=TCP " (header present)."""
    sport, dport, seq, ack, word, window, _csum, urgp = struct.unpack_from("!HHIIHHHH", ip, at)
    s = f"SPT={sport} DPT={dport} "
    if flags & XT_LOG_TCPSEQ:
        s += f"SEQ={seq} ACK={ack} "
    # tcp_flag_word & TCP_RESERVED_BITS (0x0E000000, the AE bit apart) >> 22
    s += f"WINDOW={window} RES=0x{((word >> 8) & 0x0E) << 2:02x} "
    for bit, name in ((0x100, "AE"), (0x80, "CWR"), (0x40, "ECE"), (0x20, "URG"), (0x10, "ACK"),
                      (0x08, "PSH"), (0x04, "RST"), (0x02, "SYN"), (0x01, "FIN")):
        if word & bit:
            s += name + " "
    s += f"URGP={urgp} "
    doff = (word >> 12) * 4
    if flags & XT_LOG_TCPOPT and doff > 20:
        if not have(at + 20, doff - 20):
            return s + "OPT (TRUNCATED)"
        s += "OPT (" + ip[at + 20:at + doff].hex().upper() + ") "
    return s


def icmp(ip: bytes, skb_len: int, at: int, flags: int, off: int, have) -> str:
    """The ICMP case of dump_ipv4_packet() after "PROTO=ICMP "."""
    if not have(at, 8):
        return f"INCOMPLETE [{skb_len - at} bytes] "
    itype, code = ip[at], ip[at + 1]
    s = f"TYPE={itype} CODE={code} "
    need = ICMP_REQUIRED.get(itype, 0)
    if need and skb_len - at < need:
        return s + f"INCOMPLETE [{skb_len - at} bytes] "
    if itype in (0, 8):
        ident, seq = struct.unpack_from("!HH", ip, at + 4)
        s += f"ID={ident} SEQ={seq} "
    elif itype == 12:
        s += f"PARAMETER={ip[at + 4]} "
    elif itype in (3, 4, 5, 11):
        if itype == 5:
            s += f"GATEWAY={ip4(ip[at + 4:at + 8])} "
        if not off:
            s += "[" + ipv4(ip, skb_len, flags, at + 8, 0) + "] "
        if itype == 3 and code == 4:
            s += f"MTU={struct.unpack_from('!H', ip, at + 6)[0]} "
    return s


# -- reading the ring ----------------------------------------------------------

BUSY, DISCARD = 1 << 31, 1 << 30
PAGE = mmap.PAGESIZE


class RingReader:
    """A BPF ring buffer's consumer side: the consumer position page mapped
    writable, the producer page and the data (mapped twice by the kernel,
    so a record never wraps) read-only."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = bpfsys_map_info(fd)
        self.cons = mmap.mmap(fd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.prod = mmap.mmap(fd, PAGE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                              offset=PAGE)
        self.poll = select.epoll()
        self.poll.register(fd, select.EPOLLIN)

    def close(self) -> None:
        self.poll.close()
        self.cons.close()
        self.prod.close()

    def drain(self) -> list[bytes]:
        out = []
        cons = struct.unpack_from("<Q", self.cons, 0)[0]
        prod = struct.unpack_from("<Q", self.prod, 0)[0]
        while cons < prod:
            at = PAGE + (cons & (self.size - 1))
            hdr = struct.unpack_from("<I", self.prod, at)[0]
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                out.append(bytes(self.prod[at + 8:at + 8 + length]))
            cons += (length + 8 + 7) & ~7
            struct.pack_into("<Q", self.cons, 0, cons)
        return out

    def wait(self, timeout: float) -> None:
        self.poll.poll(timeout)


def bpfsys_map_info(fd: int) -> int:
    """The ring's data size (bpf_map_info.max_entries)."""
    return bpfsys._info(fd)[4]


def lost(pin_dir: str) -> int:
    """Events lost to a full ring, summed over CPUs."""
    path = os.path.join(pin_dir, "lost")
    if not os.path.exists(path):
        return 0
    fd = bpfsys.obj_get(path)
    try:
        ncpu = bpfsys.possible_cpus()
        raw = bpfsys.map_lookup(fd, struct.pack("<I", 0), 8 * ncpu) or b""
        return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
    finally:
        os.close(fd)


# -- output --------------------------------------------------------------------

class Sink:
    """Where lines go: ``<file>`` (appended, one line each) and syslog."""

    def __init__(self, path: str):
        self.path = path
        self.file = self._open()
        self.syslog: socket.socket | None = None
        if os.path.exists("/dev/log"):
            try:
                self.syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.syslog.connect("/dev/log")
            except OSError:
                self.syslog = None

    def _open(self):
        return open(self.path, "a", buffering=1, encoding="utf-8", errors="surrogateescape")

    def write(self, level: int, line: str) -> None:
        self.file.write(line + "\n")
        if self.file.tell() > ROTATE:
            # bounded on disk under floods: one previous file kept
            self.file.close()
            os.replace(self.path, self.path + ".1")
            self.file = self._open()
        if self.syslog is not None:
            stamp = time.strftime("%b %e %H:%M:%S")
            msg = f"<{LOG_KERN * 8 + level}>{stamp} kernel: {line}"
            try:
                self.syslog.send(msg.encode("utf-8", "surrogateescape"))
            except OSError:
                pass   # a busy or absent syslog never stops the file log


def run(pin_dir: str, path: str) -> None:
    """Forward every event of the ring pinned in ``pin_dir`` until killed;
    waits for the pin to appear (the first LOG rule creates it) and reopens
    it when it is replaced."""
    sink = Sink(path)
    ring_path = os.path.join(pin_dir, "ring")
    reader: RingReader | None = None
    inode = None
    while True:
        try:
            st = os.stat(ring_path)
        except FileNotFoundError:
            st = None
        if st is None or (reader is not None and st.st_ino != inode):
            if reader is not None:
                for raw in reader.drain():
                    emit(sink, raw)
                reader.close()
                os.close(reader.fd)
                reader = None
            if st is None:
                time.sleep(0.5)
                continue
        if reader is None:
            reader, inode = RingReader(bpfsys.obj_get(ring_path)), st.st_ino
        for raw in reader.drain():
            emit(sink, raw)
        reader.wait(0.5)


def emit(sink: Sink, raw: bytes) -> None:
    ev = Event.parse(raw)
    sink.write(ev.level, format_line(ev))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "lost":
        print(lost(argv[1]))
        return 0
    if len(argv) != 3 or argv[0] != "run":
        print("usage: python -m bpf_iptables.datapath.logger run PINDIR LOGFILE | lost PINDIR",
              file=sys.stderr)
        return 2
    # the daemon's death is ours (as the command server's)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    run(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
