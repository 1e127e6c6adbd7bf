/* Netfilter-hook prototype (BPF_PROG_TYPE_NETFILTER, kernel 6.4+).
 *
 * Attached by a BPF_NETFILTER link at an IPv4 hook (pf, hooknum,
 * priority), it runs where iptables' own chains run: at LOCAL_IN with a
 * priority above NF_IP_PRI_NAT_DST (-100) it sees the packet after
 * conntrack and the nat table's DNAT, with the mark the nat or mangle
 * table set. It counts packets per (daddr, dport, DNAT bit, mark), keeps
 * what the last packet of each hook showed (interfaces, conntrack entry)
 * and drops the DNATed packets of one configured port: the feasibility
 * test of a `--mode netfilter` (see the README's "Netfilter hooks").
 *
 * Its context is struct bpf_nf_ctx { const struct nf_hook_state *state;
 * struct sk_buff *skb; }: kernel structures no uapi header describes, and
 * the headers bcc finds here are another kernel's. Every offset (OFF_*)
 * comes from the running kernel's BTF (datapath/nfhook_btf.py) as a -D
 * flag. Two ways to the packet bytes (READ_DYNPTR):
 *   0: bpf_probe_read_kernel() of skb->head + skb->network_header into a
 *      stack copy (a helper call per read);
 *   1: the kfuncs bpf_dynptr_from_skb() + bpf_dynptr_slice(), which the
 *      verifier allows for this program type: a pointer into the linear
 *      data (or a copy into the buffer when the bytes are not linear).
 *      bcc cannot emit a kfunc call; the program calls fake helper ids
 *      KFUNC_*, which nfhook.py rewrites into kfunc calls (BTF ids). */
#include <uapi/linux/bpf.h>

#define NF_DROP 0
#define NF_ACCEPT 1
#define IPS_SRC_NAT (1u << 4)
#define IPS_DST_NAT (1u << 5)
#define NFCT_INFOMASK 7ul
#define PROTO_TCP 6
#define PROTO_UDP 17

#ifndef READ_DYNPTR
#define READ_DYNPTR 0
#endif
/* READ_BTF: skb and hook-state fields by plain loads, which the verifier
 * allows on the trusted BTF pointers of the context (checked against the
 * kernel's BTF, run as exception-handled loads); 0: bpf_probe_read_kernel */
#ifndef READ_BTF
#define READ_BTF 0
#endif
/* bench builds (nfhook_bench.py): MEASURE_COST 0 leaves out the ktime
 * bookkeeping; STOP_AFTER 0 returns at once, 1 after reading the packet
 * bytes, 2 (default) runs everything */
#ifndef MEASURE_COST
#define MEASURE_COST 1
#endif
#ifndef STOP_AFTER
#define STOP_AFTER 2
#endif

struct nf_ctx {
	void *state;   /* const struct nf_hook_state * */
	void *skb;     /* struct sk_buff * */
};

struct count_key {
	u32 daddr;     /* network order, as on the wire */
	u16 dport;     /* host order */
	u8 dnat;       /* the conntrack entry has IPS_DST_NAT */
	u8 proto;
	u32 mark;
};

struct seen {
	u32 hook;
	u32 in_ifindex;
	u32 out_ifindex;
	u32 ctinfo;
	u64 status;
	u32 timeout;        /* nf_conn.timeout: jiffies when it expires */
	u32 orig_daddr;     /* tuplehash[ORIGINAL].tuple.dst.u3.ip */
	u32 reply_saddr;    /* tuplehash[REPLY].tuple.src.u3.ip */
	u16 orig_dport;     /* host order */
	u16 reply_sport;    /* host order */
	u32 mark;
	u32 len;
	u32 _pad;
};

struct cost {
	u64 ns;
	u64 packets;
};

BPF_HASH(counts, struct count_key, u64, 1024);
/* by hook (NF_INET_*): the program may be linked at several */
BPF_ARRAY(last, struct seen, 5);
/* slot 0: drop DNATed packets to this (post-NAT) port; 0: drop nothing */
BPF_ARRAY(config, u32, 1);
BPF_PERCPU_ARRAY(cost, struct cost, 1);

#define PROBE(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))
#if READ_BTF
/* evaluates to 0 ("read") like bpf_probe_read_kernel's success */
#define READ(dst, base, off) ((dst) = *(typeof(dst) *)((char *)(base) + (off)), 0)
#else
#define READ(dst, base, off) PROBE(dst, base, off)
#endif

#if READ_BTF
/* bpf_rdonly_cast(obj, btf_id): the scalar nf_conn address as a BTF
 * pointer (plain loads, exception-handled); the verifier turns the call
 * into a register move */
static void *(*kf_rdonly_cast)(void *obj, u32 btf_id) = (void *)KFUNC_RDONLY_CAST;
#define CT_READ(dst, base, off) READ(dst, base, off)
#else
#define CT_READ(dst, base, off) PROBE(dst, base, off)
#endif

#if READ_DYNPTR
struct dynptr { u64 a; u64 b; } __attribute__((aligned(8)));
/* rewritten to kfunc calls by nfhook.py (imm -> BTF id, src_reg 2) */
static long (*kf_dynptr_from_skb)(void *skb, u64 flags, struct dynptr *p) = (void *)KFUNC_FROM_SKB;
static void *(*kf_dynptr_slice)(struct dynptr *p, u32 off, void *buf, u32 len) = (void *)KFUNC_SLICE;
#endif

/* The IPv4 header's first 20 bytes and the first 4 of L4 (ports), read
 * at the network header. Returns 0 when they could be read. */
static __always_inline int packet(void *skb, u8 *ip, u8 *l4)
{
#if READ_DYNPTR
	struct dynptr p;
	if (kf_dynptr_from_skb(skb, 0, &p))
		return -1;
	u8 *h = kf_dynptr_slice(&p, 0, ip, 20);
	if (!h)
		return -1;
	if (h != ip)
		__builtin_memcpy(ip, h, 20);
	u32 ihl = (ip[0] & 0xf) * 4;
	if (ihl < 20)
		return -1;
	u8 *t = kf_dynptr_slice(&p, ihl, l4, 4);
	if (!t)
		return 0;   /* no L4 bytes: ports stay 0 */
	if (t != l4)
		__builtin_memcpy(l4, t, 4);
	return 0;
#else
	unsigned char *head;
	u16 nh;
	if (READ(head, skb, OFF_SKB_HEAD) || READ(nh, skb, OFF_SKB_NETWORK_HEADER))
		return -1;
	if (bpf_probe_read_kernel(ip, 20, head + nh))
		return -1;
	u32 ihl = (ip[0] & 0xf) * 4;
	if (ihl < 20)
		return -1;
	bpf_probe_read_kernel(l4, 4, head + nh + ihl);   /* failure: ports stay 0 */
	return 0;
#endif
}

int nf_count(struct nf_ctx *ctx)
{
#if STOP_AFTER == 0
	return NF_ACCEPT;
#endif
#if MEASURE_COST
	u64 t0 = bpf_ktime_get_ns();
#endif
	void *skb = ctx->skb;
	void *state = ctx->state;
	u32 zero = 0;
	int verdict = NF_ACCEPT;

	u8 ip[20] = {};
	u8 l4[4] = {};
	if (packet(skb, ip, l4))
		goto out;
#if STOP_AFTER == 1
	if (ip[9] == 0xff)   /* keeps the reads: the compiler cannot drop them */
		verdict = NF_DROP;
	goto out;
#endif
	u16 frag = ((u16)ip[6] << 8 | ip[7]) & 0x1fff;
	struct count_key k = {};
	__builtin_memcpy(&k.daddr, ip + 16, 4);
	k.proto = ip[9];
	if (!frag && (k.proto == PROTO_TCP || k.proto == PROTO_UDP))
		k.dport = (u16)l4[2] << 8 | l4[3];
	READ(k.mark, skb, OFF_SKB_MARK);

	struct seen s = {};
	s.mark = k.mark;
	READ(s.len, skb, OFF_SKB_LEN);
	u8 hook = 0;
	READ(hook, state, OFF_STATE_HOOK);
	s.hook = hook;
	void *dev = 0;
	if (!READ(dev, state, OFF_STATE_IN) && dev)
		READ(s.in_ifindex, dev, OFF_DEV_IFINDEX);
	dev = 0;
	if (!READ(dev, state, OFF_STATE_OUT) && dev)
		READ(s.out_ifindex, dev, OFF_DEV_IFINDEX);

	unsigned long nfct = 0;
	READ(nfct, skb, OFF_SKB_NFCT);
	void *ct = (void *)(nfct & ~NFCT_INFOMASK);
#if READ_BTF
	if (ct)
		ct = kf_rdonly_cast(ct, NF_CONN_BTF_ID);
#endif
	s.ctinfo = nfct & NFCT_INFOMASK;
	if (ct) {
		CT_READ(s.status, ct, OFF_CT_STATUS);
		CT_READ(s.timeout, ct, OFF_CT_TIMEOUT);
		CT_READ(s.orig_daddr, ct, OFF_CT_ORIG_DST_IP);
		CT_READ(s.reply_saddr, ct, OFF_CT_REPLY_SRC_IP);
		u16 port = 0;
		CT_READ(port, ct, OFF_CT_ORIG_DST_PORT);
		s.orig_dport = bpf_ntohs(port);
		port = 0;
		CT_READ(port, ct, OFF_CT_REPLY_SRC_PORT);
		s.reply_sport = bpf_ntohs(port);
		k.dnat = !!(s.status & IPS_DST_NAT);
	}
	u32 slot = hook;
	last.update(&slot, &s);

	u64 one = 1;
	u64 *n = counts.lookup(&k);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		counts.update(&k, &one);

	u32 *drop = config.lookup(&zero);
	if (drop && *drop && k.dnat && k.dport == *drop)
		verdict = NF_DROP;
out:;
#if MEASURE_COST
	struct cost *c = cost.lookup(&zero);
	if (c) {
		c->ns += bpf_ktime_get_ns() - t0;
		c->packets++;
	}
#endif
	return verdict;
}
