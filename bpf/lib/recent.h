/* -m recent in the data path: xt_recent's address lists (IPv4).
 *
 * The kernel (net/netfilter/xt_recent.c) keeps per network namespace one
 * table per --name: at most ip_list_tot (100) entries, each an address,
 * the TTL it was last set with, and a ring of the jiffies of its last
 * nstamps_max_mask + 1 updates; a full table evicts its least recently
 * updated entry. Every table is under one spin lock. Here a table is one
 * value of the namespace's pinned hash map (key: a 64-bit digest of the
 * name, see bpf_iptables/datapath/recent.py, which creates, flushes and
 * removes tables as rules come and go, and lists them), updated under the
 * value's bpf_spin_lock; the LRU order is a sequence number per entry.
 * recent_mt() is recent_op() below, run by a program of its own
 * (xdp_recent in filter.c), since its loops over the table would
 * multiply the classifier's scan loop for the verifier. */
#ifndef BPF_IPTABLES_RECENT_H
#define BPF_IPTABLES_RECENT_H

#define RECENT_MAX 100		/* ip_list_tot, the module's default */
#define RECENT_NSTAMPS 64	/* stamps kept at most (--hitcount <= 64) */
#define RECENT_NAME_LEN 200	/* XT_RECENT_NAME_LEN */
#define RECENT_TABLES 64	/* tables (names) per namespace */

/* XT_RECENT_* of check_set */
#define RECENT_CHECK 1
#define RECENT_SET 2
#define RECENT_UPDATE 4
#define RECENT_REMOVE 8
#define RECENT_TTL 16
#define RECENT_REAP 32

#ifndef RECENT_HZ
#define RECENT_HZ 250
#endif

struct recent_slot {
	u32 addr;	/* host order, under the table's mask */
	u8 used;
	u8 ttl;
	u16 index;	/* next stamp at (index & stamps_mask); 1.. */
	u16 nstamps;
	u16 pad;
	u32 pad2;
	u64 lru;	/* table clock at the last update: lowest is oldest */
	u64 stamps[RECENT_NSTAMPS];
};

struct recent_table {
	struct bpf_spin_lock lock;
	u32 entries;
	u32 mask;		/* host order: the mask of the rule that made it */
	u32 stamps_mask;	/* nstamps_max_mask */
	u64 clock;
	char name[RECENT_NAME_LEN];
	struct recent_slot slots[RECENT_MAX];
};

/* one -m recent match (struct xt_recent_mtinfo_v1) */
struct recent_rule {
	u64 table;	/* key of its table */
	u32 check_set;
	u32 seconds;
	u32 hit_count;
	u32 invert;
	u32 side_dest;
	u32 pad;
};

/* the scan's running values, kept in a per-CPU map value: the verifier
 * tracks registers exactly, and constants differing per path (which slot
 * matched, which is free) would keep it from merging the loop's states;
 * map memory it does not track (volatile: clang must not keep them in
 * registers either) */
struct recent_scan {
	u32 found;
	u32 oldest;
	u32 free;
	u32 hits;
	u64 oldest_lru;
};

/* time_after(a, b) on unsigned long jiffies */
static __always_inline int recent_after(u64 a, u64 b)
{
	return (s64)(b - a) < 0;
}

/* recent_entry_update(): the next stamp, and the entry becomes the newest */
static __always_inline void recent_stamp(struct recent_table *t, struct recent_slot *s,
					 u64 now)
{
	u32 ix = s->index & t->stamps_mask & (RECENT_NSTAMPS - 1);
	s->stamps[ix] = now;
	s->index = ix + 1;
	if (s->index > s->nstamps)
		s->nstamps = s->index;
	t->clock += 1;
	s->lru = t->clock;
}

/* recent_mt() for one packet: 1 when the match holds. ``addr`` is the
 * address on the rule's side (host order, not yet masked), ``ttl`` the
 * frame's (netfilter's FORWARD adds back the forwarding decrement, which
 * gives the frame's too). */
static __always_inline u32 recent_op(struct recent_table *t, struct recent_rule *r,
				     volatile struct recent_scan *sc, u32 addr, u32 ttl,
				     u64 now)
{
	u32 ret = r->invert ? 1 : 0;
	u32 cs = r->check_set;
	u32 want_ttl = (cs & RECENT_TTL) ? ttl : 0;
	bpf_spin_lock(&t->lock);
	addr &= t->mask;
	/* the entry (recent_entry_lookup; an address has at most one: only
	 * --set creates entries, and it looks up with TTL 0, which matches
	 * any) */
	sc->found = RECENT_MAX;
	sc->oldest = RECENT_MAX;
	sc->free = RECENT_MAX;
	sc->hits = 0;
	sc->oldest_lru = ~0ULL;
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < RECENT_MAX; i++) {
		struct recent_slot *s = &t->slots[i];
		if (s->used && s->addr == addr &&
		    (want_ttl == s->ttl || want_ttl == 0 || s->ttl == 0)) {
			sc->found = i;
			break;
		}
	}
	/* the oldest entry (the LRU head) and a free slot, only when they
	 * can be needed: a new entry, or --reap */
	if ((cs & RECENT_REAP) || (sc->found >= RECENT_MAX && (cs & RECENT_SET))) {
#pragma clang loop unroll(disable)
		for (u32 i = 0; i < RECENT_MAX; i++) {
			struct recent_slot *s = &t->slots[i];
			if (!s->used) {
				if (sc->free >= RECENT_MAX)
					sc->free = i;
				continue;
			}
			if (s->lru < sc->oldest_lru) {
				sc->oldest_lru = s->lru;
				sc->oldest = i;
			}
		}
	}
	u32 found = sc->found, oldest = sc->oldest, free = sc->free;
	if (found >= RECENT_MAX) {
		if (!(cs & RECENT_SET))
			goto out;
		/* recent_entry_init(): a full table loses its oldest entry */
		if (t->entries >= RECENT_MAX && oldest < RECENT_MAX) {
			t->slots[oldest].used = 0;
			t->entries -= 1;
			free = oldest;
		}
		if (free >= RECENT_MAX)
			goto out;	/* cannot happen: entries < RECENT_MAX */
		struct recent_slot *n = &t->slots[free];
		n->used = 1;
		n->addr = addr;
		n->ttl = ttl;
		n->stamps[0] = now;
		n->nstamps = 1;
		n->index = 1;
		t->clock += 1;
		n->lru = t->clock;
		t->entries += 1;
		ret ^= 1;
		goto out;
	}
	struct recent_slot *e = &t->slots[found];
	u32 gone = 0;
	if (cs & RECENT_SET) {
		ret ^= 1;
	} else if (cs & RECENT_REMOVE) {
		e->used = 0;
		t->entries -= 1;
		ret ^= 1;
		goto out;
	} else if (cs & (RECENT_CHECK | RECENT_UPDATE)) {
		u64 time = now - (u64)(u32)(r->seconds * RECENT_HZ);
		u32 need = r->hit_count ? r->hit_count : 1;
		u32 n = e->nstamps;
#pragma clang loop unroll(disable)
		for (u32 i = 0; i < RECENT_NSTAMPS; i++) {
			if (i >= n)
				break;
			if (r->seconds && recent_after(time, e->stamps[i]))
				continue;
			sc->hits += 1;
		}
		if (sc->hits >= need)
			ret ^= 1;
		if ((cs & RECENT_REAP) && oldest < RECENT_MAX) {
			/* recent_entry_reap(): the oldest entry of the table goes
			 * when its newest stamp is older than the window */
			struct recent_slot *o = &t->slots[oldest];
			u32 last = (o->index - 1) & (RECENT_NSTAMPS - 1);
			if (recent_after(time, o->stamps[last])) {
				o->used = 0;
				t->entries -= 1;
				gone = oldest == found;
			}
		}
	}
	if (!gone && ((cs & RECENT_SET) || ((cs & RECENT_UPDATE) && ret))) {
		recent_stamp(t, e, now);
		e->ttl = ttl;
	}
out:
	bpf_spin_unlock(&t->lock);
	return ret;
}

#endif
