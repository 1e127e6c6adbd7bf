/* -m hashlimit in the data path: xt_hashlimit's token buckets per hashed key
 * (net/netfilter/xt_hashlimit.c, revision 3, packet rates).
 *
 * The kernel keeps per namespace one table per --hashlimit-name (found by
 * name alone, htable_find_get(); its configuration is the rule's that
 * created it), and in it one bucket per key: the masked addresses and the
 * ports the table's mode names. Per packet reaching the match:
 *     bucket found: expires = now + expire; rateinfo_recalc():
 *         credit += (now - prev) * CREDITS_PER_JIFFY (u64), prev = now,
 *         capped at credit_cap;
 *     none: a new one (count >= max: hot-drop) with credit = credit_cap
 *         = user2credits(avg * burst), cost = user2credits(avg);
 *     credit >= cost: credit -= cost, match (unless --hashlimit-above).
 * Here the tables are pinned per namespace (``HL_PIN_DIR``: every hook,
 * classifier and generation shares them): ``hl_tables`` (table id ->
 * configuration, written by user space when a rule set first names the
 * table), ``hl_added`` (buckets ever created, counted by the programs)
 * and ``hl_buckets`` (table id + key -> bucket, under a bpf_spin_lock as
 * the kernel's dh->lock). User space (datapath/hashlimit_tables.py)
 * creates and destroys tables and sweeps expired buckets, counting them
 * in the table's ``removed``; added - removed is the kernel's ht->count.
 * A bucket found expired is started again here (the kernel's gc worker
 * frees it up to gc_interval later; see the data path README). */
#ifndef BPF_IPTABLES_HASHLIMIT_H
#define BPF_IPTABLES_HASHLIMIT_H

/* xt_hashlimit's CREDITS_PER_JIFFY for revisions 2 and 3:
 * POW2_BELOW64(U64_MAX / (HZ * 60 * 60 * 24)); program.py passes the one
 * hashlimit.py computed the costs with (HZ 250: 2^39) */
#ifndef HL_CREDITS_PER_JIFFY
#define HL_CREDITS_PER_JIFFY (1ULL << 39)
#endif
/* byte rates: CREDITS_PER_JIFFY_BYTES = POW2_BELOW32(0xFFFFFFFF / HZ)
 * and a second's worth of it, a byte bucket's full credit */
#ifndef HL_CPJ_BYTES
#define HL_CPJ_BYTES (1ULL << 24)
#endif
#ifndef HL_BYTES_FULL
#define HL_BYTES_FULL (HL_CPJ_BYTES * 250)
#endif
/* the namespace's buckets, all tables together (the kernel's
 * HASHLIMIT_MAX_SIZE per table; the compiler refuses rule sets whose
 * tables' maxima add up to more) */
#ifndef HL_CAPACITY
#define HL_CAPACITY (1 << 20)
#endif

/* tables (names) per namespace */
#ifndef HL_NTABLES
#define HL_NTABLES 1024
#endif

#define HL_HASH_DIP 1
#define HL_HASH_DPT 2
#define HL_HASH_SIP 4
#define HL_HASH_SPT 8
#define HL_BYTES 32	/* XT_HASHLIMIT_BYTES */
#define HL_RULE_INVERT 1	/* struct hl_rule's flags */
#define HL_RULE_BYTES 2

struct hl_key {
	u64 table;	/* the table's id (hashlimit.table_id(name)) */
	u32 src;	/* masked addresses, network byte order; 0 if not hashed */
	u32 dst;
	u16 sport;	/* network byte order, 0 if not hashed */
	u16 dport;
	u32 pad;
};

struct hl_table {
	u64 cost;	/* user2credits(avg); bytes: user2credits_byte(avg) */
	u64 cap;	/* user2credits(avg * burst); bytes: burst (refills) */
	u64 expire;	/* msecs_to_jiffies(expire) */
	u64 expire_ns;	/* the same in ns, for the sweeper's deadline */
	u32 mode;	/* XT_HASHLIMIT_HASH_* and _BYTES of the creating rule */
	u32 srcmask;	/* network byte order masks */
	u32 dstmask;
	u32 max;	/* entries (the kernel's cfg.max after htable_create) */
	u64 removed;	/* buckets the sweeper freed (user space writes it) */
};

struct hl_bucket {
	struct bpf_spin_lock lock;
	u32 pad;
	u64 credit;
	u64 prev;	/* jiffies of the last packet */
	u64 expires;	/* jiffies */
	u64 deadline;	/* CLOCK_MONOTONIC ns of ``expires``: the sweeper's */
	u64 cap;	/* rateinfo.credit_cap (bytes: refills left, it only
			 * goes down) */
};

/* Everything the check keeps across helper calls, in a per-CPU slot
 * rather than on the stack: the classifier's stack is nearly full with
 * every field compiled in, and each value live across a call would take a
 * slot of its own. ``lock`` .. ``deadline`` are a new bucket's image
 * (``lock`` is the place of its bpf_spin_lock, which a per-CPU map may
 * not hold; the kernel does not copy that word into the map). */
struct hl_scratch {
	struct hl_key key;
	u32 lock;
	u32 pad;
	u64 credit;
	u64 prev;
	u64 expires;
	u64 deadline;
	u64 bcap;
	/* the table's configuration, copied */
	u64 cost;
	u64 cap;
	u64 expire;
	u64 expire_ns;
	u64 max;
	u64 removed;
	u64 now;	/* jiffies */
	u64 now_ns;
	u32 mode;
	u32 flags;	/* the rule's (struct hl_rule) */
	u32 len;	/* skb->len: the IP datagram's length */
	u32 pad2;
	u16 ports[2];
	u32 vihl;
};

/* per entry: its rule's table (0: no hashlimit), --hashlimit-above and
 * whether its rate is in bytes (the rule's own, the table's may differ) */
struct hl_rule {
	u64 table;
	u32 flags;	/* HL_RULE_INVERT, HL_RULE_BYTES */
	u32 zero;	/* always 0: the hl_scratch key, here rather than on
			 * the stack */
};

/* The bucket's refill and the token: 1 when a token was taken. The
 * times were read by the caller into ``sc`` (no helper runs under the
 * lock). rateinfo_recalc() by the table's mode, hashlimit_byte_cost() by
 * the rule's. */
static __always_inline u32 hl_take(struct hl_bucket *b, const struct hl_scratch *sc)
{
	u32 ok = 0;
	u64 now = sc->now;
	bpf_spin_lock(&b->lock);
	if ((s64)(now - b->expires) >= 0) {
		/* idle past expire: what the gc worker would have freed */
		b->credit = sc->credit;
		b->cap = sc->bcap;
		b->prev = now;
	} else if (now != b->prev) {
		u64 delta = now - b->prev;
		b->prev = now;
		if (sc->mode & HL_BYTES) {
			u64 tmp = b->credit;
			b->credit += HL_CPJ_BYTES * delta;
			if (tmp >= b->credit || b->credit > HL_BYTES_FULL)
				b->credit = HL_BYTES_FULL;	/* overflow or cap */
		} else {
			b->credit += delta * HL_CREDITS_PER_JIFFY;
			if (b->credit > b->cap)
				b->credit = b->cap;
		}
	}
	b->expires = now + sc->expire;
	b->deadline = sc->now_ns + sc->expire_ns;
	u64 cost = sc->cost;
	if (sc->flags & HL_RULE_BYTES) {
		cost = (u64)((sc->len >> 4) + 1) * sc->cost;
		if (cost > HL_BYTES_FULL)
			cost = HL_BYTES_FULL;
		if (b->credit < cost && b->cap) {
			b->cap--;
			b->credit = HL_BYTES_FULL;
		}
		cost = (u32)cost;
	}
	if (b->credit >= cost) {
		b->credit -= cost;
		ok = 1;
	}
	bpf_spin_unlock(&b->lock);
	return ok;
}

/* proto_ports_offset(): where the two ports lie in the transport header,
 * -1 for protocols without (their ports hash as 0) */
static __always_inline int hl_ports_offset(u32 proto)
{
	switch (proto) {
	case 6: case 17: case 33: case 50: case 132: case 136:
		return 0;	/* tcp udp dccp esp sctp udplite */
	case 51:
		return 4;	/* ah */
	}
	return -1;
}

#endif
