/* -m limit in the data path: xt_limit's token bucket, one per rule.
 *
 * The kernel (net/netfilter/xt_limit.c, limit_mt()) keeps per rule a
 * private { prev (jiffies), credit (u32) } under a spin lock, and in the
 * rule's xt_rateinfo the constants credit_cap = user2credits(avg * burst)
 * and cost = user2credits(avg). Per packet that reaches the match:
 *     credit += (now - prev) * CREDITS_PER_JIFFY;  prev = now;   (u32 wrap)
 *     credit = min(credit, credit_cap);
 *     if (credit >= cost) { credit -= cost; match } else no match
 * Here the same arithmetic runs on a map value shared by all CPUs, under
 * a bpf_spin_lock (the lock makes it exact under concurrency, as the
 * kernel's spin_lock_bh). The user space writes credit_cap and cost with
 * started = 0 whenever the rule set is (re)loaded; the first packet then
 * finds the bucket full, which is what the kernel's limit_mt_check()
 * (credit = credit_cap at load) gives too, since the refill is capped. */
#ifndef BPF_IPTABLES_LIMIT_H
#define BPF_IPTABLES_LIMIT_H

/* POW2_BELOW32(0xFFFFFFFF / (HZ * 60 * 60 * 24)), 128 for HZ = 250;
 * program.py passes limit.py's, which computed the costs (its HZ must be
 * the kernel's: bpf_jiffies64() counts the kernel's jiffies) */
#ifndef LIMIT_CREDITS_PER_JIFFY
#define LIMIT_CREDITS_PER_JIFFY 128
#endif

struct limit_state {
	struct bpf_spin_lock lock;
	u32 credit;
	u32 credit_cap;
	u32 cost;
	u32 started;	/* 0: the rule set was just written, bucket full */
	u32 pad;
	u64 prev;	/* jiffies of the last packet that reached the match */
};

/* 1 when a token was taken (the match holds), 0 otherwise. ``now`` is read
 * by the caller (no helper call may run under the lock). */
static __always_inline u32 limit_take(struct limit_state *ls, u64 now)
{
	u32 ok = 0;
	bpf_spin_lock(&ls->lock);
	if (!ls->started) {
		ls->started = 1;
		ls->credit = ls->credit_cap;
		ls->prev = now;
	}
	u32 credit = ls->credit + (u32)((now - ls->prev) * LIMIT_CREDITS_PER_JIFFY);
	ls->prev = now;
	if (credit > ls->credit_cap)
		credit = ls->credit_cap;
	if (credit >= ls->cost) {
		credit -= ls->cost;
		ok = 1;
	}
	ls->credit = credit;
	bpf_spin_unlock(&ls->lock);
	return ok;
}

#endif
