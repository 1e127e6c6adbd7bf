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
#include "lib/loop.h"
#include "lib/parse.h"
#include "lib/ranges.h"
#if NLIMITS
#include "lib/limit.h"
#endif
#if NLOGS
#include "lib/log.h"
#endif
#if NHASHLIMITS
#include "lib/hashlimit.h"
#endif
#if NRECENT
#include "lib/recent.h"
#endif
#if CONNTRACK
#include "lib/conntrack_defs.h"
/* the namespace's conntrack maps, pinned outside the generations (opened
 * when pinned, created and pinned otherwise); accessors for
 * lib/conntrack.h, since bcc rewrites map calls in this file only */
#ifdef CT_PIN_DIR
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, ct_table, CT_MAX, CT_PIN_DIR "/table");
BPF_TABLE_PINNED("array", u32, u32, ct_config, CT_NCONFIG, CT_PIN_DIR "/config");
BPF_TABLE_PINNED("percpu_array", u32, u64, ct_stats, CT_NSTATS, CT_PIN_DIR "/stats");
#else
/* a program of its own (tests): private maps */
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, ct_table, CT_MAX);
BPF_ARRAY(ct_config, u32, CT_NCONFIG);
BPF_PERCPU_ARRAY(ct_stats, u64, CT_NSTATS);
#endif
BPF_PERCPU_ARRAY(ct_scratch, struct ct_seen, 1);
static __always_inline struct ct_entry *ct_lookup(struct ct_key *k)
{
	return ct_table.lookup(k);
}
static __always_inline void ct_delete(struct ct_key *k)
{
	ct_table.delete(k);
}
static __always_inline void ct_insert(struct ct_key *k, struct ct_entry *e)
{
	ct_table.update(k, e);
}
static __always_inline u32 ct_config_get(u32 slot)
{
	u32 *v = ct_config.lookup(&slot);
	return v ? *v : 0;
}
static __always_inline void ct_stat(u32 slot)
{
	u64 *v = ct_stats.lookup(&slot);
	if (v)
		*v += 1;
}
#include "lib/conntrack.h"
#endif

#define VERDICT_CONTINUE 0xFFFFFFFFu
/* not an entry's verdict: the scan stopped at a candidate whose stateful
 * match (hashlimit, recent) is evaluated by a program of its own
 * (xdp_hashlimit, xdp_recent), which resumes the scan at it (REJECT
 * verdicts have bit 8 set and TTL bits above 16, never all of these) */
#define VERDICT_STATEFUL 0xFFFFFFFEu
/* struct entry's tcp word: bit 0 the tcp hot-drop, then the stateful
 * match that stops the scan, and the self_map slot of its program */
#define ENTRY_HASHLIMIT 2
#define ENTRY_RECENT 4
#define ENTRY_STATEFUL (ENTRY_HASHLIMIT | ENTRY_RECENT)
#define SLOT_HASHLIMIT 2
#define SLOT_RECENT 3
#ifndef NHASHLIMITS
#define NHASHLIMITS 0
#endif
#ifndef NRECENT
#define NRECENT 0
#endif
#ifndef MEMO
#define MEMO 0
#endif
#define STATEFUL_PROGS (NHASHLIMITS || NRECENT)

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
#elif HOOK_NF
/* HOOK_NF (--mode netfilter, README "Netfilter hooks"): the classifier as
 * a BPF_PROG_TYPE_NETFILTER program at LOCAL_IN/FORWARD/LOCAL_OUT,
 * tail-called by bpf/nfroot.c. Context struct bpf_nf_ctx { state, skb },
 * kernel structures read by plain loads at offsets from the running
 * kernel's BTF (-DOFF_*, nfmode.py); no direct packet access: lib/parse.h
 * runs over a header window (nf_window). The interface field is the
 * input device (LOCAL_IN, FORWARD) or the output device (LOCAL_OUT);
 * FORWARD's -o is state->out. Verdicts: PASS -> NF_ACCEPT, anything else
 * -> NF_DROP (the only two a netfilter program may return). */
#define NF_DROP 0
#define NF_ACCEPT 1
#define NF_HOOK_FORWARD 2
#define NF_HOOK_LOCAL_OUT 3
#ifndef NF_WINDOW
#define NF_WINDOW 120	/* IP header with options (60) + TCP header with options (60) */
#endif
/* the frame starts 2 bytes in (IP header 4-byte aligned: the verifier
 * checks stack alignment); 60 bytes of slack past the window because the
 * verifier bounds the parser's variable offsets by their masks, not by
 * data_end (a stack pointer) */
#define NF_BUF (2 + 14 + NF_WINDOW + 60)
struct nf_ctx {
	void *state;	/* const struct nf_hook_state * */
	void *skb;	/* struct sk_buff * */
};
#define CTX_TYPE struct nf_ctx
#define CTX_IFINDEX(ctx) nf_ifindex(ctx)
#define RET(v) ((v) == XDP_PASS ? NF_ACCEPT : NF_DROP)
/* kfunc, called by a fake helper id that nfhook.kfunc_calls() rewrites */
static long (*kf_dynptr_from_skb)(void *skb, u64 flags, struct bpf_dynptr *p) =
	(void *)KFUNC_FROM_SKB;
static __always_inline u32 nf_hooknum(CTX_TYPE *ctx)
{
	return *(u8 *)((char *)ctx->state + OFF_STATE_HOOK);
}
static __always_inline u32 nf_dev(CTX_TYPE *ctx, u32 off)
{
	void *dev = *(void **)((char *)ctx->state + off);
	return dev ? *(int *)((char *)dev + OFF_DEV_IFINDEX) : 0;
}
static __always_inline u32 nf_ifindex(CTX_TYPE *ctx)
{
	return nf_dev(ctx, nf_hooknum(ctx) == NF_HOOK_LOCAL_OUT ? OFF_STATE_OUT : OFF_STATE_IN);
}
/* the window lives in per-CPU map memory: on the stack its ~200 bytes
 * push a classifier with many fields past the 512-byte stack limit */
struct nf_window {
	u8 buf[NF_BUF];
} __attribute__((aligned(8)));
BPF_PERCPU_ARRAY(nf_window_map, struct nf_window, 1);
/* Copy the IP packet's first NF_WINDOW bytes (fewer when shorter) behind
 * a made-up Ethernet header (MACs zero: -m mac and pkttype are refused in
 * this mode) at buf + 2; returns the bytes copied, -1 on failure. Bytes
 * past the copy may be an earlier packet's: the parser reads nothing
 * beyond data_end. *len: skb->len, the IP packet's length (linear part
 * and fragments). */
static __always_inline int nf_window(CTX_TYPE *ctx, u8 *buf, u32 *len)
{
	u8 *frame = buf + 2;
	__builtin_memset(frame, 0, 14);
	frame[12] = 0x08;	/* h_proto ETH_P_IP */
	struct bpf_dynptr p;
	if (kf_dynptr_from_skb(ctx->skb, 0, &p))
		return -1;
	u32 l = *(u32 *)((char *)ctx->skb + OFF_SKB_LEN);
	u32 n = l < NF_WINDOW ? l : NF_WINDOW;
	long rc = bpf_dynptr_read(frame + 14, n, &p, 0, 0);
	/* overwrite the dynptr now: clang reuses its stack slots for spills
	 * on some paths only, and states holding a dynptr there never equal
	 * states holding a scalar (the scan loop is then verified once per
	 * mix; five times more instructions with a few fields) */
	*(volatile u64 *)&p = 0;
	*((volatile u64 *)&p + 1) = 0;
	if (rc)
		return -1;
	*len = l;
	return n;
}
#if NLOGS || NHASHLIMITS || NSETS || CONNTRACK || FIELD_MAC
#error "not in --mode netfilter (nfmode.refuse names it)"
#endif
#define PACKET_LOOPBACK 5
#if NF_CT
#include "lib/nfct.h"
BPF_PERCPU_ARRAY(nf_ct_scratch, struct ct_seen, 1);
#endif
#include "lib/nfreject.h"
/* REJECT's records for the x_tables side (lib/nfreject.h): the
 * namespace's (pinned, shared with bpf/nfreject.c), private in tests */
#ifdef NF_REJECT_PIN_DIR
BPF_TABLE_PINNED("lru_hash", u64, struct nf_pending, nf_reject_pending, NF_PENDING_MAX,
		 NF_REJECT_PIN_DIR "/pending");
#else
BPF_TABLE("lru_hash", u64, struct nf_pending, nf_reject_pending, NF_PENDING_MAX);
#endif
#else
#define CTX_TYPE struct xdp_md
#define CTX_IFINDEX(ctx) ((ctx)->ingress_ifindex)
#define RET(v) (v)
#endif
/* -- looped copies (lib/loopback.h) -- LOOPED(ctx): the packet is the
 * host's own multicast/broadcast copy (TC ingress only: the root gave it
 * a zeroed Ethernet header; XDP never classifies one) */
#include "lib/loopback.h"
#if HOOK_TC
#define LOOPED(ctx) ((ctx)->pkt_type == PACKET_LOOPBACK_TYPE)
#else
#define LOOPED(ctx) 0
#endif
/* xt_pkttype on PACKET_LOOPBACK: multicast for a multicast destination,
 * else broadcast */
static __always_inline u32 looped_pkttype(u32 daddr)
{
	return (bpf_ntohl(daddr) >> 28) == 0xE ? PACKET_MULTICAST : PACKET_BROADCAST;
}
/* LOG event flag: no MAC header (logger.py prints what nf_log does) */
#define LOG_LOOPED 0x100
#if !HOOK_NF
#include "lib/reject.h"
/* REJECT replies through OUTPUT (--mode tc): the hand-over and exits */
#include "lib/reject_out.h"
#else
#define VERDICT_REJECT 0x100u	/* lib/reject.h's; no reply built here */
/* netfilter's own REJECT sends the reply, through OUTPUT (lib/nfreject.h) */
#define RET_OUT(ctx, v) RET(v)
#define SLOT_OUTPUT 4	/* lib/reject_out.h's: self_map keeps one layout (unused here) */
#endif
#if NSETS
#include "lib/set.h"
/* -m set (lib/set.h): the namespace's sets, one map per type keyed by set
 * id (SET_PIN_DIR: pinned outside the generations, written in place by
 * bpf-iptables-set; private maps without it, tests); the chain's distinct
 * checks, and per entry the checks it needs (struct set_want) */
#ifdef SET_PIN_DIR
BPF_TABLE_PINNED("hash", struct set_ip_key, struct set_val, set_ip, SET_MAX_ELEMS, SET_PIN_DIR "/ip", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct set_net_key, struct set_val, set_net, SET_MAX_ELEMS, SET_PIN_DIR "/net", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct set_ipport_key, struct set_val, set_ipport, SET_MAX_ELEMS, SET_PIN_DIR "/ipport", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, u64, set_port, SET_BITMAP_SLOTS, SET_PIN_DIR "/port");
#else
BPF_F_TABLE("hash", struct set_ip_key, struct set_val, set_ip, SET_MAX_ELEMS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct set_net_key, struct set_val, set_net, SET_MAX_ELEMS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct set_ipport_key, struct set_val, set_ipport, SET_MAX_ELEMS, BPF_F_NO_PREALLOC);
BPF_ARRAY(set_port, u64, SET_BITMAP_SLOTS);
#endif
BPF_F_TABLE("array", int, struct set_want, entry_set_map, NENTRIES, BPF_F_MMAPABLE);
BPF_ARRAY(set_check_map, struct set_check, NSETS);
/* the packet's membership bits and what they were computed from, in map
 * memory (per CPU), not on the stack: the verifier does not track it, so
 * every path through the lookups leaves the same state (else the scan loop
 * would be verified once per path) */
BPF_PERCPU_ARRAY(set_result, struct set_scratch, 1);
static __always_inline struct set_val *set_ip_get(struct set_ip_key *k)
{
	return set_ip.lookup(k);
}
static __always_inline struct set_val *set_net_get(struct set_net_key *k)
{
	return set_net.lookup(k);
}
static __always_inline struct set_val *set_ipport_get(struct set_ipport_key *k)
{
	return set_ipport.lookup(k);
}
static __always_inline u64 *set_port_get(u32 *k)
{
	return set_port.lookup(k);
}
#endif

struct config {
	u32 first_word;	  /* always 0; read from the map so the verifier treats
			   * the word index as a range, not as a constant per
			   * path (constants would defeat state pruning) */
#if CONNTRACK || NF_CT
	u32 fast_counter; /* fast path (compiler.fast_path): the first entry's */
	u64 fast_slots;	  /* conntrack slots it accepts on, alone */
#endif
};

struct entry {
	u32 counter;	/* per-CPU counter slot of the rule (1: scratch) */
	u32 verdict;	/* XDP verdict, or VERDICT_CONTINUE */
	u32 next;	/* entry to continue the scan at */
	u32 tcp;	/* bit 0: the rule has a tcp match, hot-drops evil
			 * fragments; bit 1 (ENTRY_HASHLIMIT): a hashlimit,
			 * bit 2 (ENTRY_RECENT): a recent match */
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

/* One step of the scan loop, at most STEPS per invocation: `left` counts
 * them down from a value read back from map memory (rs->steps), unknown
 * to the verifier, behind a may_goto (lib/loop.h). Bounded by a count the
 * verifier knew, the loop was checked once per step and per distinct
 * state (fw1-10k: 288 steps x ~25 states, 317k instructions, 0.23 s for
 * XDP; 597k, 0.43 s for TC); now ~3k, 2.5 ms. may_goto's own count never
 * ends a scan first; ending it goes where `left` running out goes. */
#if HAVE_MAY_GOTO
#define SCAN_STEP(left, label)                                                 \
	do {                                                                   \
		MAY_GOTO(label);                                               \
		if (left == 0)                                                 \
			goto label;                                            \
		left--;                                                        \
	} while (0)
#endif

/* A scan longer than STEPS continues in a tail call of this same
 * program (the compiler allows 31 invocations in all: the kernel's tail
 * call limit is 33, and a root program may tail-call this one), with
 * the scan position handed over in a per-CPU slot; the packet is parsed
 * and the fields looked up again, which is cheap next to a long scan. */
struct resume {
	u64 cur;	/* candidate bits left in bitvector word `word` */
	u64 scur;	/* candidate words left in summary word `sword` */
	u32 word;
	u32 sword;
	u32 active;
	u32 evil;	/* pf.evil, read back from here inside the scan: a
			 * value from a map is unknown to the verifier, so it
			 * does not verify the loop once per constant */
	u32 reject;	/* a REJECT verdict (lib/reject.h) handed to the
			 * invocation that builds the reply, 0: none */
	/* per packet (reset when its scan starts): bit i set when the
	 * stateful match (limit, recent, hashlimit) of jump rule i held at
	 * its jump entry, read by the entries it guards (compiler.py: memo
	 * bits) */
	u64 memo;
	/* the scan's hand-over to a stateful match's program (xdp_hashlimit,
	 * xdp_recent) and back */
	u32 st_entry;	/* the candidate being checked */
	u32 st_slot;	/* self_map slot of its program */
	u32 st_done;	/* st_entry + 1 once its result is in st_result, else 0 */
	u32 st_result;	/* 1: the match holds */
	/* -m recent: the packet's addresses and TTL, as the scan saw them */
	u32 rttl;
	u32 raddr_s;
	u32 raddr_d;
	u32 steps;	/* STEPS, read back: a count the verifier does not know */
	u64 sum[NSUM];	/* the AND of the fields' summaries for this packet */
	u32 ctz_ready;	/* CTZ_READY once ctz is filled (bitvector.h) */
	u8 ctz[64];	/* de Bruijn position -> bit index, per CPU */
};

BPF_ARRAY(config_map, struct config, 1);
BPF_PERCPU_ARRAY(resume_map, struct resume, 1);
/* 0: this program (a long scan continues there), 1: xdp_reject below,
 * 2: xdp_hashlimit (with -m hashlimit), 3: xdp_recent (with -m recent),
 * 4 (SLOT_OUTPUT, TC builds of INPUT/FORWARD): the generation's OUTPUT
 * classifier, which decides a REJECT reply's fate (lib/reject_out.h) */
BPF_PROG_ARRAY(self_map, SLOT_OUTPUT + 1);
BPF_ARRAY(live_map, struct bitvector, 1);
BPF_F_TABLE("array", int, struct entry, entry_map, NENTRIES, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(counter_map, struct counter, NCOUNTERS);
#if NLIMITS
/* -m limit (lib/limit.h): per entry its rule's bucket (0: no limit), the
 * buckets (slot 0 unused), shared by all CPUs */
BPF_F_TABLE("array", int, u32, entry_limit_map, NENTRIES, BPF_F_MMAPABLE);
#ifdef LIMIT_PIN
/* the looped copies' INPUT (TC build, lib/loopback.h) takes its tokens
 * from INPUT's own buckets: netfilter has one per rule */
BPF_TABLE_PINNED("array", u32, struct limit_state, limit_map, NLIMITS, LIMIT_PIN);
#else
BPF_ARRAY(limit_map, struct limit_state, NLIMITS);
#endif
#endif
#if NHASHLIMITS
/* -m hashlimit (lib/hashlimit.h): per entry its rule's table (0: none);
 * the tables and their buckets are the namespace's (HL_PIN_DIR), shared
 * by every hook and generation, or private (tests) */
BPF_F_TABLE("array", int, struct hl_rule, entry_hl_map, NENTRIES, BPF_F_MMAPABLE);
#ifdef HL_PIN_DIR
BPF_TABLE_PINNED("hash", u64, struct hl_table, hl_tables, HL_NTABLES, HL_PIN_DIR "/tables");
BPF_TABLE_PINNED("hash", u64, u64, hl_added, HL_NTABLES, HL_PIN_DIR "/added");
BPF_TABLE_PINNED("hash", struct hl_key, struct hl_bucket, hl_buckets, HL_CAPACITY,
		 HL_PIN_DIR "/buckets", BPF_F_NO_PREALLOC);
#else
BPF_TABLE("hash", u64, struct hl_table, hl_tables, HL_NTABLES);
BPF_TABLE("hash", u64, u64, hl_added, HL_NTABLES);
BPF_F_TABLE("hash", struct hl_key, struct hl_bucket, hl_buckets, HL_CAPACITY,
	    BPF_F_NO_PREALLOC);
#endif
BPF_PERCPU_ARRAY(hl_scratch, struct hl_scratch, 1);

/* The rule's hashlimit for this packet: 1 match, 0 no match, -1 hot-drop
 * (hashlimit_init_dst() cannot read the ports, or the table is full, as
 * in the kernel; or the table is missing: fail closed). Only ``sc`` is
 * kept across helper calls (see struct hl_scratch). */
static __always_inline int hl_check(CTX_TYPE *ctx, struct hl_rule *hr,
				    struct packet_fields *pf)
{
	struct hl_scratch *sc = hl_scratch.lookup(&hr->zero);
	if (!sc)
		return -1;
	struct hl_table *t = hl_tables.lookup(&hr->table);
	if (!t)
		return -1;
	sc->key.table = hr->table;
	sc->flags = hr->flags;
	sc->len = pf->length;
	sc->mode = t->mode;
	sc->cost = t->cost;
	sc->cap = t->cap;
	sc->expire = t->expire;
	sc->expire_ns = t->expire_ns;
	sc->max = t->max;
	sc->removed = t->removed;
	sc->key.src = (t->mode & HL_HASH_SIP) ? pf->saddr & t->srcmask : 0;
	sc->key.dst = (t->mode & HL_HASH_DIP) ? pf->daddr & t->dstmask : 0;
	sc->key.sport = 0;
	sc->key.dport = 0;
	sc->key.pad = 0;
	sc->ports[0] = 0;
	sc->ports[1] = 0;
	int poff = hl_ports_offset(pf->proto);
	if ((sc->mode & (HL_HASH_DPT | HL_HASH_SPT)) && poff >= 0) {
		/* the bytes at the transport offset, as the kernel reads
		 * them (a non-first fragment's too); past the datagram:
		 * hot-drop */
#if HOOK_TC
		sc->vihl = 0;
		if (bpf_skb_load_bytes(ctx, 14, &sc->vihl, 1))
			return -1;
		/* (pf is on the caller's stack: nothing kept across the call) */
		u32 off = (sc->vihl & 0xF) * 4 + (u32)hl_ports_offset(pf->proto);
		if (off + 4 > pf->length)
			return -1;
		off = (off + 14) & 0xFFFF;
		if (bpf_skb_load_bytes(ctx, off, sc->ports, 4))
			return -1;
#else
		/* XDP: the frame is linear, read in place */
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		u8 *ihl = data + 14;
		if ((void *)(ihl + 1) > data_end)
			return -1;
		u32 off = (*ihl & 0xF) * 4 + (u32)hl_ports_offset(pf->proto);
		if (off + 4 > pf->length)
			return -1;
		u8 *at = data + 14 + (off & 0x7F);
		if ((void *)(at + 4) > data_end)
			return -1;
		__builtin_memcpy(sc->ports, at, 4);
#endif
		if (sc->mode & HL_HASH_SPT)
			sc->key.sport = sc->ports[0];
		if (sc->mode & HL_HASH_DPT)
			sc->key.dport = sc->ports[1];
	}
	/* rateinfo_init()'s bucket, also a bucket started again */
	sc->credit = (sc->mode & HL_BYTES) ? HL_BYTES_FULL : sc->cap;
	sc->bcap = sc->cap;
	sc->now = bpf_jiffies64();
	sc->now_ns = bpf_ktime_get_ns();
	struct hl_bucket *b = hl_buckets.lookup(&sc->key);
	if (!b) {
		u64 *added = hl_added.lookup(&sc->key.table);
		/* dsthash_alloc_init(): a full table hot-drops */
		if (!added || *added - sc->removed >= sc->max)
			return -1;
		sc->lock = 0;
		sc->pad = 0;
		sc->prev = sc->now;
		sc->expires = sc->now + sc->expire;
		sc->deadline = sc->now_ns + sc->expire_ns;
		int rc = hl_buckets.insert(&sc->key, (struct hl_bucket *)&sc->lock);
		if (rc == 0) {
			added = hl_added.lookup(&sc->key.table);
			if (added)
				__sync_fetch_and_add(added, 1);
		} else if (rc != -17) {	/* -EEXIST: another CPU made it */
			return -1;
		}
		b = hl_buckets.lookup(&sc->key);
		if (!b)
			return -1;
	}
	return (int)(hl_take(b, sc) ^ (sc->flags & HL_RULE_INVERT));
}
#endif
#if NRECENT || MEMO
/* per entry: the memo bits of the jump rules guarding it (all must be
 * set), the bit its own stateful matches set when they hold (a jump
 * rule's), its -m recent match (recent_rule_map slot, 0: none) */
struct entry_state {
	u64 need;
	u64 set;
	u32 recent;
	u32 pad;
};
BPF_F_TABLE("array", int, struct entry_state, entry_state_map, NENTRIES, BPF_F_MMAPABLE);
#endif
#if NRECENT
BPF_ARRAY(recent_rule_map, struct recent_rule, NRECENT);
BPF_PERCPU_ARRAY(recent_scratch, struct recent_scan, 1);
/* the namespace's tables (datapath/recent.py), shared by every classifier
 * of both generations and kept across updates; private in tests */
#ifdef RECENT_PIN_DIR
BPF_TABLE_PINNED("hash", u64, struct recent_table, recent_tables, RECENT_TABLES,
		 RECENT_PIN_DIR "/tables");
#else
BPF_HASH(recent_tables, u64, struct recent_table, RECENT_TABLES);
#endif
#endif
#if NLOGS
/* -j LOG (lib/log.h): per entry its rule's log_map slot (0: none); the
 * ring and the loss counter are the namespace's (LOG_PIN_DIR), shared by
 * every classifier and generation, or private (tests) */
BPF_F_TABLE("array", int, u32, entry_log_map, NENTRIES, BPF_F_MMAPABLE);
BPF_ARRAY(log_map, struct log_info, NLOGS);
#ifdef LOG_PIN_DIR
/* BPF_RINGBUF_OUTPUT, pinned (bcc opens the pin, or creates and pins it) */
struct log_ring_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" LOG_PIN_DIR "/ring")))
struct log_ring_table_t log_ring = { .max_entries = LOG_RING_BYTES };
BPF_TABLE_PINNED("percpu_array", u32, u64, log_lost, 1, LOG_PIN_DIR "/lost");
#else
BPF_RINGBUF_OUTPUT(log_ring, LOG_RING_BYTES / 4096);
BPF_PERCPU_ARRAY(log_lost, u64, 1);
#endif

/* Send the LOG event for entry e (when it has a LOG rule). Never fails
 * the packet: a full ring counts a loss. */
static __always_inline void log_packet(CTX_TYPE *ctx, u32 e, u32 wire,
				       struct packet_fields *pf)
{
	u32 *slot = entry_log_map.lookup(&e);
	if (!slot || !*slot)
		return;
	struct log_info *li = log_map.lookup(slot);
	if (!li)
		return;
	struct log_event *ev = log_ring.ringbuf_reserve(sizeof(struct log_event));
	if (!ev) {
		u32 zero = 0;
		u64 *lost = log_lost.lookup(&zero);
		if (lost)
			*lost += 1;
		return;
	}
	ev->hook = li->hook;
	ev->ifindex = CTX_IFINDEX(ctx);
#if HOOK_TC
	ev->mark = ctx->mark;
#else
	ev->mark = 0;
#endif
	ev->level = li->level;
	ev->flags = li->flags | (LOOPED(ctx) ? LOG_LOOPED : 0);
	ev->oif = 0;
	if (li->hook == 1) {
		/* FORWARD's OUT=: the route the kernel takes (as FORWARD's
		 * -o, see FIELD_OIF; the dispatcher sent only SUCCESS and
		 * NO_NEIGH here, both of which fill in the device) */
		struct bpf_fib_lookup fib = {};
		fib.family = 2;	/* AF_INET */
		fib.tos = pf->tos;
		fib.l4_protocol = pf->proto;
		fib.ipv4_src = pf->saddr;
		fib.ipv4_dst = pf->daddr;
		fib.ifindex = CTX_IFINDEX(ctx);
		long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
			ev->oif = fib.ifindex;
	}
	__builtin_memcpy(ev->prefix, li->prefix, LOG_PREFIX);
	ev->wire_len = wire;
	/* 1..LOG_CAP, in a form the verifier bounds (the frame has at
	 * least its Ethernet and IP headers) */
	u32 cap = wire < LOG_CAP ? wire : LOG_CAP;
	cap = ((cap - 1) & (LOG_CAP - 1)) + 1;
	ev->cap_len = 0;
#if HOOK_TC
	if (bpf_skb_load_bytes(ctx, 0, ev->data, cap) == 0)
#else
	if (bpf_xdp_load_bytes(ctx, 0, ev->data, cap) == 0)
#endif
		ev->cap_len = cap;
	log_ring.ringbuf_submit(ev, 0);
}
#endif

/* The source x destination pair summary (compiler.pair_summary,
 * image.pair_parts). ANDing the two address fields' own summaries names
 * words where the source has entries and the destination has entries but
 * none in common (at fw1-10k: 13 of the 14 words a packet loaded). With
 * SW (DW) the entries in every source (destination) vector, e.g. -s 0/0,
 * and SPEC the entries in neither:
 *   src & dst = (src & DW) | (dst & SW & ~DW) | (src & SPEC & dst & SPEC)
 * exactly, so its summary lies within
 *   src.summary | dst.summary | (src.spec & dst.spec & pair[a][b])
 * where an address vector's summary is that of src & DW (of dst & SW &
 * ~DW), spec that of its SPEC entries, and pair[a][b] the summary of the
 * SPEC entries of every source piece meeting the /8 a ANDed with those of
 * every destination piece meeting the /8 b (a, b: the addresses' top 8
 * bits). A superset of the words where both fields have a common entry,
 * as the scan needs, and at fw1-10k about one word a packet more than
 * that. Small rule sets (a summary of a few bits) go without it. */
#define PAIR (FIELD_SRC && FIELD_DST && NWORDS >= 8)
#if PAIR
struct addr_vector {
	u64 word[NWORDS];
	u64 summary[NSUM];	/* src: of src & DW; dst: of dst & SW & ~DW */
	u64 spec[NSUM];		/* of its SPEC entries */
};
#define ADDR_VECTOR struct addr_vector
struct pair_sum {
	u64 sum[NSUM];
};
/* key: source top 8 bits << 8 | destination top 8 bits. Mappable: an
 * update writes it by one copy (a batch of 65,536 elements took 31 ms) */
BPF_F_TABLE("array", u32, struct pair_sum, pair_map, 65536, BPF_F_MMAPABLE);
#define TERM_SRC_summary(ix)
#define TERM_DST_summary(ix)
#define TERM_PAIR(m, ix) TERM_PAIR_##m(ix)
#define TERM_PAIR_word(ix)
#define TERM_PAIR_summary(ix)                                                  \
	&(f_src->summary[ix] | f_dst->summary[ix] |                           \
	  (f_src->spec[ix] & f_dst->spec[ix] & f_pair->sum[ix])) TERM_PPAIR(ix)

/* The source x ports summary (compiler.ports_pair, image.ports_pair_table).
 * What the pair summary leaves at fw1-10k are words where the source has
 * entries and the two ports have entries, but none in common (its last
 * rule's packet: 7 of the 8 words it loaded). With PW the entries in every
 * sport and every dport vector (no port constraint), for any packet
 *   src & sport & dport = (src & sport & dport & PW)
 *                       | (src & sport & dport & ~PW)
 * lies within (src & PW) | (sport & dport & ~PW): its summary within
 *   src.pw | ports_pair[sport slot][dport slot]
 * where a source vector's pw is the summary of src & PW and a table slot
 * the summary of sport & dport & ~PW & live for that pair of port slots.
 * Exact per pair of port slots (one vector each), so no bucketing: 34 x
 * 130 slots at fw1-10k, where it leaves 2 words (1 false) of those 8. */
#define PORTS_PAIR (FIELD_SPORT && FIELD_DPORT &&                              \
		    (SPORT_BSIZE + 2) * (DPORT_BSIZE + 2) <= 32768)
#if PORTS_PAIR
struct src_vector {
	u64 word[NWORDS];
	u64 summary[NSUM];	/* of src & DW */
	u64 spec[NSUM];		/* of its SPEC entries */
	u64 pw[NSUM];		/* of src & PW */
};
#define SRC_VECTOR struct src_vector
/* key: sport_map key * (DPORT_BSIZE + 2) + dport_map key. Mappable, as
 * pair_map: an update writes its 4,420 slots (fw1-10k) by one copy */
BPF_F_TABLE("array", u32, struct pair_sum, ports_pair_map,
	    (SPORT_BSIZE + 2) * (DPORT_BSIZE + 2), BPF_F_MMAPABLE);
#define TERM_PPAIR(ix) &(f_src->pw[ix] | f_ppair->sum[ix])
#else
#define SRC_VECTOR ADDR_VECTOR
#define TERM_PPAIR(ix)
#endif
#else
#define ADDR_VECTOR struct bitvector
#define SRC_VECTOR ADDR_VECTOR
#define PORTS_PAIR 0
#define TERM_SRC_summary(ix) &f_src->summary[ix]
#define TERM_DST_summary(ix) &f_dst->summary[ix]
#define TERM_PAIR(m, ix)
#endif
#define TERM_SRC_word(ix) &f_src->word[ix]
#define TERM_DST_word(ix) &f_dst->word[ix]

#ifndef SRC_DENSE
#define SRC_DENSE 0
#endif
#ifndef DST_DENSE
#define DST_DENSE 0
#endif
#if FIELD_SRC
/* addresses as intervals (compiler.address_intervals): the interval
 * starts, per interval the id of its bitvector, the distinct bitvectors */
DEFINE_ADDRESS_SEARCH(src, SRC_BSIZE, SRC_PROBES, SRC_DENSE)
BPF_F_TABLE("array", u32, u32, src_top_map, 65536, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, struct src_bounds, src_bounds_map, 1, BPF_F_MMAPABLE);
#if SRC_DENSE
BPF_F_TABLE("array", int, struct src_dense, src_dense_map, 1, BPF_F_MMAPABLE);
#endif
BPF_F_TABLE("array", int, u32, src_index_map, SRC_BSIZE, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, SRC_VECTOR, src_map, SRC_MAX, BPF_F_MMAPABLE);
#define TERM_SRC(m, ix) TERM_SRC_##m(ix)
#else
#define TERM_SRC(m, ix)
#endif
#if FIELD_DST
DEFINE_ADDRESS_SEARCH(dst, DST_BSIZE, DST_PROBES, DST_DENSE)
BPF_F_TABLE("array", u32, u32, dst_top_map, 65536, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, struct dst_bounds, dst_bounds_map, 1, BPF_F_MMAPABLE);
#if DST_DENSE
BPF_F_TABLE("array", int, struct dst_dense, dst_dense_map, 1, BPF_F_MMAPABLE);
#endif
BPF_F_TABLE("array", int, u32, dst_index_map, DST_BSIZE, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, ADDR_VECTOR, dst_map, DST_MAX, BPF_F_MMAPABLE);
#define TERM_DST(m, ix) TERM_DST_##m(ix)
#else
#define TERM_DST(m, ix)
#endif
#if FIELD_PROTO
/* index: protocol number (every one has its slot: no hashing) */
BPF_F_TABLE("array", int, struct bitvector, proto_map, 256, BPF_F_MMAPABLE);
#define TERM_PROTO(m, ix) &f_proto->m[ix]
#else
#define TERM_PROTO(m, ix)
#endif
#if FIELD_IIF
/* key: ifindex, 0 for interfaces unknown at compile time */
BPF_HASH(iif_map, u32, struct bitvector, IIF_MAX);
#define TERM_IIF(m, ix) &f_iif->m[ix]
#else
#define TERM_IIF(m, ix)
#endif
#if FIELD_FRAG
/* 0: not a fragment or first fragment, 1: non-first fragment */
BPF_ARRAY(frag_map, struct bitvector, 2);
#define TERM_FRAG(m, ix) &f_frag->m[ix]
#else
#define TERM_FRAG(m, ix)
#endif
#if FIELD_FLAGS
/* index: TCP flags & 0x3F, TCP_FLAGS_NONE or TCP_FLAGS_EVIL */
BPF_F_TABLE("array", int, struct bitvector, flags_map, TCP_FLAGS_EVIL + 1, BPF_F_MMAPABLE);
#define TERM_FLAGS(m, ix) &f_flags->m[ix]
#else
#define TERM_FLAGS(m, ix)
#endif
#if FIELD_SPORT
/* range-compressed (compiler.range_table): index the port, value its
 * interval; one array access instead of a binary search. Mappable: an
 * update writes the 64k slots with one memcpy (image.Packed), not 64k
 * batch elements. */
BPF_F_TABLE("array", u32, u32, sport_slot_map, 65536, BPF_F_MMAPABLE);
/* index: interval, SPORT_BSIZE when the packet has no ports,
 * SPORT_BSIZE + 1 for an offset-1 TCP fragment */
BPF_F_TABLE("array", int, struct bitvector, sport_map, SPORT_BSIZE + 2, BPF_F_MMAPABLE);
#if PORTS_PAIR
/* the ports summary lies within both ports' own summaries (src & PW
 * within every port vector, the table within sport & dport): their
 * summary terms would AND nothing away, so only the words are ANDed */
#define TERM_SPORT(m, ix) TERM_SPORT_##m(ix)
#define TERM_SPORT_word(ix) &f_sport->word[ix]
#define TERM_SPORT_summary(ix)
#else
#define TERM_SPORT(m, ix) &f_sport->m[ix]
#endif
#else
#define TERM_SPORT(m, ix)
#endif
#if FIELD_DPORT
BPF_F_TABLE("array", u32, u32, dport_slot_map, 65536, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, struct bitvector, dport_map, DPORT_BSIZE + 2, BPF_F_MMAPABLE);
#if PORTS_PAIR
#define TERM_DPORT(m, ix) TERM_DPORT_##m(ix)
#define TERM_DPORT_word(ix) &f_dport->word[ix]
#define TERM_DPORT_summary(ix)
#else
#define TERM_DPORT(m, ix) &f_dport->m[ix]
#endif
#else
#define TERM_DPORT(m, ix)
#endif

#if FIELD_ICMP
/* key: type << 8 | code of every listed type, ICMP_OTHER for the types not
 * listed, ICMP_NONE (parse.h) for packets without an ICMP header */
#define ICMP_OTHER 0x10000
BPF_HASH(icmp_map, u32, struct bitvector, ICMP_MAX);
#define TERM_ICMP(m, ix) &f_icmp->m[ix]
#else
#define TERM_ICMP(m, ix)
#endif

/* Range-compressed fields without extra slots (ranges.h): the interval
 * search over the boundaries gives the index of the bitvector. (The
 * lookups are written out below: bcc does not rewrite map calls that a
 * macro expands to.) */
#define DEFINE_RANGE_FIELD(NAME, BSIZE, SPAN)                                 \
	BPF_F_TABLE("array", u32, u32, NAME##_slot_map, SPAN, BPF_F_MMAPABLE); \
	BPF_F_TABLE("array", int, struct bitvector, NAME##_map, BSIZE, BPF_F_MMAPABLE);
#if FIELD_LENGTH
/* the IP total length, as xt_length compares it */
DEFINE_RANGE_FIELD(length, LENGTH_BSIZE, 65536)
#define TERM_LENGTH(m, ix) &f_length->m[ix]
#else
#define TERM_LENGTH(m, ix)
#endif
#if FIELD_TTL
/* the frame's TTL (the compiler shifts FORWARD's boundaries by one: the
 * kernel lowers the TTL before the FORWARD hook) */
DEFINE_RANGE_FIELD(ttl, TTL_BSIZE, 256)
#define TERM_TTL(m, ix) &f_ttl->m[ix]
#else
#define TERM_TTL(m, ix)
#endif

#if FIELD_TOS
/* index: the TOS byte (xt_tos: value/mask; xt_dscp: the upper six bits) */
BPF_F_TABLE("array", int, struct bitvector, tos_map, 256, BPF_F_MMAPABLE);
#define TERM_TOS(m, ix) &f_tos->m[ix]
#else
#define TERM_TOS(m, ix)
#endif

#if FIELD_PORTS
#if !FIELD_SPORT || !FIELD_DPORT
#error "FIELD_PORTS needs both port fields"
#endif
/* multiport --ports: per sport (dport) slot, the entries whose list holds
 * that port, and every entry without --ports; an entry holds when the
 * source OR the destination port is listed: one AND term, the OR of the
 * two bitvectors (the first-match scan and the counters are unchanged) */
BPF_F_TABLE("array", int, struct bitvector, ports_s_map, SPORT_BSIZE + 2, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, struct bitvector, ports_d_map, DPORT_BSIZE + 2, BPF_F_MMAPABLE);
/* the summary of an OR is the OR of the summaries */
#define TERM_PORTS(m, ix) &(f_ports_s->m[ix] | f_ports_d->m[ix])
#else
#define TERM_PORTS(m, ix)
#endif

#if FIELD_OIF
/* FORWARD's -o: key is the egress ifindex of the kernel's own route
 * (bpf_fib_lookup with the dispatcher's parameters), 0 for an interface
 * unknown at compile time or no route. FORWARD only (OUTPUT's output
 * device is the iif field); built for TC as well, for FORWARD at TC
 * ingress in --mode tc, where the receiving device is skb->ifindex. */
#define AF_INET 2
BPF_HASH(oif_map, u32, struct bitvector, OIF_MAX);
#define TERM_OIF(m, ix) &f_oif->m[ix]
#else
#define TERM_OIF(m, ix)
#endif

#if FIELD_MAC
/* key: the Ethernet source address (48 bits, first byte highest),
 * MAC_OTHER for addresses not listed, MAC_NONE on the loopback device
 * (xt_mac needs an ARPHRD_ETHER device: no match there, even inverted) */
#define MAC_OTHER (1ULL << 48)
#define MAC_NONE ((1ULL << 48) + 1)
#define LOOPBACK_IFINDEX 1
BPF_HASH(mac_map, u64, struct bitvector, MAC_MAX);
#define TERM_MAC(m, ix) &f_mac->m[ix]
#else
#define TERM_MAC(m, ix)
#endif
#if FIELD_CTSTATE
#if !CONNTRACK && !NF_CT
#error "FIELD_CTSTATE needs CONNTRACK"
#endif
#if NF_CT
#define CTSTATE_SLOTS NF_CT_SLOTS
#else
#define CTSTATE_SLOTS CT_SLOTS
#endif
/* index: the packet's ctstate, direction and status bits (CT_SLOT) */
BPF_ARRAY(ctstate_map, struct bitvector, CTSTATE_SLOTS);
#define TERM_CTSTATE(m, ix) &f_ctstate->m[ix]
#else
#define TERM_CTSTATE(m, ix)
#endif
#if FIELD_CTCHECK
#if !CONNTRACK && !NF_CT
#error "FIELD_CTCHECK needs CONNTRACK"
#endif
/* per entry: xt_conntrack's tuple and --ctexpire tests (not a bitvector:
 * checked per candidate, see ct_check_miss) */
BPF_F_TABLE("array", int, struct ct_check, ctcheck_map, NENTRIES, BPF_F_MMAPABLE);
/* an entry's further checks (conntrack matches repeating an option),
 * chained by ct_check.next */
BPF_F_TABLE("array", int, struct ct_check, ctextra_map, CTEXTRA_MAX, BPF_F_MMAPABLE);
#endif
#if FIELD_MARK
/* per entry: -m mark tests, checked per candidate (not a bitvector: a
 * 32-bit value under any mask); mask 0 / value 0 / invert 0 tests nothing */
struct mark_check {
	u32 mask0, value0, inv0;
	u32 mask1, value1, inv1;
};
BPF_F_TABLE("array", int, struct mark_check, mark_map, NENTRIES, BPF_F_MMAPABLE);
#endif
#if FIELD_ATCHECK
/* -m addrtype --limit-iface-in/out (datapath/addrtypes.py): the routes as
 * an LPM trie, address -> its type and the device of the route's first
 * next hop (AT_ANY: the type holds on every device); a packet on another
 * device sees UNICAST (__inet_dev_addr_type). Per entry, the source and
 * destination types that miss (bit t: RTN_* t), checked per candidate. */
#define AT_ANY 0xFFFFFFFFu
#define AT_UNICAST 1
#define AT_LPM_MAX 4096
struct at_key {
	u32 prefixlen;
	u32 addr;
};
struct at_val {
	u32 type;
	u32 dev;
};
struct at_check {
	u32 src_miss;
	u32 dst_miss;
};
BPF_LPM_TRIE(atype_lpm, struct at_key, struct at_val, AT_LPM_MAX);
BPF_F_TABLE("array", int, struct at_check, atcheck_map, NENTRIES, BPF_F_MMAPABLE);
#endif
#if FIELD_PKTTYPE
/* index: PACKET_HOST, PACKET_BROADCAST or PACKET_MULTICAST (parse.h) */
BPF_ARRAY(pkttype_map, struct bitvector, 3);
#define TERM_PKTTYPE(m, ix) &f_pkttype->m[ix]
#else
#define TERM_PKTTYPE(m, ix)
#endif

/* The AND of all compiled-in fields' bitvectors at word ix (m = word), or
 * of their summaries at summary word ix (m = summary). */
#define AND_OF(m, ix) (live->m[ix] TERM_SRC(m, ix) TERM_DST(m, ix) TERM_PROTO(m, ix) \
		       TERM_IIF(m, ix) TERM_FRAG(m, ix) TERM_FLAGS(m, ix)                \
		       TERM_SPORT(m, ix) TERM_DPORT(m, ix) TERM_ICMP(m, ix)              \
		       TERM_LENGTH(m, ix) TERM_TTL(m, ix) TERM_TOS(m, ix)                \
		       TERM_PORTS(m, ix) TERM_OIF(m, ix) TERM_MAC(m, ix)                 \
		       TERM_PKTTYPE(m, ix) TERM_CTSTATE(m, ix) TERM_PAIR(m, ix))
#define AND_WORD(ix) AND_OF(word, ix)
#define AND_SUM(ix) AND_OF(summary, ix)

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
#if HOOK_TC
	/* An skb's direct access covers its linear part only: a GSO packet
	 * (a socket's 64 KB TCP send at egress, a GRO'd one at ingress) has
	 * its payload in fragments. Make the headers linear (at most 128
	 * bytes: Ethernet, IP and TCP headers with options, an ICMP error's
	 * quote), and judge the IP total length against the whole skb. */
	u32 pull = ctx->len < 128 ? ctx->len : 128;
	bpf_skb_pull_data(ctx, pull);
	u32 wire_len = ctx->len;
#elif HOOK_NF
	/* the header window (nf_window) as the parser's frame */
	u32 nfzero = 0;
	struct nf_window *nfw = nf_window_map.lookup(&nfzero);
	if (!nfw)
		return NF_DROP;
	u8 *nfbuf = nfw->buf;
	u32 iplen = 0;
	int nfn = nf_window(ctx, nfbuf, &iplen);
	if (nfn < 0)
		return NF_ACCEPT;	/* as a frame parse_packet does not take */
	u32 wire_len = 14 + iplen;
	void *data = nfbuf + 2;
	void *data_end = nfbuf + 2 + 14 + (nfn & 0xFF);
#else
	u32 wire_len = 0;
#endif
#if !HOOK_NF
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
#endif
	struct packet_fields pf = {};
	if (parse_packet(data, data_end, &pf, wire_len) != PARSE_OK)
		return RET_OUT(ctx, XDP_PASS);
	u32 looped = LOOPED(ctx);
	if (looped)
		pf.pkttype = looped_pkttype(pf.daddr);
#if HOOK_NF
	/* ip_forward() lowered the TTL before the FORWARD hook; the compiler
	 * keys FORWARD's ttl table by the frame's TTL, one higher (what XDP
	 * and TC ingress see) */
	if (nf_hooknum(ctx) == NF_HOOK_FORWARD)
		pf.ttl += 1;
#if FIELD_PKTTYPE
	/* the made-up header says nothing: skb->pkt_type (a bitfield: the
	 * byte holding it, -DOFF_SKB_PKT_TYPE), as xt_pkttype reads it (a
	 * looped-back packet: multicast by its destination, else broadcast;
	 * OTHERHOST never reaches these hooks, OUTPUT's type is decided at
	 * compile time) */
	u32 skb_pt = (*(u8 *)((char *)ctx->skb + OFF_SKB_PKT_TYPE) >> PKT_TYPE_SHIFT) &
		     PKT_TYPE_MASK;
	if (skb_pt == PACKET_LOOPBACK)
		pf.pkttype = (pf.daddr & 0xF0) == 0xE0 ? PACKET_MULTICAST : PACKET_BROADCAST;
	else
		pf.pkttype = skb_pt <= PACKET_MULTICAST ? skb_pt : PACKET_HOST;
#endif
#endif

	u32 zero = 0;
	struct config *cfg = config_map.lookup(&zero);
	struct bitvector *live = live_map.lookup(&zero);
	if (!cfg || !live)
		return RET(XDP_ABORTED);
	struct resume *rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_ABORTED);
#if CONNTRACK
	/* tracked once per packet: a tail call resuming the scan finds the
	 * result in the per-CPU slot */
	struct ct_seen *cts = ct_scratch.lookup(&zero);
	if (!cts)
		return RET(XDP_ABORTED);
	if (!rs->active) {
		/* a frame that left through lo (the loopback's all-zero
		 * source MAC; BPF_PROG_TEST_RUN's frames, injected on lo,
		 * carry MACs of their own) was tracked at OUTPUT */
#if REPLY_MODE
		/* a REJECT reply handed over by xdp_reject: the original's
		 * entry, RELATED (lib/reject_out.h) */
		if (reply_pending(ctx))
			ct_reply(data, data_end, &pf, cts, reply_word(ctx), reply_jexpires(ctx));
		else
#endif
		ct_track(data, data_end, &pf, cts,
			 (ctx->ingress_ifindex == CT_LO_IFINDEX && pf.src_mac == 0) || looped);
		/* fast path: the first entry accepts on the conntrack slot
		 * alone (e.g. --ctstate ESTABLISHED,RELATED -j ACCEPT): no
		 * other field, no scan; counted as that rule */
		if ((cfg->fast_slots >> CT_SLOT(cts)) & 1) {
			count(cfg->fast_counter, pf.length);
			ct_confirm(cts);
			return RET_OUT(ctx, XDP_PASS);
		}
	}
#elif NF_CT
	/* --mode netfilter: the kernel's own entry (lib/nfct.h); read again
	 * by a resumed scan (a few loads), in per-CPU memory as the tracker's */
	struct ct_seen *cts = nf_ct_scratch.lookup(&zero);
	if (!cts)
		return RET(XDP_ABORTED);
	nf_ct_view(ctx->skb, cts);
#endif

	/* One lookup per field; the bitvectors are then read in place. */
#if FIELD_SRC
	struct src_bounds *sb_src = src_bounds_map.lookup(&zero);
	if (!sb_src)
		return RET(XDP_ABORTED);
	u32 saddr_h = bpf_ntohl(pf.saddr);
	u32 stop_key = saddr_h >> 16;
	u32 *stop = src_top_map.lookup(&stop_key);
	if (!stop)
		return RET(XDP_ABORTED);
#if SRC_DENSE
	struct src_dense *sd_src = src_dense_map.lookup(&zero);
	if (!sd_src)
		return RET(XDP_ABORTED);
#else
	struct src_dense *sd_src = NULL;
#endif
	u32 sidx;
	if (src_search(sb_src, sd_src, *stop, saddr_h, &sidx))
		return RET(XDP_ABORTED);
	u32 *sid = src_index_map.lookup(&sidx);
	if (!sid)
		return RET(XDP_ABORTED);
	SRC_VECTOR *f_src = src_map.lookup(sid);
	if (!f_src)
		return RET(XDP_ABORTED);
#endif
#if FIELD_DST
	struct dst_bounds *sb_dst = dst_bounds_map.lookup(&zero);
	if (!sb_dst)
		return RET(XDP_ABORTED);
	u32 daddr_h = bpf_ntohl(pf.daddr);
	u32 dtop_key = daddr_h >> 16;
	u32 *dtop = dst_top_map.lookup(&dtop_key);
	if (!dtop)
		return RET(XDP_ABORTED);
#if DST_DENSE
	struct dst_dense *sd_dst = dst_dense_map.lookup(&zero);
	if (!sd_dst)
		return RET(XDP_ABORTED);
#else
	struct dst_dense *sd_dst = NULL;
#endif
	u32 didx;
	if (dst_search(sb_dst, sd_dst, *dtop, daddr_h, &didx))
		return RET(XDP_ABORTED);
	u32 *did = dst_index_map.lookup(&didx);
	if (!did)
		return RET(XDP_ABORTED);
	ADDR_VECTOR *f_dst = dst_map.lookup(did);
	if (!f_dst)
		return RET(XDP_ABORTED);
#endif
#if PAIR
	u32 pair_key = ((saddr_h >> 24) << 8) | (daddr_h >> 24);
	struct pair_sum *f_pair = pair_map.lookup(&pair_key);
	if (!f_pair)
		return RET(XDP_ABORTED);
#endif
#if FIELD_PROTO
	u32 pkey = pf.proto & 0xFF;
	struct bitvector *f_proto = proto_map.lookup(&pkey);
	if (!f_proto)
		return RET(XDP_ABORTED);
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
	u32 sport_key = pf.sport & 0xFFFF;
	u32 *sslot = sport_slot_map.lookup(&sport_key);
	if (!sslot)
		return RET(XDP_ABORTED);
	u32 skey2 = pf.evil ? SPORT_BSIZE + 1 : pf.l4 ? *sslot : SPORT_BSIZE;
	struct bitvector *f_sport = sport_map.lookup(&skey2);
	if (!f_sport)
		return RET(XDP_ABORTED);
#endif
#if FIELD_DPORT
	u32 dport_key = pf.dport & 0xFFFF;
	u32 *dslot = dport_slot_map.lookup(&dport_key);
	if (!dslot)
		return RET(XDP_ABORTED);
	u32 dkey2 = pf.evil ? DPORT_BSIZE + 1 : pf.l4 ? *dslot : DPORT_BSIZE;
	struct bitvector *f_dport = dport_map.lookup(&dkey2);
	if (!f_dport)
		return RET(XDP_ABORTED);
#endif
#if PORTS_PAIR
	u32 ppair_key = skey2 * (DPORT_BSIZE + 2) + dkey2;
	struct pair_sum *f_ppair = ports_pair_map.lookup(&ppair_key);
	if (!f_ppair)
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

#if FIELD_LENGTH
	u32 length_key = pf.length & 0xFFFF;
	u32 *lkey = length_slot_map.lookup(&length_key);
	if (!lkey)
		return RET(XDP_ABORTED);
	struct bitvector *f_length = length_map.lookup(lkey);
	if (!f_length)
		return RET(XDP_ABORTED);
#endif
#if FIELD_TTL
	u32 ttl_key = pf.ttl & 0xFF;
	u32 *ttlkey = ttl_slot_map.lookup(&ttl_key);
	if (!ttlkey)
		return RET(XDP_ABORTED);
	struct bitvector *f_ttl = ttl_map.lookup(ttlkey);
	if (!f_ttl)
		return RET(XDP_ABORTED);
#endif
#if FIELD_PORTS
	struct bitvector *f_ports_s = ports_s_map.lookup(&skey2);
	struct bitvector *f_ports_d = ports_d_map.lookup(&dkey2);
	if (!f_ports_s || !f_ports_d)
		return RET(XDP_ABORTED);
#endif
#if FIELD_OIF
#if HOOK_NF
	/* the hook knows the output device (no route lookup: none allowed) */
	u32 okey = nf_dev(ctx, OFF_STATE_OUT);
#else
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = pf.tos;
	fib.l4_protocol = pf.proto;
	fib.tot_len = 0;	/* no MTU check, as the dispatcher (root.c) */
	fib.ipv4_src = pf.saddr;
	fib.ipv4_dst = pf.daddr;
	fib.ifindex = CTX_IFINDEX(ctx);
	long fib_rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	/* the dispatcher calls FORWARD only for these two results; the
	 * lookup fills in the egress ifindex for both */
	u32 okey = (fib_rc == BPF_FIB_LKUP_RET_SUCCESS ||
		    fib_rc == BPF_FIB_LKUP_RET_NO_NEIGH) ? fib.ifindex : 0;
#endif
	struct bitvector *f_oif = oif_map.lookup(&okey);
	if (!f_oif) {
		okey = 0;
		f_oif = oif_map.lookup(&okey);
		if (!f_oif)
			return RET(XDP_ABORTED);
	}
#endif
#if FIELD_MAC
	/* a looped copy has no MAC header: xt_mac never matches, as on lo */
	u64 mkey = (CTX_IFINDEX(ctx) == LOOPBACK_IFINDEX || looped) ? MAC_NONE : pf.src_mac;
	struct bitvector *f_mac = mac_map.lookup(&mkey);
	if (!f_mac) {
		mkey = MAC_OTHER;
		f_mac = mac_map.lookup(&mkey);
		if (!f_mac)
			return RET(XDP_ABORTED);
	}
#endif
#if FIELD_PKTTYPE
	u32 ptkey = pf.pkttype;
	struct bitvector *f_pkttype = pkttype_map.lookup(&ptkey);
	if (!f_pkttype)
		return RET(XDP_ABORTED);
#endif
#if FIELD_CTSTATE
#if NF_CT
	u32 ctkey = NF_CT_SLOT(cts);
#else
	u32 ctkey = CT_SLOT(cts);
#endif
	struct bitvector *f_ctstate = ctstate_map.lookup(&ctkey);
	if (!f_ctstate)
		return RET(XDP_ABORTED);
#endif
#if FIELD_TOS
	u32 toskey = pf.tos & 0xFF;
	struct bitvector *f_tos = tos_map.lookup(&toskey);
	if (!f_tos)
		return RET(XDP_ABORTED);
#endif

#if FIELD_ATCHECK
	/* the device the limit refers to: the input one at ingress, the
	 * output one at TC egress (OUTPUT); FORWARD's output device is
	 * refused by the compiler */
	u32 at_dev = CTX_IFINDEX(ctx);
	struct at_key akey = {32, pf.saddr};
	struct at_val *sv = atype_lpm.lookup(&akey);
	akey.addr = pf.daddr;
	struct at_val *dv = atype_lpm.lookup(&akey);
	if (!sv || !dv)
		return RET(XDP_ABORTED);	/* the trie always holds /0 */
	u32 at_src = (sv->dev == AT_ANY || sv->dev == at_dev) ? (sv->type & 31) : AT_UNICAST;
	u32 at_dst = (dv->dev == AT_ANY || dv->dev == at_dev) ? (dv->type & 31) : AT_UNICAST;
#endif
#if FIELD_MARK
#if HOOK_TC
	u32 pkt_mark = ctx->mark;
#elif HOOK_NF
	u32 pkt_mark = *(u32 *)((char *)ctx->skb + OFF_SKB_MARK);
#else
	/* XDP has no skb: nothing has marked a packet that arrives from a
	 * device (a packet entering a namespace has its mark cleared), so
	 * the mark is 0 here; what XDP cannot see (a mark kept on lo, marks
	 * set after it) is in the data path's README */
	u32 pkt_mark = 0;
#endif
#endif
#if NSETS
	/* every distinct set check of the chain, once per packet (lib/set.h) */
	struct set_scratch *sres = set_result.lookup(&zero);
	if (!sres)
		return RET(XDP_ABORTED);
	set_packet_of(ctx, &pf, sres);
	sres->bits = 0;
	/* slot 0 holds the number of checks in its id: the slots after them
	 * (headroom) are passed over without a lookup, and the loop always
	 * runs to its end (an early exit would leave one verifier state per
	 * exit, and the scan loop would be verified for each) */
	sres->slot = 0;
	struct set_check *head = set_check_map.lookup(&sres->slot);
	if (!head)
		return RET(XDP_ABORTED);
	u64 nchecks = head->id;
#pragma clang loop unroll(disable)
	for (u64 k = 1; k < NSETS; k++) {
		if (k > nchecks)
			continue;
		/* the key in map memory: the counter stays in a register
		 * (spilled as the key, the verifier would lose its value) */
		sres->slot = k;
		struct set_check *ck = set_check_map.lookup(&sres->slot);
		if (ck && set_hit(ck, sres))
			sres->bits |= 1ULL << ((k - 1) & 63);
	}
#endif
	rs->evil = pf.evil;
	if (rs->ctz_ready != CTZ_READY) {
		/* once per CPU: the map's memory starts zeroed */
		ctz_fill(rs->ctz);
		rs->ctz_ready = CTZ_READY;
	}
	/* once per packet (and per tail call): the words where every field
	 * can have a bit; the scan loads no other word */
#pragma unroll
	for (u32 k = 0; k < NSUM; k++)
		rs->sum[k] = AND_SUM(k);
	/* w/cur: the word being scanned and its candidate bits left;
	 * k/scur: the summary word and its candidate words left */
	u64 w, cur, k, scur;
	if (rs->active) {
		rs->active = 0;
		w = rs->word & (NWORDS - 1);
		cur = rs->cur;
		k = rs->sword & (NSUM - 1);
		scur = rs->scur;
	} else {
		k = cfg->first_word & (NSUM - 1);
		w = 0;
		cur = 0;
		scur = rs->sum[k];
		/* a new packet: no stateful result yet */
		rs->memo = 0;
		rs->st_done = 0;
	}
	u32 length = pf.length;
#if NLOGS
#if HOOK_TC
	u32 frame_len = ctx->len;
#else
	u32 frame_len = (u32)(data_end - data);
#endif
#endif
	u32 verdict = VERDICT_CONTINUE;
	/* STEPS bounds summary and word loads plus entries visited in one
	 * invocation (compiler.py computes what a scan can need); see
	 * SCAN_STEP for why the count passes through map memory. */
#if HAVE_MAY_GOTO
	rs->steps = STEPS;
	u64 left = *(volatile u32 *)&rs->steps;
#pragma clang loop unroll(disable)
	for (;;) {
		SCAN_STEP(left, scan_end);
#else
	/* before 6.9: the bounded loop, checked once per step (lib/loop.h) */
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < STEPS; i++) {
#endif
		if (cur == 0) {
			/* no compare with the entry count: the policy entry's bit
			 * ends every scan (a bound depending on map data would
			 * make the verifier keep apart states it can merge) */
			if (scur == 0) {
				k = (k + 1) & (NSUM - 1);
				scur = rs->sum[k];
				continue;
			}
			/* k came from the last step: bounded here (lib/loop.h) */
			w = ((BOUNDED(k, NSUM - 1) << 6) | ctz_lookup(rs->ctz, scur)) &
			    (NWORDS - 1);
			scur &= scur - 1;
			cur = AND_WORD(w);
			continue;
		}
		u32 e = (u32)((w << 6) | ctz_lookup(rs->ctz, cur)) & (NENTRIES - 1);
		struct entry *en = entry_map.lookup(&e);
		if (!en)
			return RET(XDP_ABORTED);
		/* residual checks: a candidate that fails them is skipped */
		u64 miss = (differs(pf.saddr, en->src_mask, en->src_addr) ^ en->src_inv) |
			   (differs(pf.daddr, en->dst_mask, en->dst_addr) ^ en->dst_inv);
#if FIELD_CTCHECK
		struct ct_check *cc = ctcheck_map.lookup(&e);
		if (!cc)
			return RET(XDP_ABORTED);
		miss |= ct_check_miss(cc, cts);
		u32 nx = cc->next;
		/* a bounded loop (clang does not unroll it with the break) */
#pragma clang loop unroll(disable)
		for (int j = 1; j < CT_CHECKS_MAX; j++) {
			if (!nx)
				break;
			struct ct_check *cx = ctextra_map.lookup(&nx);
			if (!cx)
				return RET(XDP_ABORTED);
			miss |= ct_check_miss(cx, cts);
			nx = cx->next;
		}
#endif
#if FIELD_ATCHECK
		struct at_check *ac = atcheck_map.lookup(&e);
		if (!ac)
			return RET(XDP_ABORTED);
		miss |= ((ac->src_miss >> at_src) | (ac->dst_miss >> at_dst)) & 1;
#endif
#if FIELD_MARK
		struct mark_check *mc = mark_map.lookup(&e);
		if (!mc)
			return RET(XDP_ABORTED);
		miss |= (differs(pkt_mark, mc->mask0, mc->value0) ^ mc->inv0) |
			(differs(pkt_mark, mc->mask1, mc->value1) ^ mc->inv1);
#endif
#if NSETS
		/* the rule's (and its jump rules') set matches: the packet's
		 * membership bits against the ones the entry wants */
		struct set_want *sw = entry_set_map.lookup(&e);
		if (!sw)
			return RET(XDP_ABORTED);
		u64 sdiff = (sres->bits ^ sw->want) & sw->mask;
		miss |= (sdiff | (0 - sdiff)) >> 63;
#endif
		if (miss) {
			cur &= cur - 1; /* drop the candidate, go on */
			continue;
		}
		if (rs->evil & en->tcp)
			return RET(XDP_DROP); /* hotdrop: the rule is not counted */
#if MEMO
		/* a rule in a called chain holds only when the stateful matches
		 * of the jump rules on its path held: evaluated once, at their
		 * jump entry (a candidate before this one whenever this one is:
		 * its stateless fields are a subset of this entry's) */
		struct entry_state *es = entry_state_map.lookup(&e);
		if (!es)
			return RET(XDP_ABORTED);
		if ((rs->memo & es->need) != es->need) {
			cur &= cur - 1;
			continue;
		}
#endif
#if NLIMITS
		/* the rule's limit match, its last (the compiler refuses other
		 * orders): evaluated only when every other match held, as in
		 * netfilter; no token, no match: the candidate is skipped */
		u32 *lslot = entry_limit_map.lookup(&e);
		if (!lslot)
			return RET(XDP_ABORTED);
		if (*lslot) {
			struct limit_state *ls = limit_map.lookup(lslot);
			if (!ls)
				return RET(XDP_ABORTED);
			u64 now = bpf_jiffies64();
			if (!limit_take(ls, now)) {
				cur &= cur - 1;
				continue;
			}
		}
#endif
#if STATEFUL_PROGS
		/* the rule's hashlimit or recent match, its last (the compiler
		 * refuses other orders): evaluated only when every other match
		 * held, as in netfilter. By a program of its own (xdp_hashlimit,
		 * xdp_recent: in here their branches and loops cost the verifier
		 * most of the steps, and the stack its last bytes), tail-called
		 * after the loop; it resumes the scan at this candidate with the
		 * result in the resume slot. */
		u32 stateful = en->tcp & ENTRY_STATEFUL;
		if (stateful) {
			if (rs->st_done != e + 1) {
				/* the candidate in map memory, not in a register:
				 * the verifier then sees this exit as a verdict's */
				rs->st_entry = e;
				rs->st_slot = (stateful & ENTRY_HASHLIMIT) ? SLOT_HASHLIMIT
									   : SLOT_RECENT;
				verdict = VERDICT_STATEFUL;
				break;
			}
			rs->st_done = 0;
			if (!rs->st_result) {
				cur &= cur - 1;
				continue;
			}
		}
#endif
#if MEMO
		/* every stateful check of the candidate held (a new one goes
		 * above this line and joins compiler.STATEFUL_MATCHES): a jump
		 * rule records it for the entries it guards */
		rs->memo |= es->set;
#endif
		count(en->counter, length);
#if NLOGS
		log_packet(ctx, e, frame_len, &pf);
#endif
		if (en->verdict != VERDICT_CONTINUE) {
#if CONNTRACK
			/* netfilter confirms a new connection only when the
			 * packet is accepted */
			if (en->verdict == XDP_PASS)
				ct_confirm(cts);
#endif
			/* decided after the loop: the REJECT branch and its
			 * tail call in one place, not in every step */
			verdict = en->verdict;
			break;
		}
		/* continue at en->next: reload its word, masking earlier bits,
		 * and the summary from the word after it (none past the last) */
		u32 next = en->next;
		w = (next >> 6) & (NWORDS - 1);
		cur = AND_WORD(w) & (~0ULL << (next & 63));
		u32 after = (u32)w + 1;
		u64 keep = (u64)(((s64)after - NWORDS) >> 63);
		k = (after >> 6) & (NSUM - 1);
		scur = rs->sum[k] & (~0ULL << (after & 63)) & keep;
	}
#if HAVE_MAY_GOTO
scan_end:
#endif
#if STATEFUL_PROGS
	if (verdict == VERDICT_STATEFUL) {
		/* the candidate's program (st_slot) evaluates its match and
		 * resumes the scan at it (w and cur still hold its bit) */
		rs->active = 1;
		rs->word = w;
		rs->cur = cur;
		rs->sword = k;
		rs->scur = scur;
#if NRECENT
		rs->rttl = pf.ttl;
		rs->raddr_s = pf.saddr;
		rs->raddr_d = pf.daddr;
#endif
		self_map.call(ctx, rs->st_slot);
		rs->active = 0;
		return RET(XDP_ABORTED);
	}
#endif
	if (verdict != VERDICT_CONTINUE) {
		if ((verdict & VERDICT_REJECT) && looped)
			return RET_OUT(ctx, XDP_DROP);	/* sent with a broadcast or multicast
						 * route: the kernel answers no copy */
		if (verdict & VERDICT_REJECT) {
#if REPLY_MODE
			/* OUTPUT rejecting a REJECT reply: no reply to an
			 * ICMP error or a RST, the reply is dropped */
			if (reply_pending(ctx))
				return reply_verdict(ctx, XDP_DROP);
#endif
			/* counted; the reply is built by xdp_reject, a program
			 * of its own: even a branch to it in here costs the
			 * scan loop's verification a third more */
			rs->reject = verdict;
			self_map.call(ctx, 1);
			rs->reject = 0;	/* the tail call failed: drop */
			return RET(XDP_DROP);
		}
		return RET_OUT(ctx, verdict);
	}
	rs->active = 1;
	rs->word = w;
	rs->cur = cur;
	rs->sword = k;
	rs->scur = scur;
	self_map.call(ctx, 0);
	/* only reached when the tail call fails (the compiler keeps scans
	 * within the limit): fail closed, visibly */
	rs->active = 0;
	return RET(XDP_ABORTED);
}

/* The reply to a packet the classifier's REJECT entry counted (the verdict
 * in the per-CPU resume slot); tail-called from xdp_filter through
 * self_map slot 1, verified on its own. */
int xdp_reject(CTX_TYPE *ctx)
{
#if HOOK_TC
	u32 pull = ctx->len < 128 ? ctx->len : 128;
	bpf_skb_pull_data(ctx, pull);
	u32 wire_len = ctx->len;
#else
	u32 wire_len = 0;
#endif
	u32 zero = 0;
	struct resume *rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_DROP);
	u32 v = rs->reject;
	rs->reject = 0;
	if (!(v & VERDICT_REJECT) || v == VERDICT_CONTINUE)
		return RET(XDP_DROP);
#if HOOK_NF
	/* a netfilter program cannot send: the record for iptables' REJECT
	 * rule at the same hook (lib/nfreject.h), and accept */
	struct bpf_dynptr p;
	u8 ip[20];
	if (kf_dynptr_from_skb(ctx->skb, 0, &p))
		return NF_DROP;
	long rc = bpf_dynptr_read(ip, 20, &p, 0, 0);
	if (rc)
		return NF_DROP;
	struct nf_pending rec = {};
	__builtin_memcpy(&rec.daddr, ip + 16, 4);
	rec.id = (u16)ip[4] << 8 | ip[5];
	rec.tot_len = (u16)ip[2] << 8 | ip[3];
	rec.verdict = v;
	u64 addr = (u64)ctx->skb;
	if (nf_reject_pending.update(&addr, &rec))
		return NF_DROP;	/* no record, no reply: at least not accepted */
	return NF_ACCEPT;
#else
	int act = reject_packet(ctx, v, wire_len);
#if HOOK_TC
	if (act == TC_ACT_REDIRECT && !(v & REJECT_OUTPUT)) {
		/* the reply passes OUTPUT first (lib/reject_out.h): the
		 * generation's OUTPUT classifier sends or drops it */
		ctx->cb[0] = REPLY_MAGIC0;
		ctx->cb[3] = REPLY_MAGIC3;
		ctx->cb[1] = 0;
		ctx->cb[2] = 0;
#if CONNTRACK
		struct ct_seen *cts = ct_scratch.lookup(&zero);
		if (cts) {
			ctx->cb[1] = reply_ct_word(cts);
			ctx->cb[2] = reply_ct_jexpires(cts);
		}
#endif
		self_map.call(ctx, SLOT_OUTPUT);
		/* no OUTPUT classifier (nothing to do there): sent as is */
		reply_clear(ctx);
	}
#else
	if (act == XDP_TX && !(v & REJECT_OUTPUT)) {
		/* the same through OUTPUT's XDP twin (lib/reject_out.h), the
		 * hand-over in the frame's metadata where the driver has it */
		int meta = bpf_xdp_adjust_meta(ctx, -16) == 0;
		struct reply_meta *m = meta ? reply_meta_of(ctx) : 0;
		if (m) {
			m->magic0 = REPLY_MAGIC0;
			m->magic3 = REPLY_MAGIC3;
			m->word = 0;
			m->jexpires = 0;
#if CONNTRACK
			struct ct_seen *cts = ct_scratch.lookup(&zero);
			if (cts) {
				m->word = reply_ct_word(cts);
				m->jexpires = reply_ct_jexpires(cts);
			}
#endif
		}
		self_map.call(ctx, SLOT_OUTPUT);
		if (meta)
			bpf_xdp_adjust_meta(ctx, 16);
	}
#endif
	return act;
#endif
}

#if NHASHLIMITS || NRECENT
/* The end of a stateful match's own program (xdp_hashlimit, xdp_recent):
 * hand the result for candidate ``e`` back through the resume slot and
 * tail-call the classifier, which resumes its scan at that candidate. A
 * failed tail call clears the slot and aborts (fails closed). */
static __always_inline int stateful_resume(CTX_TYPE *ctx, struct resume *rs, u32 e, u32 result)
{
	rs->st_result = result;
	rs->st_done = e + 1;
	self_map.call(ctx, 0);
	rs->st_done = 0;
	rs->active = 0;
	return RET(XDP_ABORTED);
}
#endif

/* -m hashlimit's check for the candidate the classifier stopped at
 * (the resume slot's st_entry), verified on its own (see the scan loop); tail-called
 * through self_map slot 2, it hands the result back and tail-calls the
 * classifier, which resumes the scan at that candidate. A hot-drop drops
 * here (the rule is not counted). */
int xdp_hashlimit(CTX_TYPE *ctx)
{
#if NHASHLIMITS
#if HOOK_TC
	u32 wire_len = ctx->len;
#else
	u32 wire_len = 0;
#endif
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet_fields pf = {};
	if (parse_packet(data, data_end, &pf, wire_len) != PARSE_OK)
		return RET(XDP_DROP);
	u32 zero = 0;
	struct resume *rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_DROP);
	u32 e = rs->st_entry & (NENTRIES - 1);
	struct hl_rule *hr = entry_hl_map.lookup(&e);
	if (!hr)
		return RET(XDP_DROP);
	int r = hl_check(ctx, hr, &pf);
	if (r < 0)
		return RET(XDP_DROP);
	rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_DROP);
	return stateful_resume(ctx, rs, e, r);
#else
	return RET(XDP_DROP);
#endif
}

#if NRECENT
/* -m recent (lib/recent.h) for the candidate the classifier stopped at
 * (the resume slot's st_entry, self_map slot 3), then back to the classifier, which resumes its scan at
 * that candidate; a program of its own, verified once, since its loops
 * over the table inside the scan loop would be walked at every step. */
int xdp_recent(CTX_TYPE *ctx)
{
	u32 zero = 0;
	struct resume *rs = resume_map.lookup(&zero);
	if (!rs)
		return RET(XDP_ABORTED);
	u32 e = rs->st_entry & (NENTRIES - 1);
	struct entry_state *es = entry_state_map.lookup(&e);
	if (!es)
		return RET(XDP_ABORTED);
	u32 slot = es->recent;
	struct recent_rule *r = recent_rule_map.lookup(&slot);
	if (!r)
		return RET(XDP_ABORTED);
	u64 key = r->table;
	struct recent_table *t = recent_tables.lookup(&key);
	struct recent_scan *sc = recent_scratch.lookup(&zero);
	if (!sc)
		return RET(XDP_ABORTED);
	/* the table is made when its rules are written; without it, an
	 * empty table's answer */
	u32 res = r->invert ? 1 : 0;
	if (t) {
		u32 addr = bpf_ntohl(r->side_dest ? rs->raddr_d : rs->raddr_s);
		res = recent_op(t, r, sc, addr, rs->rttl & 0xFF, bpf_jiffies64());
	}
	return stateful_resume(ctx, rs, e, res);
}
#endif
