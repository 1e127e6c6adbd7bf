/* The host's own looped-back multicast/broadcast copies (issue 5).
 *
 * A namespace that sends to a multicast group it has joined
 * (IP_MULTICAST_LOOP, the default) or to a broadcast address receives a
 * copy of its own datagram: ip_mc_output() clones it and
 * dev_loopback_xmit() hands the clone to netif_rx() on the sending
 * device with skb->pkt_type PACKET_LOOPBACK and no MAC header (mac_len 0:
 * the data starts at the IP header). Netfilter runs PREROUTING and INPUT
 * on it, with the sending device as the input device.
 *
 * Native XDP never sees such a copy (it does not come from the driver);
 * generic XDP and TC ingress see it without an Ethernet header. So:
 * - the XDP root leaves every frame that starts like a bare IPv4 datagram
 *   (version 4, total length = the frame's length, a valid header
 *   checksum: loop_shaped()) to TC ingress untouched and uncounted,
 *   tagging it in the XDP metadata (LOOP_TAG) so that a real Ethernet
 *   frame that happens to look like one is still classified there;
 * - TC ingress (tc_loop_root in the XDP modes, tc_ingress_root in tc
 *   mode), which can read pkt_type, gives PACKET_LOOPBACK packets a
 *   zeroed Ethernet header (loop_push_eth(): every reader of the frame
 *   then finds the IP header at 14, as for a received frame; TC ingress
 *   pulls the new MAC header again when it returns, so the stack sees
 *   the packet as before, apart from a MAC header that nothing after
 *   INPUT's filter reads for a local multicast datagram) and tail-calls
 *   the TC build of the INPUT classifier, which knows the copy by
 *   skb->pkt_type (LOOPED()). */
#ifndef BPF_IPTABLES_LOOPBACK_H
#define BPF_IPTABLES_LOOPBACK_H

#define PACKET_LOOPBACK_TYPE 5	/* PACKET_LOOPBACK (uapi/linux/if_packet.h) */
/* XDP metadata word of a frame the XDP root left to TC ingress */
#define LOOP_TAG 0x6c6f6f70u	/* "loop" */

/* When the frame data..data_end starts with a complete IPv4 header whose
 * checksum holds: its total length, which the caller compares with the
 * frame's whole length; else 0. Every looped copy has that shape (its
 * header was finished by ip_local_out() before the clone); an Ethernet
 * frame has it only when its destination MAC begins 4X:..:LL:LL with
 * LL:LL the frame's length and its first 20-60 bytes happen to sum to a
 * valid IP checksum. Most frames leave at the first byte. */
static __always_inline u32 loop_shaped(const u8 *p, const void *data_end)
{
	if ((const void *)(p + 20) > data_end)
		return 0;
	u32 v = p[0];
	if ((v >> 4) != 4 || (v & 0xF) < 5)
		return 0;
	u32 words = (v & 0xF) * 2;
	u32 sum = 0;
#pragma unroll
	for (u32 k = 0; k < 30; k++) {
		if (k < words) {
			if ((const void *)(p + 2 * k + 2) > data_end)
				return 0;
			sum += ((u32)p[2 * k] << 8) | p[2 * k + 1];
		}
	}
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return sum == 0xFFFF ? (((u32)p[2] << 8) | p[3]) : 0;
}

#endif
