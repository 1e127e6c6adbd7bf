/* Ethernet/IPv4/TCP/UDP parsing into the fields the classifier looks at.
 *
 * What the filter table would never see is left to the kernel: frames
 * that are not IPv4 (PARSE_NOT_OURS) and IPv4 headers the kernel drops in
 * ip_rcv() before any hook (bad version, ihl < 5, total length shorter
 * than the header or longer than the frame: PARSE_MALFORMED). Both pass
 * unclassified and uncounted. Header checksums are not verified here.
 *
 * L4 fields exist only for the first fragment (offset 0) of TCP/UDP with
 * a complete header inside the IP total length; otherwise "l4" is 0 and
 * rules with a tcp/udp match do not match (the kernel would hotdrop a
 * truncated header instead; see datapath/README). */
#ifndef BPF_IPTABLES_PARSE_H
#define BPF_IPTABLES_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#define PARSE_OK 0
#define PARSE_NOT_OURS 1
#define PARSE_MALFORMED 2

#define TCP_FLAGS_NONE 64 /* flags-table index when there is no TCP header */
#define TCP_FLAGS_EVIL 65 /* flags-table index of an offset-1 TCP fragment */
#define ICMP_NONE 0x10001 /* icmp-table key: no ICMP header (fragment, truncated, not ICMP) */

/* skb->pkt_type as eth_type_trans() sets it from the destination MAC
 * (a frame to another host's MAC, PACKET_OTHERHOST in the kernel, is
 * dropped by ip_rcv() before any chain: classified as host here) */
#define PACKET_HOST 0
#define PACKET_BROADCAST 1
#define PACKET_MULTICAST 2

struct packet_fields {
	u64 src_mac;	/* Ethernet source address, first byte highest */
	u32 pkttype;	/* PACKET_HOST, _BROADCAST or _MULTICAST */
	u32 saddr;	/* network byte order, as the LPM key wants it */
	u32 daddr;
	u32 proto;
	u32 length;	/* IP total length: what iptables counts as bytes */
	u32 ttl;	/* the frame's TTL */
	u32 tos;	/* the TOS byte (DSCP << 2 | ECN) */
	u32 fragment;	/* non-first fragment */
	u32 l4;		/* ports (and TCP flags) below are valid */
	u32 sport;	/* host byte order */
	u32 dport;
	u32 tcp_flags;	/* FIN..URG (0..63), or TCP_FLAGS_NONE/_EVIL */
	u32 icmp;	/* ICMP type << 8 | code, ICMP_NONE without an ICMP header */
	u32 evil;	/* TCP fragment at offset 1: a tcp match hot-drops it
			 * (xt_tcpudp: it could overwrite the first fragment's
			 * flags) */
};

static __always_inline int parse_packet(void *data, void *data_end,
					struct packet_fields *f, u32 wire_len)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_OURS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_OURS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	const u8 *sm = eth->h_source, *dm = eth->h_dest;
	f->src_mac = ((u64)sm[0] << 40) | ((u64)sm[1] << 32) | ((u64)sm[2] << 24) |
		     ((u64)sm[3] << 16) | ((u64)sm[4] << 8) | sm[5];
	if ((dm[0] & dm[1] & dm[2] & dm[3] & dm[4] & dm[5]) == 0xFF)
		f->pkttype = PACKET_BROADCAST;
	else
		f->pkttype = (dm[0] & 1) ? PACKET_MULTICAST : PACKET_HOST;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	u32 hlen = (ip->ihl & 0xF) * 4;
	u32 total = bpf_ntohs(ip->tot_len);
	/* wire_len: an skb's whole length (its payload may lie beyond
	 * data_end, in fragments); 0: the frame is data..data_end (XDP) */
	u64 avail = wire_len ? (u64)wire_len - sizeof(*eth) : (u64)(data_end - (void *)ip);
	if (total < hlen || total > avail)
		return PARSE_MALFORMED;

	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->length = total;
	f->ttl = ip->ttl;
	f->tos = ip->tos;
	f->fragment = (bpf_ntohs(ip->frag_off) & 0x1FFF) != 0;
	f->l4 = 0;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = TCP_FLAGS_NONE;
	f->evil = 0;
	f->icmp = ICMP_NONE;
	if (f->fragment) {
		if ((bpf_ntohs(ip->frag_off) & 0x1FFF) == 1 && ip->protocol == IPPROTO_TCP) {
			f->evil = 1;
			f->tcp_flags = TCP_FLAGS_EVIL;
		}
		return PARSE_OK;
	}

	void *l4 = (void *)ip + hlen;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end || hlen + sizeof(*th) > total)
			return PARSE_OK;
		f->sport = bpf_ntohs(th->source);
		f->dport = bpf_ntohs(th->dest);
		f->tcp_flags = ((u8 *)th)[13] & 0x3F;
		f->l4 = 1;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end || hlen + sizeof(*uh) > total)
			return PARSE_OK;
		f->sport = bpf_ntohs(uh->source);
		f->dport = bpf_ntohs(uh->dest);
		f->l4 = 1;
	} else if (ip->protocol == IPPROTO_ICMP) {
		/* xt_icmp reads the 8-byte header (struct icmphdr) */
		u8 *ih = l4;
		if ((void *)(ih + 8) > data_end || hlen + 8 > total)
			return PARSE_OK;
		f->icmp = ((u32)ih[0] << 8) | ih[1];
	}
	return PARSE_OK;
}

#endif
