/* One filter-table hook chain as an XDP program: linear bit-vector search.
 *
 * The compiler (bpf_iptables/datapath/compiler.py) lowers the chain, with
 * user chains inlined, to a list of entries. For every header field in use
 * a map gives, per field value, the bitvector of entries whose match on
 * that field holds. The program looks each field up once, then walks the
 * AND of the bitvectors word by word; the lowest set bit is the first
 * matching entry. An entry bumps its rule's per-CPU counters and either
 * ends the scan with a verdict or continues it at a given entry (the next
 * one for counting-only rules and chain calls, further on for RETURN and
 * the end of a goto). The last entry matches every packet: it is the
 * policy, counted in counter slot 0.
 *
 * The shape comes from -D flags (see program.py): NWORDS (bitvector words,
 * a power of two), NENTRIES (= 64 * NWORDS), NCOUNTERS, STEPS (scan loop
 * bound), FIELD_* (which fields are compiled in) and the field map sizes.
 * Map contents can be rewritten without recompiling as long as the shape
 * still fits. */
#include <uapi/linux/bpf.h>

#include "lib/bitvector.h"
#include "lib/parse.h"
#include "lib/ranges.h"

#define VERDICT_CONTINUE 0xFFFFFFFFu

/* HOOK_TC: the same classifier as a TC program (tail-called by the TC
 * roots of bpf/root.c): OUTPUT at egress, and INPUT/FORWARD at ingress
 * in --mode tc. The "interface" field is skb->ifindex, the device the
 * packet is on: the output device at egress, the input device at
 * ingress. XDP verdicts become TC actions (PASS -> OK, anything else ->
 * SHOT). */
#if HOOK_TC
#include <uapi/linux/pkt_cls.h>
#define CTX_TYPE struct __sk_buff
#define CTX_IFINDEX(ctx) ((ctx)->ifindex)
#define RET(v) ((v) == XDP_PASS ? TC_ACT_OK : TC_ACT_SHOT)
#else
#define CTX_TYPE struct xdp_md
#define CTX_IFINDEX(ctx) ((ctx)->ingress_ifindex)
#define RET(v) (v)
#endif

struct config {
	u32 first_word;	  /* always 0; read from the map so the verifier treats
			   * the word index as a range, not as a constant per
			   * path (constants would defeat state pruning) */
};

struct entry {
	u32 counter;	/* per-CPU counter slot of the rule (1: scratch) */
	u32 verdict;	/* XDP verdict, or VERDICT_CONTINUE */
	u32 next;	/* entry to continue the scan at */
	u32 tcp;	/* the rule has a tcp match: hot-drops evil fragments */
	/* per-candidate check of what does not decompose into fields: an
	 * address under a non-contiguous mask (mask 0: nothing to check) */
	u32 src_addr, src_mask, src_inv;
	u32 dst_addr, dst_mask, dst_inv;
};

/* 1 when (addr & mask) != want, without a branch (see bitvector.h) */
static __always_inline u64 differs(u32 addr, u32 mask, u32 want)
{
	u64 diff = (addr & mask) ^ want;
	return (diff + 0xFFFFFFFFULL) >> 32;
}

struct counter {
	u64 packets;
	u64 bytes;
};

struct lpm_v4_key {
	u32 prefixlen;
	u32 addr;
};

/* A scan longer than STEPS continues in a tail call of this same
 * program (at most 32 times: the kernel's tail call limit is 33), with
 * the scan position handed over in a per-CPU slot; the packet is parsed
 * and the fields looked up again, which is cheap next to a long scan. */
struct resume {
	u64 cur;
	u32 word;
	u32 active;
	u32 evil;	/* pf.evil, read back from here inside the scan: a
			 * value from a map is unknown to the verifier, so it
			 * does not verify the loop once per constant */
	u32 pad;
};

BPF_ARRAY(config_map, struct config, 1);
BPF_PERCPU_ARRAY(resume_map, struct resume, 1);
BPF_PROG_ARRAY(self_map, 1);
BPF_ARRAY(live_map, struct bitvector, 1);
BPF_ARRAY(entry_map, struct entry, NENTRIES);
BPF_PERCPU_ARRAY(counter_map, struct counter, NCOUNTERS);

#if FIELD_SRC
BPF_LPM_TRIE(src_map, struct lpm_v4_key, struct bitvector, SRC_MAX);
#define TERM_SRC(ix) &f_src->word[ix]
#else
#define TERM_SRC(ix)
#endif
#if FIELD_DST
BPF_LPM_TRIE(dst_map, struct lpm_v4_key, struct bitvector, DST_MAX);
#define TERM_DST(ix) &f_dst->word[ix]
#else
#define TERM_DST(ix)
#endif
#if FIELD_PROTO
/* key: protocol number, PROTO_DEFAULT for every protocol not listed */
#define PROTO_DEFAULT 256
BPF_HASH(proto_map, u32, struct bitvector, PROTO_MAX);
#define TERM_PROTO(ix) &f_proto->word[ix]
#else
#define TERM_PROTO(ix)
#endif
#if FIELD_IIF
/* key: ifindex, 0 for interfaces unknown at compile time */
BPF_HASH(iif_map, u32, struct bitvector, IIF_MAX);
#define TERM_IIF(ix) &f_iif->word[ix]
#else
#define TERM_IIF(ix)
#endif
#if FIELD_FRAG
/* 0: not a fragment or first fragment, 1: non-first fragment */
BPF_ARRAY(frag_map, struct bitvector, 2);
#define TERM_FRAG(ix) &f_frag->word[ix]
#else
#define TERM_FRAG(ix)
#endif
#if FIELD_FLAGS
/* index: TCP flags & 0x3F, TCP_FLAGS_NONE or TCP_FLAGS_EVIL */
BPF_ARRAY(flags_map, struct bitvector, TCP_FLAGS_EVIL + 1);
#define TERM_FLAGS(ix) &f_flags->word[ix]
#else
#define TERM_FLAGS(ix)
#endif
#if FIELD_SPORT
DEFINE_INTERVAL_SEARCH(sport, SPORT_BSIZE)
BPF_ARRAY(sport_bounds_map, struct sport_bounds, 1);
/* index: interval, SPORT_BSIZE when the packet has no ports,
 * SPORT_BSIZE + 1 for an offset-1 TCP fragment */
BPF_ARRAY(sport_map, struct bitvector, SPORT_BSIZE + 2);
#define TERM_SPORT(ix) &f_sport->word[ix]
#else
#define TERM_SPORT(ix)
#endif
#if FIELD_DPORT
DEFINE_INTERVAL_SEARCH(dport, DPORT_BSIZE)
BPF_ARRAY(dport_bounds_map, struct dport_bounds, 1);
BPF_ARRAY(dport_map, struct bitvector, DPORT_BSIZE + 2);
#define TERM_DPORT(ix) &f_dport->word[ix]
#else
#define TERM_DPORT(ix)
#endif

#if FIELD_ICMP
/* key: type << 8 | code of every listed type, ICMP_OTHER for the types not
 * listed, ICMP_NONE (parse.h) for packets without an ICMP header */
#define ICMP_OTHER 0x10000
BPF_HASH(icmp_map, u32, struct bitvector, ICMP_MAX);
#define TERM_ICMP(ix) &f_icmp->word[ix]
#else
#define TERM_ICMP(ix)
#endif

/* The AND of all compiled-in fields' bitvectors at word ix. */
#define AND_WORD(ix) (live->word[ix] TERM_SRC(ix) TERM_DST(ix) TERM_PROTO(ix) \
		      TERM_IIF(ix) TERM_FRAG(ix) TERM_FLAGS(ix) TERM_SPORT(ix)   \
		      TERM_DPORT(ix) TERM_ICMP(ix))

static __always_inline void count(u32 slot, u32 length)
{
	struct counter *c = counter_map.lookup(&slot);
	if (c) {
		/* per-CPU value: no atomics needed */
		c->packets += 1;
		c->bytes += length;
	}
}

int xdp_filter(CTX_TYPE *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet_fields pf = {};
	if (parse_packet(data, data_end, &pf) != PARSE_OK)
		return RET(XDP_PASS);

	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	struct bitvector *live = live_map.lookup(&zero);
	if (!cfg || !live)
		return RET(XDP_ABORTED);

	/* One lookup per field; the bitvectors are then read in place. */
#if FIELD_SRC
	struct lpm_v4_key skey = {32, pf.saddr};
	struct bitvector *f_src = src_map.lookup(&skey);
	if (!f_src)
		return RET(XDP_ABORTED);
#endif
#if FIELD_DST
	struct lpm_v4_key dkey = {32, pf.daddr};
	struct bitvector *f_dst = dst_map.lookup(&dkey);
	if (!f_dst)
		return RET(XDP_ABORTED);
#endif
#if FIELD_PROTO
	u32 pkey = pf.proto;
	struct bitvector *f_proto = proto_map.lookup(&pkey);
	if (!f_proto) {
		pkey = PROTO_DEFAULT;
		f_proto = proto_map.lookup(&pkey);
		if (!f_proto)
			return RET(XDP_ABORTED);
	}
#endif
#if FIELD_IIF
	u32 ikey = CTX_IFINDEX(ctx);
	struct bitvector *f_iif = iif_map.lookup(&ikey);
	if (!f_iif) {
		ikey = 0;
		f_iif = iif_map.lookup(&ikey);
		if (!f_iif)
			return RET(XDP_ABORTED);
	}
#endif
#if FIELD_FRAG
	u32 fkey = pf.fragment;
	struct bitvector *f_frag = frag_map.lookup(&fkey);
	if (!f_frag)
		return RET(XDP_ABORTED);
#endif
#if FIELD_FLAGS
	u32 tkey = pf.tcp_flags;
	struct bitvector *f_flags = flags_map.lookup(&tkey);
	if (!f_flags)
		return RET(XDP_ABORTED);
#endif
#if FIELD_SPORT
	struct sport_bounds *sb = sport_bounds_map.lookup(&zero);
	if (!sb)
		return RET(XDP_ABORTED);
	u32 skey2 = pf.evil ? SPORT_BSIZE + 1
		       : pf.l4 ? sport_interval(sb, pf.sport) : SPORT_BSIZE;
	struct bitvector *f_sport = sport_map.lookup(&skey2);
	if (!f_sport)
		return RET(XDP_ABORTED);
#endif
#if FIELD_DPORT
	struct dport_bounds *db = dport_bounds_map.lookup(&zero);
	if (!db)
		return RET(XDP_ABORTED);
	u32 dkey2 = pf.evil ? DPORT_BSIZE + 1
		       : pf.l4 ? dport_interval(db, pf.dport) : DPORT_BSIZE;
	struct bitvector *f_dport = dport_map.lookup(&dkey2);
	if (!f_dport)
		return RET(XDP_ABORTED);
#endif
#if FIELD_ICMP
	u32 ckey = pf.icmp;
	struct bitvector *f_icmp = icmp_map.lookup(&ckey);
	if (!f_icmp) {
		ckey = ICMP_OTHER;
		f_icmp = icmp_map.lookup(&ckey);
		if (!f_icmp)
			return RET(XDP_ABORTED);
	}
#endif

	struct resume *rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_ABORTED);
	rs->evil = pf.evil;
	u64 w, cur;
	if (rs->active) {
		rs->active = 0;
		w = rs->word & (NWORDS - 1);
		cur = rs->cur;
	} else {
		w = cfg->first_word & (NWORDS - 1);
		cur = AND_WORD(w);
	}
	u32 length = pf.length;
	/* STEPS bounds word loads plus entries visited in one invocation. */
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < STEPS; i++) {
		if (cur == 0) {
			/* no compare with the entry count: the policy entry's bit
			 * ends every scan (a bound depending on map data would
			 * make the verifier keep apart states it can merge) */
			w = (w + 1) & (NWORDS - 1);
			cur = AND_WORD(w);
			continue;
		}
		u32 e = (u32)((w << 6) | lowest_bit_index(cur)) & (NENTRIES - 1);
		struct entry *en = entry_map.lookup(&e);
		if (!en)
			return RET(XDP_ABORTED);
		/* residual checks: a candidate that fails them is skipped */
		u64 miss = (differs(pf.saddr, en->src_mask, en->src_addr) ^ en->src_inv) |
			   (differs(pf.daddr, en->dst_mask, en->dst_addr) ^ en->dst_inv);
		if (miss) {
			cur &= cur - 1; /* drop the candidate, go on */
			continue;
		}
		if (rs->evil & en->tcp)
			return RET(XDP_DROP); /* hotdrop: the rule is not counted */
		count(en->counter, length);
		if (en->verdict != VERDICT_CONTINUE)
			return RET(en->verdict);
		/* continue at en->next: reload its word, masking earlier bits */
		u32 next = en->next;
		w = (next >> 6) & (NWORDS - 1);
		cur = AND_WORD(w) & (~0ULL << (next & 63));
	}
	rs->active = 1;
	rs->word = w;
	rs->cur = cur;
	self_map.call(ctx, 0);
	/* only reached when the tail call fails (the compiler keeps scans
	 * within the limit): fail closed, visibly */
	rs->active = 0;
	return RET(XDP_ABORTED);
}
