/* -j REJECT: the reply built in place, as the kernel's ipt_REJECT builds it
 * (net/ipv4/netfilter/nf_reject_ipv4.c: nf_send_unreach -> icmp_send,
 * nf_send_reset), and sent back where the original came from.
 *
 * An entry's verdict carries the reject (compiler.reject_verdict):
 *   VERDICT_REJECT | type (enum ipt_reject_with, bits 0-7)
 *   | REJECT_FORWARD (ICMP source: the route's source toward the sender,
 *     as icmp_send() picks it for a packet not addressed to this host)
 *   | REJECT_OUTPUT (TC egress: the reply is turned into the stack, at the
 *     ingress of the same device, so the local socket receives it)
 *   | TTL << 16 (the namespace's net.ipv4.ip_default_ttl when compiled).
 * The classifier counts the rule, leaves the verdict in the per-CPU resume
 * slot and tail-calls xdp_reject (filter.c, self_map slot 1), a program of
 * its own: built into the classifier, even behind one branch, this code
 * made the verifier walk the scan loop's states a third more (a 5-field,
 * 600-step shape went from 337k to over a million instructions).
 *
 * Replies (what the kernel sends):
 * - ICMP destination unreachable, code by type: eth | IP (20 bytes, tos
 *   (orig & 0x1E) | 0xC0, no DF, TTL) | ICMP (8) | the original IP packet,
 *   at most 576 - 28 = 548 bytes of it (icmp_send's room);
 * - tcp-reset: eth | IP (tos 0, id 0, DF, TTL) | TCP (20 bytes, no
 *   options, window 0): ports swapped; with ACK in the original, seq =
 *   its ack_seq and no ACK; else ack_seq = seq + SYN + FIN + payload, ACK.
 * No reply (the original is still dropped), as the kernel: to a non-first
 * fragment, to a broadcast/multicast destination (255.255.255.255,
 * 224.0.0.0/4), an ICMP error only for PACKET_HOST frames and never in
 * answer to an ICMP error (types 3, 4, 5, 11, 12, or unknown above 18),
 * tcp-reset only for a complete TCP header without RST. */
#ifndef BPF_IPTABLES_REJECT_H
#define BPF_IPTABLES_REJECT_H

#include "loop.h"

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>

#define VERDICT_REJECT 0x100u
#define REJECT_FORWARD 0x200u
#define REJECT_OUTPUT 0x400u
#define REJECT_TYPE(v) ((v) & 0xFFu)
#define REJECT_TTL(v) (((v) >> 16) & 0xFFu)

/* enum ipt_reject_with */
#define IPT_ICMP_NET_UNREACHABLE 0
#define IPT_ICMP_HOST_UNREACHABLE 1
#define IPT_ICMP_PROT_UNREACHABLE 2
#define IPT_ICMP_PORT_UNREACHABLE 3
#define IPT_ICMP_NET_PROHIBITED 5
#define IPT_ICMP_HOST_PROHIBITED 6
#define IPT_TCP_RESET 7
#define IPT_ICMP_ADMIN_PROHIBITED 8

#define REJECT_ROOM 576		/* icmp_send(): the reply fits in 576 bytes */
#define REJECT_QUOTE (REJECT_ROOM - 28)
#define REJECT_ICMP_LEN (14 + 20 + 8)
#define REJECT_RST_LEN (14 + 20 + 20)
/* bpf_fib_lookup flags (uapi; bcc's own headers may predate them) */
#define REJECT_FIB_SKIP_NEIGH (1U << 2)
#define REJECT_FIB_SRC (1U << 4)

/* What the reply needs of the original, read before it is overwritten. */
struct reject_orig {
	u8 smac[6];
	u8 dmac[6];
	u32 saddr, daddr;	/* network order */
	u16 sport, dport;	/* network order */
	u32 seq, ack_seq;	/* network order */
	u32 tot_len;
	u32 payload;		/* TCP payload bytes */
	u8 tos, flags;		/* TCP flags byte */
};

/* ICMP code of a reject type (ipt_REJECT's reject()); 0xFF: not ICMP */
static __always_inline u32 reject_icmp_code(u32 type)
{
	switch (type) {
	case IPT_ICMP_NET_UNREACHABLE: return 0;	/* ICMP_NET_UNREACH */
	case IPT_ICMP_HOST_UNREACHABLE: return 1;	/* ICMP_HOST_UNREACH */
	case IPT_ICMP_PROT_UNREACHABLE: return 2;	/* ICMP_PROT_UNREACH */
	case IPT_ICMP_PORT_UNREACHABLE: return 3;	/* ICMP_PORT_UNREACH */
	case IPT_ICMP_NET_PROHIBITED: return 9;	/* ICMP_NET_ANO */
	case IPT_ICMP_HOST_PROHIBITED: return 10;	/* ICMP_HOST_ANO */
	case IPT_ICMP_ADMIN_PROHIBITED: return 13;	/* ICMP_PKT_FILTERED */
	}
	return 0xFF;
}

/* 0 when a reply is due (the rules in the header comment), the original's
 * fields in *o; -1: drop silently. */
static __always_inline int reject_read(void *data, void *data_end, struct packet_fields *pf,
				       u32 type, struct reject_orig *o)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (pf->fragment)
		return -1;
	u32 dh = bpf_ntohl(pf->daddr);
	if (dh == 0xFFFFFFFFu || (dh >> 28) == 0xE)
		return -1;
	__builtin_memcpy(o->smac, eth->h_source, 6);
	__builtin_memcpy(o->dmac, eth->h_dest, 6);
	o->saddr = ip->saddr;
	o->daddr = ip->daddr;
	o->tot_len = pf->length;
	o->tos = ip->tos;
	u32 hlen = (ip->ihl & 0xF) * 4;
	if (type == IPT_TCP_RESET) {
		if (pf->proto != IPPROTO_TCP || !pf->l4)
			return -1;
		struct tcphdr *th = (void *)ip + hlen;
		if ((void *)(th + 1) > data_end)
			return -1;
		u8 flags = ((u8 *)th)[13];
		if (flags & 0x04)	/* no RST for a RST */
			return -1;
		o->sport = th->source;
		o->dport = th->dest;
		o->seq = th->seq;
		o->ack_seq = th->ack_seq;
		o->flags = flags;
		u32 doff = (((u8 *)th)[12] >> 4) * 4;
		u32 hdrs = hlen + doff;
		o->payload = pf->length > hdrs ? pf->length - hdrs : 0;
		return 0;
	}
	if (reject_icmp_code(type) == 0xFF)
		return -1;
	if (pf->pkttype != PACKET_HOST)
		return -1;
	if (pf->proto == IPPROTO_ICMP) {
		u8 *it = (void *)ip + hlen;
		if ((void *)(it + 1) > data_end || hlen + 1 > pf->length)
			return -1;
		u8 t = *it;
		/* "Assume any unknown ICMP type is an error" (icmp_send) */
		if (t > 18 || t == 3 || t == 4 || t == 5 || t == 11 || t == 12)
			return -1;
	}
	return 0;
}

static __always_inline u16 reject_fold(u64 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return ~sum & 0xFFFF;
}

static __always_inline void reject_ip_header(struct iphdr *ip, u32 tos, u32 tot_len, u16 id,
					     u16 frag, u32 ttl, u32 proto, u32 saddr, u32 daddr)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = tos;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = id;
	ip->frag_off = frag;
	ip->ttl = ttl;
	ip->protocol = proto;
	ip->check = 0;
	ip->saddr = saddr;
	ip->daddr = daddr;
	u16 *w = (u16 *)ip;
	u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	ip->check = reject_fold(sum);
}

static __always_inline void reject_eth(struct ethhdr *eth, struct reject_orig *o)
{
	__builtin_memcpy(eth->h_dest, o->smac, 6);
	__builtin_memcpy(eth->h_source, o->dmac, 6);
	eth->h_proto = bpf_htons(ETH_P_IP);
}

/* eth | IP | TCP RST in data..data_end (exactly REJECT_RST_LEN bytes) */
static __always_inline int reject_fill_rst(void *data, void *data_end, struct reject_orig *o,
					   u32 ttl)
{
	if (data + REJECT_RST_LEN > data_end)
		return -1;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct tcphdr *th = (void *)(ip + 1);
	reject_eth(eth, o);
	/* nf_reject_iphdr_put(): tos 0, id 0, DF */
	reject_ip_header(ip, 0, 40, 0, bpf_htons(0x4000), ttl, IPPROTO_TCP, o->daddr, o->saddr);
	u8 *t = (u8 *)th;
	th->source = o->dport;
	th->dest = o->sport;
	u8 flags = 0x04;	/* RST */
	if (o->flags & 0x10) {	/* the original acks: our seq is what it acks */
		th->seq = o->ack_seq;
		th->ack_seq = 0;
	} else {
		th->seq = 0;
		u32 n = bpf_ntohl(o->seq) + (o->flags & 0x02 ? 1 : 0) + (o->flags & 0x01) + o->payload;
		th->ack_seq = bpf_htonl(n);
		flags |= 0x10;
	}
	t[12] = 5 << 4;
	t[13] = flags;
	th->window = 0;
	th->check = 0;
	th->urg_ptr = 0;
	/* pseudo header + header, summed as 16-bit words in memory order */
	u64 sum = (o->daddr & 0xFFFF) + (o->daddr >> 16) + (o->saddr & 0xFFFF) + (o->saddr >> 16) +
		  bpf_htons(IPPROTO_TCP) + bpf_htons(20);
	u16 *w = (u16 *)th;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	th->check = reject_fold(sum);
	return 0;
}

/* eth | IP | ICMP | quote (q bytes) in data..data_end (REJECT_ICMP_LEN + q) */
static __always_inline int reject_fill_icmp(void *data, void *data_end, struct reject_orig *o,
					    u32 code, u32 saddr, u32 ttl, u32 q, u32 forward)
{
	if (data + REJECT_ICMP_LEN > data_end)
		return -1;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	u8 *icmp = (void *)(ip + 1);
	reject_eth(eth, o);
	/* icmp_send(): tos (orig & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL;
	 * the ICMP socket does not set DF (IP_PMTUDISC_DONT); the id is a
	 * counter there, any value here */
	u16 id = bpf_get_prandom_u32();
	reject_ip_header(ip, (o->tos & 0x1E) | 0xC0, 28 + q, id, 0, ttl, IPPROTO_ICMP, saddr,
			 o->saddr);
	icmp[0] = 3;	/* ICMP_DEST_UNREACH */
	icmp[1] = code;
	*(u32 *)(icmp + 2) = 0;	/* checksum, and the first half of "unused" */
	*(u16 *)(icmp + 6) = 0;
	if (forward) {
		/* netfilter's FORWARD sees (and icmp_send quotes) the packet
		 * after ip_forward()'s ip_decrease_ttl(): the same here */
		struct iphdr *quote = (void *)(icmp + 8);
		if ((void *)(quote + 1) > data_end)
			return -1;
		u32 check = quote->check;
		check += bpf_htons(0x0100);
		quote->check = check + (check >= 0xFFFF);
		quote->ttl -= 1;
	}
	/* the checksum over the header and the quote, 16 bits at a time,
	 * the last word first: n, the words left, counts down, so the
	 * verifier checks the loop a few times (lib/loop.h), not once per
	 * word (~75k instructions, 60 ms). Not from a constant: a full quote
	 * (q = REJECT_QUOTE) would make n one, exact at every step; the
	 * frame's length over 2^32, 0 (the verifier does not know a
	 * difference of packet pointers), makes it unknown. */
	u32 len = 8 + q;
	u64 sum = 0;
	u8 *p = icmp;
#if HAVE_MAY_GOTO
	u64 n = ((len >> 1) + ((u64)(data_end - data) >> 32)) & 0x1FF;
#pragma clang loop unroll(disable)
	while (n) {
		MAY_GOTO(quote_cut);
		n--;
		u8 *c = p + BOUNDED(2 * n, 0x3FF);
		/* hidden from clang, which otherwise turns the bounds check
		 * into a loop count the verifier cannot relate to data_end */
		asm volatile("" : "+r"(c));
		if ((void *)(c + 2) > data_end)
			return -1;
		sum += *(u16 *)c;
	}
	goto quote_done;
quote_cut:
	return -1;	/* may_goto's count ran out: never, n <= 278 */
quote_done:
#else
	/* before 6.9 (lib/loop.h): bounded by the longest quote, checked
	 * once per word */
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < (8 + REJECT_QUOTE) / 2; i++) {
		if (2 * i + 2 > len)
			break;
		u8 *c = p + 2 * i;
		/* hidden from clang, which otherwise turns the bounds check
		 * into a loop count the verifier cannot relate to data_end */
		asm volatile("" : "+r"(c));
		if ((void *)(c + 2) > data_end)
			return -1;
		sum += *(u16 *)c;
	}
#endif
	if (len & 1) {
		u8 *c = p + (len & 0x3FF) - 1;
		if ((void *)(c + 1) > data_end)
			return -1;
		sum += *c;	/* padded with a zero byte (little endian: the low byte) */
	}
	*(u16 *)(icmp + 2) = reject_fold(sum);
	return 0;
}

/* icmp_send()'s source: the original destination when it is this host's;
 * for a forwarded packet the source the route back to the sender picks
 * (icmp_errors_use_inbound_ifaddr off: inet_select_addr by the route) */
static __always_inline u32 reject_icmp_source(void *ctx, struct reject_orig *o, u32 v,
					      u32 ifindex)
{
	if (!(v & REJECT_FORWARD))
		return o->daddr;
	struct bpf_fib_lookup fib = {};
	fib.family = 2;	/* AF_INET */
	fib.ipv4_dst = o->saddr;
	fib.ifindex = ifindex;
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), REJECT_FIB_SRC | REJECT_FIB_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0;
	return fib.ipv4_src;
}

#if HOOK_TC
/* TC: the reply reuses the skb; sent out the device it came in on (TC
 * ingress), or into the stack at the device's ingress (OUTPUT). */
static __always_inline int reject_reply(struct __sk_buff *skb, u32 v, struct packet_fields *pf)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	u32 type = REJECT_TYPE(v);
	struct reject_orig o = {};
	if (reject_read(data, data_end, pf, type, &o))
		return TC_ACT_SHOT;
	u32 ifindex = skb->ifindex;
	u32 ttl = REJECT_TTL(v);
	if (type == IPT_TCP_RESET) {
		if (bpf_skb_change_tail(skb, REJECT_RST_LEN, 0) ||
		    bpf_skb_pull_data(skb, REJECT_RST_LEN))
			return TC_ACT_SHOT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (reject_fill_rst(data, data_end, &o, ttl))
			return TC_ACT_SHOT;
	} else {
		u32 q = o.tot_len < REJECT_QUOTE ? o.tot_len : REJECT_QUOTE;
		u32 saddr = reject_icmp_source(skb, &o, v, ifindex);
		if (!saddr)
			return TC_ACT_SHOT;
		/* keep eth + quote, then 28 bytes in front: the quote stays in place */
		if (bpf_skb_change_tail(skb, 14 + q, 0) || bpf_skb_change_head(skb, 28, 0) ||
		    bpf_skb_pull_data(skb, REJECT_ICMP_LEN + q))
			return TC_ACT_SHOT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (reject_fill_icmp(data, data_end, &o, reject_icmp_code(type), saddr, ttl, q,
				     v & REJECT_FORWARD))
			return TC_ACT_SHOT;
	}
	return bpf_redirect(ifindex, (v & REJECT_OUTPUT) ? BPF_F_INGRESS : 0);
}
#else
/* XDP: the reply is built in the frame and transmitted back (XDP_TX) */
static __always_inline int reject_reply(struct xdp_md *ctx, u32 v, struct packet_fields *pf)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u32 type = REJECT_TYPE(v);
	struct reject_orig o = {};
	if (reject_read(data, data_end, pf, type, &o))
		return XDP_DROP;
	u32 ttl = REJECT_TTL(v);
	if (type == IPT_TCP_RESET) {
		int delta = REJECT_RST_LEN - (int)(data_end - data);
		if (delta && bpf_xdp_adjust_tail(ctx, delta))
			return XDP_DROP;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (reject_fill_rst(data, data_end, &o, ttl))
			return XDP_DROP;
		return XDP_TX;
	}
	u32 q = o.tot_len < REJECT_QUOTE ? o.tot_len : REJECT_QUOTE;
	u32 saddr = reject_icmp_source(ctx, &o, v, ctx->ingress_ifindex);
	if (!saddr)
		return XDP_DROP;
	/* 28 bytes in front: the original IP packet becomes the quote in place */
	if (bpf_xdp_adjust_head(ctx, -28))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	int delta = (int)(REJECT_ICMP_LEN + q) - (int)(data_end - data);
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (reject_fill_icmp(data, data_end, &o, reject_icmp_code(type), saddr, ttl, q,
				     v & REJECT_FORWARD))
		return XDP_DROP;
	return XDP_TX;
}
#endif

/* The reply for the packet in ctx (the classifier's invocation after the
 * REJECT entry), with a parse of its own. */
static __always_inline int reject_packet(CTX_TYPE *ctx, u32 v, u32 wire_len)
{
	struct packet_fields f = {};
	if (parse_packet((void *)(long)ctx->data, (void *)(long)ctx->data_end, &f, wire_len) !=
	    PARSE_OK)
		return RET(XDP_DROP);
	return reject_reply(ctx, v, &f);
}

#endif
