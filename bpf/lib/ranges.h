/* Range-compressed tables: ports, the IP total length, the TTL.
 *
 * The compiler cuts the value space (0..65535, or 0..255 for the TTL) at
 * every range boundary used by a rule (lo and hi+1). The sorted boundaries
 * live in one map value, padded to a power of two with 65536 (greater
 * than any value); interval i is [b[i], b[i+1]) and has one bitvector. A branch-free binary search of
 * log2(BSIZE) unrolled probes finds the interval: the verifier sees a fixed
 * instruction sequence whatever the number of ranges. */
#ifndef BPF_IPTABLES_RANGES_H
#define BPF_IPTABLES_RANGES_H

/* One probe of the search: a no-op unless S < BSIZE (folded at compile
 * time), so the search is a straight line of log2(BSIZE) probes whose
 * index the verifier sees as one unknown value, not one constant per path
 * (which would make it walk one path per interval). */
#define INTERVAL_PROBE(T, BSIZE, S, idx, value)                              \
	if ((BSIZE) > (S)) {                                                  \
		u32 probe = (T)->b[((idx) + (S)) & ((BSIZE) - 1)];           \
		s64 diff = (s64)(value) - (s64)probe;                         \
		/* opaque to clang, which would turn the sign test below  \
		 * into a compare and branch: one verifier path per interval */ \
		asm volatile("" : "+r"(diff));                                \
		/* diff >= 0: the interval starts at or after probe */        \
		(idx) += (S) & ~(u32)(diff >> 63);                            \
	}

#define DEFINE_INTERVAL_SEARCH(NAME, BSIZE)                                   \
	struct NAME##_bounds {                                                \
		u32 b[BSIZE];                                                 \
	};                                                                    \
	static __always_inline u32 NAME##_interval(const struct NAME##_bounds *t, \
						   u32 value)                 \
	{                                                                     \
		u32 idx = 0;                                                  \
		INTERVAL_PROBE(t, BSIZE, 32768, idx, value)                   \
		INTERVAL_PROBE(t, BSIZE, 16384, idx, value)                   \
		INTERVAL_PROBE(t, BSIZE, 8192, idx, value)                    \
		INTERVAL_PROBE(t, BSIZE, 4096, idx, value)                    \
		INTERVAL_PROBE(t, BSIZE, 2048, idx, value)                    \
		INTERVAL_PROBE(t, BSIZE, 1024, idx, value)                    \
		INTERVAL_PROBE(t, BSIZE, 512, idx, value)                     \
		INTERVAL_PROBE(t, BSIZE, 256, idx, value)                     \
		INTERVAL_PROBE(t, BSIZE, 128, idx, value)                     \
		INTERVAL_PROBE(t, BSIZE, 64, idx, value)                      \
		INTERVAL_PROBE(t, BSIZE, 32, idx, value)                      \
		INTERVAL_PROBE(t, BSIZE, 16, idx, value)                      \
		INTERVAL_PROBE(t, BSIZE, 8, idx, value)                       \
		INTERVAL_PROBE(t, BSIZE, 4, idx, value)                       \
		INTERVAL_PROBE(t, BSIZE, 2, idx, value)                       \
		INTERVAL_PROBE(t, BSIZE, 1, idx, value)                       \
		return idx & ((BSIZE) - 1);                                   \
	}

#endif
