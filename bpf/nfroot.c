/* Root programs of --mode netfilter (README, "Netfilter hooks"): one per
 * hook, linked once (BPF_NETFILTER links at LOCAL_IN, FORWARD and
 * LOCAL_OUT, priority 0: filter's) for the namespace's lifetime.
 *
 * A netfilter link cannot be moved to another program (BPF_LINK_UPDATE:
 * EOPNOTSUPP), so, as bpf/root.c does for XDP/TC, each root reads the
 * active word once per packet and tail-calls the classifier of the active
 * generation and hook: slot = generation * 3 + hook (0 INPUT, 1 FORWARD,
 * 2 OUTPUT), one prog array for all (every program here is of one type).
 * An empty slot (a hook without rules and with policy ACCEPT) fails the
 * tail call: the packet is accepted. No route lookup: the hook says which
 * chain. */
#include <uapi/linux/bpf.h>

#define NF_ACCEPT 1
#define ACTIVE_GEN 1u

BPF_ARRAY(active_map, u32, 1);
BPF_PROG_ARRAY(nf_slots, 6);

/* One call site per slot, each with a constant key (and an empty asm
 * naming it, so that clang does not merge them): the JIT makes such a
 * tail call a direct jump, where a computed key is an indirect one, a
 * retpoline under Spectre v2 mitigations (bpf/root.c, xdp_call). */
static __always_inline int run(void *ctx, u32 hook)
{
	u32 zero = 0;
	u32 *w = active_map.lookup(&zero);
	u32 word = w ? *(volatile u32 *)w : 0;
	if (word & ACTIVE_GEN) {
		if (hook == 0) {
			nf_slots.call(ctx, 3);
			asm volatile("" ::"i"(3));
		} else if (hook == 1) {
			nf_slots.call(ctx, 4);
			asm volatile("" ::"i"(4));
		} else {
			nf_slots.call(ctx, 5);
			asm volatile("" ::"i"(5));
		}
	} else {
		if (hook == 0) {
			nf_slots.call(ctx, 0);
			asm volatile("" ::"i"(0));
		} else if (hook == 1) {
			nf_slots.call(ctx, 1);
			asm volatile("" ::"i"(1));
		} else {
			nf_slots.call(ctx, 2);
			asm volatile("" ::"i"(2));
		}
	}
	return NF_ACCEPT;
}

int nf_root_input(void *ctx)
{
	return run(ctx, 0);
}

int nf_root_forward(void *ctx)
{
	return run(ctx, 1);
}

int nf_root_output(void *ctx)
{
	return run(ctx, 2);
}
