/* Bit-vector helpers for the linear bit-vector search.
 *
 * A bitvector has one bit per compiled entry (entry e is bit e%64 of word
 * e/64). Field maps hold one bitvector per field value; the program ANDs
 * the looked-up bitvectors word by word and walks the set bits in order.
 * The BPF ISA has no count-trailing-zeros and no set-on-condition, so the
 * helpers here are branch free: every avoided branch is a state the
 * verifier does not have to push per loop iteration. */
#ifndef BPF_IPTABLES_BITVECTOR_H
#define BPF_IPTABLES_BITVECTOR_H

struct bitvector {
	u64 word[NWORDS];
};

/* Number of set bits (SWAR popcount, no branches, no constant pool). */
static __always_inline u32 popcount64(u64 x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (u32)((x * 0x0101010101010101ULL) >> 56);
}

/* Index of the lowest set bit of a word known to be non-zero. */
static __always_inline u32 lowest_bit_index(u64 word)
{
	u64 low = word & (~word + 1);
	return popcount64(low - 1);
}

#endif
