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

/* Summary words: bit j of summary[j / 64] is set when word[j] is not
 * zero. The AND of the fields' summaries names the only words where all
 * fields can have a common bit, so a scan skips runs of empty words 64 at
 * a time instead of loading every word of every field. */
#define NSUM (NWORDS >= 64 ? NWORDS / 64 : 1)

struct bitvector {
	u64 word[NWORDS];
	u64 summary[NSUM];
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

/* Index of the lowest set bit by a de Bruijn sequence: the lowest bit
 * times DEBRUIJN64 has a distinct top 6 bits for each of the 64 positions,
 * and a 64-byte table (ctz_fill, kept in per-CPU map memory: bcc has no
 * read-only data) maps them back. 6 instructions instead of popcount64's
 * 17: the scan pays it once per candidate word and once per candidate
 * entry, so it is most of the cost of a false candidate word. */
#define DEBRUIJN64 0x03f79d71b4cb0a89ULL
#define CTZ_READY 0x63747a31u

static __always_inline void ctz_fill(u8 *t)
{
#pragma unroll
	for (u32 i = 0; i < 64; i++)
		t[((DEBRUIJN64 << i) >> 58) & 63] = i;
}

static __always_inline u32 ctz_lookup(const u8 *t, u64 word)
{
	u64 low = word & (0 - word);
	return t[(low * DEBRUIJN64) >> 58];
}

/* 1 when x is 0, else 0, without a branch (opaque to clang, which would
 * turn it back into a compare and branch). */
static __always_inline u64 is_zero(u64 x)
{
	u64 y = x | (0 - x);
	asm volatile("" : "+r"(y));
	y = (y >> 63) ^ 1;
	/* and the result too: clang would turn its uses (e.g. 63 & -y) into
	 * a sign test and a branch */
	asm volatile("" : "+r"(y));
	return y;
}

#endif
