/* Generation switching for a netfilter-hook data path (README, "Netfilter
 * hooks", Attachment): a netfilter link cannot be updated to another
 * program (BPF_LINK_UPDATE: EOPNOTSUPP) and a second BPF link at the same
 * priority is refused (EBUSY), so the link keeps a root that tail-calls
 * the active classifier from a prog array, as bpf/root.c does for XDP/TC.
 * Here: slot = active word; an empty slot (failed tail call) accepts. */
#include <uapi/linux/bpf.h>

#define NF_DROP 0
#define NF_ACCEPT 1

BPF_ARRAY(active, u32, 1);
BPF_PROG_ARRAY(slots, 2);
BPF_ARRAY(ran, u64, 2);   /* which leaf ran, per slot */

int nf_root(void *ctx)
{
	u32 zero = 0;
	u32 *w = active.lookup(&zero);
	u32 slot = w ? *w : 0;
	slots.call(ctx, slot);
	return NF_ACCEPT;   /* empty slot */
}

static __always_inline void mark_ran(u32 slot)
{
	u64 *n = ran.lookup(&slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

int nf_leaf_drop(void *ctx)
{
	mark_ran(0);
	return NF_DROP;
}

int nf_leaf_accept(void *ctx)
{
	mark_ran(1);
	return NF_ACCEPT;
}
