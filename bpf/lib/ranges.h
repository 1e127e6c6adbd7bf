/* Range-compressed tables: ports, the IP total length, the TTL, and
 * (with a /16 first step, see below) addresses, whose prefixes are ranges too.
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

/* Addresses: a first step by the top 16 bits (compiler.with_buckets)
 * gives the interval holding the /16's first address; PROBES probes of
 * decreasing power-of-two strides then move past the interval starts
 * inside the /16 that are <= the address. A probe beyond the /16 reads a
 * larger start (or the 0xFFFFFFFF padding) and does not move. */
#define STRIDE_PROBE(T, BSIZE, PROBES, S, idx, addr)                          \
	if ((PROBES) > (S)) {                                                 \
		u32 probe = (T)->b[((idx) + (1u << (S))) & ((BSIZE) - 1)];   \
		s64 diff = (s64)(addr) - (s64)probe;                          \
		asm volatile("" : "+r"(diff));                                \
		(idx) += (1u << (S)) & ~(u32)(diff >> 63);                    \
	}

#define DEFINE_ADDRESS_SEARCH(NAME, BSIZE, PROBES)                            \
	struct NAME##_bounds {                                                \
		u32 b[BSIZE];                                                 \
	};                                                                    \
	static __always_inline u32 NAME##_search(const struct NAME##_bounds *t, \
						 u32 idx, u32 addr)           \
	{                                                                     \
		STRIDE_PROBE(t, BSIZE, PROBES, 16, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 15, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 14, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 13, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 12, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 11, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 10, idx, addr)                 \
		STRIDE_PROBE(t, BSIZE, PROBES, 9, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 8, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 7, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 6, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 5, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 4, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 3, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 2, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 1, idx, addr)                  \
		STRIDE_PROBE(t, BSIZE, PROBES, 0, idx, addr)                  \
		return idx & ((BSIZE) - 1);                                   \
	}

#endif
