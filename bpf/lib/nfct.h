/* --mode netfilter: the packet's conntrack facts from the kernel's own
 * entry (skb->_nfct), in the layout the classifier's conntrack field and
 * checks read (struct ct_seen, lib/conntrack_defs.h), so that the ctstate
 * table and ct_check_miss() work unchanged; the slot is wider than the
 * eBPF tracker's (NF_CT_SLOT: UNTRACKED, EXPECTED, SRC_NAT, DST_NAT).
 *
 * skb->_nfct is the nf_conn address | ctinfo (low 3 bits); a NULL entry
 * with ctinfo IP_CT_UNTRACKED (7) is UNTRACKED, otherwise INVALID. The
 * address becomes a BTF pointer by the bpf_rdonly_cast kfunc (a register
 * move for the verifier): its members are then plain, exception-handled
 * loads at offsets from the running kernel's BTF (-DOFF_CT_*, nfmode.py).
 * What is read is what xt_conntrack's conntrack_mt() reads: ctinfo, the
 * status bits, both tuples, the protocol, nf_ct_expires(). */
#ifndef BPF_IPTABLES_NFCT_H
#define BPF_IPTABLES_NFCT_H

#include "conntrack_defs.h"

#define NF_CT_UNTRACKED 4
#define NF_CT_SLOTS 1024
#define NF_CT_SLOT(s) (((s)->state | 8 * (s)->dir | 16 * ((s)->status & 0x3F)) & (NF_CT_SLOTS - 1))
#define IP_CT_IS_REPLY 3
#define IP_CT_UNTRACKED 7

static void *(*kf_rdonly_cast)(void *obj, u32 btf_id) = (void *)KFUNC_RDONLY_CAST;

#define CT_U32(ct, off) (*(u32 *)((char *)(ct) + (off)))
#define CT_BE16(ct, off) bpf_ntohs(*(u16 *)((char *)(ct) + (off)))

static __always_inline void nf_ct_view(void *skb, struct ct_seen *s)
{
	u64 nfct = *(u64 *)((char *)skb + OFF_SKB_NFCT);
	u32 ctinfo = nfct & 7;
	u64 addr = nfct & ~7ULL;
	s->dir = 0;
	s->status = 0;
	s->tracked = 0;
	if (!addr) {
		s->state = ctinfo == IP_CT_UNTRACKED ? NF_CT_UNTRACKED : CT_INVALID;
		return;
	}
	void *ct = kf_rdonly_cast((void *)addr, NF_CONN_BTF_ID);
	/* XT_CONNTRACK_STATE_BIT(ctinfo): ESTABLISHED, RELATED, NEW, then
	 * the same three in the reply direction */
	u32 k = ctinfo >= IP_CT_IS_REPLY ? ctinfo - IP_CT_IS_REPLY : ctinfo;
	s->state = k == 0 ? CT_ESTABLISHED : k == 1 ? CT_RELATED : CT_NEW;
	s->dir = ctinfo >= IP_CT_IS_REPLY;
	s->status = (u32)*(u64 *)((char *)ct + OFF_CT_STATUS);
	s->tracked = 1;
	s->tup[0] = bpf_ntohl(CT_U32(ct, OFF_CT_ORIG_SRC_IP));
	s->tup[1] = bpf_ntohl(CT_U32(ct, OFF_CT_ORIG_DST_IP));
	s->tup[2] = bpf_ntohl(CT_U32(ct, OFF_CT_REPL_SRC_IP));
	s->tup[3] = bpf_ntohl(CT_U32(ct, OFF_CT_REPL_DST_IP));
	s->tport[0] = CT_BE16(ct, OFF_CT_ORIG_SRC_PORT);
	s->tport[1] = CT_BE16(ct, OFF_CT_ORIG_DST_PORT);
	s->tport[2] = CT_BE16(ct, OFF_CT_REPL_SRC_PORT);
	s->tport[3] = CT_BE16(ct, OFF_CT_REPL_DST_PORT);
	s->tproto = *(u8 *)((char *)ct + OFF_CT_PROTONUM);
	/* nf_ct_expires() / HZ: an unconfirmed entry's timeout is relative,
	 * which this gives as 0, as the kernel's formula does */
	s32 left = (s32)(CT_U32(ct, OFF_CT_TIMEOUT) - (u32)bpf_jiffies64());
	s->remaining = left > 0 ? (u32)left / CT_HZ : 0;
}

/* xt_conntrack's tuple and expiry tests (lib/conntrack.h ct_check_miss,
 * the same test on the same layout; that header brings the eBPF tracker) */
static __always_inline u64 ct_check_miss(struct ct_check *c, struct ct_seen *s)
{
	u32 f = c->flags, inv = c->inv;
	if (!f || !s->tracked)
		return 0;
	u64 miss = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (f & (CTC_ADDR0 << i))
			miss |= (((s->tup[i] ^ c->addr[i]) & c->mask[i]) == 0) ==
				!!(inv & (CTC_ADDR0 << i));
		if (f & (CTC_PORT0 << i))
			miss |= (s->tport[i] >= c->plo[i] && s->tport[i] <= c->phi[i]) ==
				!!(inv & (CTC_PORT0 << i));
	}
	if (f & CTC_PROTO)
		miss |= (s->tproto == c->proto) == !!(inv & CTC_PROTO);
	if (f & CTC_EXPIRES)
		miss |= (s->remaining >= c->exp_lo && s->remaining <= c->exp_hi) ==
			!!(inv & CTC_EXPIRES);
	return miss;
}

#endif
