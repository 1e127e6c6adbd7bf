/* --mode netfilter's REJECT hand-off, the x_tables side (lib/nfreject.h):
 * socket filters that iptables-legacy runs as `-m bpf --object-pinned`
 * (xt_bpf: skb->data at the IP header; non-zero: the rule matches).
 * sf_any (the hook chains' one rule: jump to the REJECT chain) looks a
 * record up; sf_<type> (one rule per REJECT type in that chain) takes the
 * record of its type. bpf_cast_to_kern_ctx (a kfunc, patched in by
 * nfhook.kfunc_calls) gives the kernel's sk_buff address of the context. */
#include <uapi/linux/bpf.h>

#include "lib/nfreject.h"

#define VERDICT_TYPE(v) ((v) & 0xFFu)

BPF_TABLE_PINNED("lru_hash", u64, struct nf_pending, nf_reject_pending, NF_PENDING_MAX,
		 NF_REJECT_PIN_DIR "/pending");

static void *(*kf_cast_to_kern_ctx)(void *ctx) = (void *)KFUNC_CAST_TO_KERN_CTX;

/* the record of this skb when its fingerprint matches (else NULL) */
static __always_inline struct nf_pending *find(struct __sk_buff *ctx, u64 *addr)
{
	*addr = (u64)kf_cast_to_kern_ctx(ctx);
	struct nf_pending *v = nf_reject_pending.lookup(addr);
	if (!v)
		return 0;
	u8 ip[20];
	if (bpf_skb_load_bytes(ctx, 0, ip, 20))
		return 0;
	u32 d;
	__builtin_memcpy(&d, ip + 16, 4);
	if (d != v->daddr || ((u32)ip[4] << 8 | ip[5]) != v->id ||
	    ((u32)ip[2] << 8 | ip[3]) != v->tot_len)
		return 0;
	return v;
}

int sf_any(struct __sk_buff *ctx)
{
	u64 addr;
	return find(ctx, &addr) != 0;
}

/* (bcc rewrites map calls outside macros only: the work is here) */
static __always_inline int take(struct __sk_buff *ctx, u32 type)
{
	u64 addr;
	struct nf_pending *v = find(ctx, &addr);
	if (!v || VERDICT_TYPE(v->verdict) != type)
		return 0;
	nf_reject_pending.delete(&addr);
	return 1;
}

#define TAKE(NAME, TYPE)                         \
	int sf_##NAME(struct __sk_buff *ctx)      \
	{                                         \
		return take(ctx, TYPE);           \
	}
TAKE(type0, 0)
TAKE(type1, 1)
TAKE(type2, 2)
TAKE(type3, 3)
TAKE(type5, 5)
TAKE(type6, 6)
TAKE(type7, 7)
TAKE(type8, 8)
