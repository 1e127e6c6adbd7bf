/* Loops the verifier checks until their state converges.
 *
 * A loop bounded by a count the verifier knows (for (i = 0; i < N; i++))
 * is checked once per iteration and per distinct state: i is a known
 * constant in every condition on it, so it is kept exact ("precise") and
 * no iteration's state can stand for another's. Behind may_goto (kernel
 * 6.9+) the verifier instead widens what differs between iterations and
 * stops once an iteration's state lies within an earlier one's: the body
 * is checked a few times, whatever the count. For that the loop's own
 * count must not be a constant either (a value read from a map or the
 * packet, or one that only counts down), else it stays exact.
 *
 * may_goto is a conditional jump (BPF_JMP | BPF_JCOND) on a hidden
 * per-invocation count (8M) that the verifier adds; it jumps to `label`
 * once that runs out, which real loops here never reach. Encoded by hand:
 * clang 14 (bcc's) has no mnemonic for it. */
#ifndef BPF_IPTABLES_LOOP_H
#define BPF_IPTABLES_LOOP_H

/* HAVE_MAY_GOTO (program.py passes it, from the probe in maygoto.py): 1
 * on 6.9+, 0 before, where the opcode is refused ("unknown opcode e5"):
 * the loops are then the bounded ones they were before may_goto, the same
 * semantics, slower to verify (~0.3-0.4 s per classifier at 10k rules). */
#ifndef HAVE_MAY_GOTO
#define HAVE_MAY_GOTO 1
#endif

/* x & mask, the AND kept: inside such a loop the verifier may widen a
 * value carried from one iteration to the next (an index clang knows is
 * masked where it is set) to unknown, so every index into map memory
 * must be bounded where it is used. clang drops an AND it can prove
 * redundant; the empty asm hides x's range from it. */
#if HAVE_MAY_GOTO
#define BOUNDED(x, mask)                                                       \
	({                                                                     \
		u64 b_ = (x);                                                  \
		asm volatile("" : "+r"(b_));                                   \
		b_ & (mask);                                                   \
	})

#define MAY_GOTO(label)                                                        \
	asm volatile goto("1: .byte 0xe5; .byte 0;"                            \
			  ".long ((%l[" #label "] - 1b - 8) / 8) & 0xffff;"     \
			  ".short 0" :::: label)
#else
/* bounded loops: no widening, so a plain AND (clang may drop it where it
 * proves it redundant, as the code before may_goto did); no MAY_GOTO */
#define BOUNDED(x, mask) ((x) & (mask))
#endif

#endif
