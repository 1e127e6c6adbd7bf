/* Range-compressed port tables.
 *
 * The compiler cuts the port space 0..65535 at every range boundary used
 * by a rule (lo and hi+1). The sorted boundaries live in one map value,
 * padded to a power of two with 65536 (greater than any port); interval i
 * is [b[i], b[i+1]) and has one bitvector. A branch-free binary search of
 * log2(BSIZE) unrolled steps finds the interval: the verifier sees a fixed
 * instruction sequence whatever the number of ranges. */
#ifndef BPF_IPTABLES_RANGES_H
#define BPF_IPTABLES_RANGES_H

#define DEFINE_INTERVAL_SEARCH(NAME, BSIZE)                                   \
	struct NAME##_bounds {                                                \
		u32 b[BSIZE];                                                 \
	};                                                                    \
	static __always_inline u32 NAME##_interval(const struct NAME##_bounds *t, \
						   u32 port)                  \
	{                                                                     \
		u32 idx = 0;                                                  \
		_Pragma("unroll")                                             \
		for (u32 step = (BSIZE) / 2; step > 0; step >>= 1) {          \
			u32 probe = t->b[(idx + step) & ((BSIZE) - 1)];       \
			s64 diff = (s64)port - (s64)probe;                    \
			/* diff >= 0: the interval starts at or after probe */ \
			idx += step & ~(u32)(diff >> 63);                     \
		}                                                             \
		return idx & ((BSIZE) - 1);                                   \
	}

#endif
