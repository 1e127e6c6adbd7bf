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
