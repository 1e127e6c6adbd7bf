/* REJECT replies through OUTPUT.
 *
 * iptables' replies (icmp_send(), nf_send_reset()) leave through the
 * local output path: the filter table's OUTPUT chain counts them and its
 * verdict decides whether they are sent. Here xdp_reject, once the reply
 * is built (INPUT or FORWARD), tail-calls a classifier of OUTPUT's rules
 * through self_map slot SLOT_OUTPUT (filled by generation.fill_slots,
 * datapath/reject_output.py) with the reply and a hand-over: at TC
 * ingress (--mode tc) OUTPUT's own classifier, the hand-over in skb->cb;
 * at XDP OUTPUT's XDP twin (this file built with -DREPLY_XDP=1, sharing
 * OUTPUT's maps), the hand-over in the frame's metadata. It counts the
 * reply in OUTPUT's counters and sends it (TC: bpf_redirect out of the
 * device it came in on; XDP: XDP_TX) only when OUTPUT accepts it; DROP,
 * or a REJECT, drops it. An empty slot (no OUTPUT classifier: no rules,
 * policy ACCEPT) fails the tail call and the reply leaves as before.
 *
 * Conntrack (net/netfilter/nf_conntrack_core.c nf_conntrack_attach(),
 * reached from nf_send_reset() and, for ICMP errors, icmp_glue_bits()):
 * the reply carries the original's entry, RELATED, in the other direction
 * (IP_CT_RELATED_REPLY for an original in the original direction), and
 * OUTPUT's tracker leaves it alone (nf_conntrack_in() returns early for a
 * packet with an entry). An original without an entry (INVALID) attaches
 * nothing: the reply is tracked as any packet (an ICMP error then finds
 * the flow it quotes, if confirmed). The hand-over carries what the
 * original's classifier saw: tracked or not, direction, status bits, the
 * entry's orientation and expiry; the reply's classifier recomputes the
 * flow's key from the reply (the RST's turned-around ports, the ICMP
 * error's quote) for the conntrack tuple tests.
 *
 * skb->cb is not cleared between layers (at egress it holds the IP
 * layer's control block): two 32-bit magic words mark the hand-over, and
 * every exit of a reply's classification clears them. */
#ifndef BPF_IPTABLES_REJECT_OUT_H
#define BPF_IPTABLES_REJECT_OUT_H

#define SLOT_OUTPUT 4
#define REPLY_MAGIC0 0x52454a4fu	/* "REJO" */
#define REPLY_MAGIC3 0x7e1a9c35u
/* cb[1]: the original's conntrack view */
#define REPLY_CT_TRACKED (1u << 31)
#define REPLY_CT_DIR(w) ((w) & 1)
#define REPLY_CT_SWAPPED(w) (((w) >> 1) & 1)
#define REPLY_CT_STATUS(w) (((w) >> 8) & 0xFF)

#ifndef REPLY_XDP
#define REPLY_XDP 0
#endif

#if HOOK_TC
/* 1 when the skb is a REJECT reply handed over for OUTPUT's verdict */
static __always_inline int reply_pending(struct __sk_buff *skb)
{
	return skb->cb[0] == REPLY_MAGIC0 && skb->cb[3] == REPLY_MAGIC3;
}

static __always_inline u32 reply_word(struct __sk_buff *skb)
{
	return skb->cb[1];
}

static __always_inline u32 reply_jexpires(struct __sk_buff *skb)
{
	return skb->cb[2];
}

static __always_inline void reply_clear(struct __sk_buff *skb)
{
	skb->cb[0] = 0;
	skb->cb[3] = 0;
}

/* The end of a reply's classification: OUTPUT's verdict v (an XDP
 * action); accepted, it leaves by the device it came in on. */
static __always_inline int reply_verdict(struct __sk_buff *skb, u32 v)
{
	reply_clear(skb);
	if (v == XDP_PASS)
		return bpf_redirect(skb->ifindex, 0);
	return TC_ACT_SHOT;
}
#define REPLY_MODE 1
#else
/* XDP: the hand-over in the frame's metadata (bpf_xdp_adjust_meta), which
 * XDP_TX ignores. The OUTPUT classifier's XDP twin (REPLY_XDP, loaded by
 * datapath/reject_output.py with OUTPUT's own maps) reads it; the
 * ingress classifiers' xdp_reject writes it. */
struct reply_meta {
	u32 magic0;
	u32 word;
	u32 jexpires;
	u32 magic3;
};

static __always_inline struct reply_meta *reply_meta_of(struct xdp_md *ctx)
{
	struct reply_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return 0;
	return m;
}

/* the hand-over, if the driver keeps metadata (generic XDP and veth do) */
static __always_inline struct reply_meta *reply_handed(struct xdp_md *ctx)
{
	struct reply_meta *m = reply_meta_of(ctx);
	if (m && m->magic0 == REPLY_MAGIC0 && m->magic3 == REPLY_MAGIC3)
		return m;
	return 0;
}

/* the twin classifies nothing but replies (without the hand-over, the
 * reply is tracked as any packet: conntrack's view may then differ) */
static __always_inline int reply_pending(struct xdp_md *ctx)
{
	return 1;
}

static __always_inline u32 reply_word(struct xdp_md *ctx)
{
	struct reply_meta *m = reply_handed(ctx);
	return m ? m->word : 0;
}

static __always_inline u32 reply_jexpires(struct xdp_md *ctx)
{
	struct reply_meta *m = reply_handed(ctx);
	return m ? m->jexpires : 0;
}

/* accepted by OUTPUT: transmitted back where the original came from */
static __always_inline int reply_verdict(struct xdp_md *ctx, u32 v)
{
	return v == XDP_PASS ? XDP_TX : XDP_DROP;
}
#define REPLY_MODE REPLY_XDP
#endif

/* A classifier's exit for verdict v: a reply's, or the usual action */
#if REPLY_MODE
#define RET_OUT(ctx, v) (reply_pending(ctx) ? reply_verdict(ctx, v) : RET(v))
#else
#define RET_OUT(ctx, v) RET(v)
#endif

#if CONNTRACK
/* cb[1] for the reply: the original's view in its classifier's scratch */
static __always_inline u32 reply_ct_word(struct ct_seen *s)
{
	if (s->state == CT_INVALID)
		return 0;
	u32 swapped = s->pending ? s->entry.swapped : s->swapped;
	return REPLY_CT_TRACKED | (s->dir & 1) | ((swapped & 1) << 1) | ((s->status & 0xFF) << 8);
}

static __always_inline u32 reply_ct_jexpires(struct ct_seen *s)
{
	return s->pending ? s->entry.jexpires : s->jexpires;
}

/* The key of the original's flow, from the reply: the RST's turned-around
 * ports, or the ICMP error's quote (read as ct_track_state reads an
 * error's inner flow); its direction to the key, -1 if unreadable. */
static __always_inline int reply_flow_key(void *data, void *data_end, struct packet_fields *pf,
					  struct ct_key *k)
{
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return -1;
	u32 src = bpf_ntohl(ip->saddr), dst = bpf_ntohl(ip->daddr);
	if (ip->protocol == IPPROTO_TCP)
		return ct_make_key(dst, src, IPPROTO_TCP, pf->dport, pf->sport, k);
	if (ip->protocol != IPPROTO_ICMP)
		return -1;
	u8 *l4 = (u8 *)ip + ((ip->ihl & 0xF) * 4);
	struct iphdr *in = (struct iphdr *)(l4 + 8);
	if ((void *)(in + 1) > data_end)
		return -1;
	u8 *il4 = (u8 *)in + ((in->ihl & 0xF) * 4);
	if (il4 + 8 > (u8 *)data_end)
		return -1;
	u32 iproto = in->protocol;
	u32 isport = 0, idport = 0;
	if (iproto == IPPROTO_TCP || iproto == IPPROTO_UDP) {
		isport = ((u32)il4[0] << 8) | il4[1];
		idport = ((u32)il4[2] << 8) | il4[3];
	} else if (iproto == IPPROTO_ICMP) {
		isport = ((u32)il4[4] << 8) | il4[5];
		idport = ((u32)il4[0] << 8) | il4[1];
	}
	return ct_make_key(bpf_ntohl(in->saddr), bpf_ntohl(in->daddr), iproto, isport, idport, k);
}

/* The reply's conntrack view in OUTPUT (see the top of this file). */
static __always_inline void ct_reply(void *data, void *data_end, struct packet_fields *pf,
				     struct ct_seen *s, u32 word, u32 jexpires)
{
	if (!(word & REPLY_CT_TRACKED)) {
		ct_track(data, data_end, pf, s, 0);
		return;
	}
	s->now = bpf_ktime_get_ns();
	s->state = CT_INVALID;
	s->dir = CT_ORIGINAL;
	s->pending = 0;
	s->status = 0;
	if (reply_flow_key(data, data_end, pf, &s->key) >= 0) {
		s->state = CT_RELATED;
		s->dir = REPLY_CT_DIR(word) ^ 1;
		s->status = REPLY_CT_STATUS(word);
		s->swapped = REPLY_CT_SWAPPED(word);
		s->jexpires = jexpires;
	}
	ct_view(s);
}
#endif

#endif
