/* Range-compressed tables: ports, the IP total length, the TTL, and
 * addresses (whose prefixes are ranges too).
 *
 * The compiler cuts a field's value space at every range boundary used by
 * a rule (lo and hi+1); interval i is [b[i], b[i+1]) and has one bitvector.
 * Ports, lengths and TTLs (16 bits and less) find their interval with one
 * array access (filter.c: NAME_slot_map, value -> interval). Addresses
 * cannot (2^32 values): below, a /16 first step and a branch-free binary
 * search whose probes the verifier sees as one straight line, whatever the
 * number of ranges. */
#ifndef BPF_IPTABLES_RANGES_H
#define BPF_IPTABLES_RANGES_H

/* Addresses: a first step by the top 16 bits (compiler.with_buckets)
 * gives the interval holding the /16's first address; a search of PROBES
 * bits then moves past the interval starts inside the /16 that are <= the
 * address. A probe beyond the /16 reads a larger start (or the 0xFFFFFFFF
 * padding) and does not move.
 *
 * The /16 table's value also carries the /16's own depth (TOP_DEPTH_SHIFT
 * and up: the bit length of the number of starts inside it, image.py
 * top_with_depth): PROBES is what the most crowded /16 needs, and a step
 * whose smallest probe offset is 2^s >= 2^depth only reads starts past
 * this /16's, so it is skipped. At classbench-acl1-10k the sources need up
 * to 7 probes (4 dependent steps) while most /16s hold a few starts; the
 * chain of dependent loads before a packet's vectors was most of what 10k
 * rules add to a packet (datapath README, "Numbers").
 *
 * The search is k-ary: each step settles SEARCH_BITS bits of the offset at
 * once by comparing the address with 2^SEARCH_BITS - 1 starts, loaded in
 * parallel, and moves by the number of them that are <= the address (the
 * starts are sorted: they are the first ones). A binary search is one
 * dependent load-compare-add per bit (~4 ns each: at acl1-10k's 7 source
 * probes most of the lookup); this is one per step. Same table, same
 * result, same slots touched at most (offsets below 2^PROBES).
 *
 * Crowded /16s skip the search (the dense blocks, DENSE slots per field,
 * image.dense_blocks): a /16 whose table value has the depth TOP_DENSE
 * holds in its low bits a block slot. The block has a bit per address of
 * the /16 (set where an interval starts, its first address excepted) and
 * per 64-address word the interval index at the word's start; the
 * address's interval is that index plus the set bits of its word up to
 * the address. One load and a popcount, whatever the /16's depth: at
 * classbench-acl1-10k most of the traffic's sources sit in /16s of 16 to
 * 127 starts (depth 5-7: 3 or 4 dependent steps). */
#define TOP_DEPTH_SHIFT 27
#define TOP_DENSE 31
#define DENSE_WORDS 1024	/* 64-address words of a /16 */
#define TOP_INDEX_MASK ((1u << TOP_DEPTH_SHIFT) - 1)
#ifndef SEARCH_BITS
#define SEARCH_BITS 2
#endif

static __always_inline u32 address_search(const u32 *b, int probes, u32 idx, u32 depth,
					  u32 addr)
{
	/* p walks the starts; the caller checked idx <= BSIZE - 2^probes, so
	 * every probe (offsets below 2^probes) is inside the value without a
	 * mask per probe, and the verifier follows p's bounds */
	const u32 *p = b + idx;
	u64 above = (u64)addr + 1;
	/* step k settles the offset bits [k * SEARCH_BITS, hi), top step
	 * first; the steps' boundaries are multiples of SEARCH_BITS counted
	 * from bit 0, so that a narrower step (probes not a multiple) is the
	 * top one, which a /16 of smaller depth skips: with 7 probes, a depth
	 * of 6 takes 3 steps, not the 4 of boundaries counted from the top */
#pragma unroll
	for (int k = (probes + SEARCH_BITS - 1) / SEARCH_BITS - 1; k >= 0; k--) {
		int s = k * SEARCH_BITS;
		int hi = s + SEARCH_BITS < probes ? s + SEARCH_BITS : probes;
		/* the /16's starts lie below offset 2^depth: from s >= depth
		 * on, every probe of this step reads a later /16's start */
		if (depth <= (u32)s)
			continue;
		u64 n = 0;
#pragma unroll
		for (u32 j = 1; j < (1u << (hi - s)); j++) {
			/* start <= addr: start - (addr + 1) wraps below 0, its
			 * top bit set (both below 2^32: no other way to get it);
			 * two operations between the load and the sum */
			u64 diff = (u64)p[j << s] - above;
			/* opaque: clang would turn the sign test into a branch */
			asm volatile("" : "+r"(diff));
			n += diff >> 63;
		}
		p += n << s;
	}
	return (u32)(p - b);
}

/* top: the /16 table's value, the /16's first interval (its low
 * TOP_DEPTH_SHIFT bits) and its depth, or TOP_DENSE and a dense block
 * slot; refused (XDP_ABORTED by the caller) past BSIZE - 2^PROBES, which
 * the compiler's bsize_of() leaves free: then no probe needs a mask.
 * DENSE: the field's block slots (0: none, d unused and NULL) */
#define DEFINE_ADDRESS_SEARCH(NAME, BSIZE, PROBES, DENSE)                     \
	struct NAME##_bounds {                                                \
		u32 b[BSIZE];                                                 \
	};                                                                    \
	struct NAME##_dense {                                                 \
		u32 base[(DENSE) ? (DENSE) : 1][DENSE_WORDS];                 \
		u64 bits[(DENSE) ? (DENSE) : 1][DENSE_WORDS];                 \
	};                                                                    \
	static __always_inline int NAME##_search(const struct NAME##_bounds *t, \
						 const struct NAME##_dense *d,  \
						 u32 top, u32 addr, u32 *out)   \
	{                                                                     \
		u32 idx = top & TOP_INDEX_MASK;                               \
		u32 depth = top >> TOP_DEPTH_SHIFT;                           \
		if ((DENSE) && depth == TOP_DENSE) {                          \
			u32 slot = idx & ((DENSE) - 1);                       \
			u32 w = (addr >> 6) & (DENSE_WORDS - 1);              \
			/* the word's bits up to the address's own */        \
			u64 upto = (2ULL << (addr & 63)) - 1;                  \
			*out = (d->base[slot][w] +                             \
				popcount64(d->bits[slot][w] & upto)) &         \
			       ((BSIZE) - 1);                                 \
			return 0;                                             \
		}                                                             \
		if (idx > (BSIZE) - (1u << (PROBES)))                        \
			return -1;                                            \
		*out = address_search(t->b, (PROBES), idx, depth, addr) &    \
		       ((BSIZE) - 1);                                         \
		return 0;                                                     \
	}

#endif
